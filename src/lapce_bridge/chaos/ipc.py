"""Server killed: SIGKILL the server while a client keeps sending; measure delivery.

The client (`BridgeClient.spawn`) queues what it cannot send, its supervisor restarts the
server, and the queue is flushed in order. RTO runs from the kill to the answer of the last
request sent during the outage (BENCHMARKS.md goal: 500 ms). RPO: every request must be
answered; `restart_rto` raises if one is not, which counts as a loss here.
"""

from __future__ import annotations

import statistics

from lapce_bridge.bench.ipc import restart_rto
from lapce_bridge.chaos.scenario import ChaosContext, ChaosResult
from lapce_bridge.core.errors import BridgeError


async def run(ctx: ChaosContext) -> ChaosResult:
    rounds = ctx.n(5, 1)
    queued = 50
    lost = 0
    try:
        times = await restart_rto(ctx.workdir, rounds, queued)
        rto = statistics.median(times) * 1000
    except (BridgeError, TimeoutError):
        rto, lost = float("inf"), 1
    return ChaosResult(
        "IPC server killed and restarted",
        rto,
        lost,
        rounds,
        seed_ms=5_000,
        goal_ms=500,
        ok=lost == 0 and rto < 5_000,
        detail=f"SIGKILL to the server, {queued} requests sent during the outage, all answered",
    )
