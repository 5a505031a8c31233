"""100 terminals under CPU load: each created and running one command through a real server.

Two busy-looping processes (one per core here, bounded in time and killed at the end) load
the machine; 100 terminals are created at once (25 from each of four clients: terminals are
owned per connection, within a per-connection quota), each runs `echo job-N` and is checked
for its output and exit code (specification 10.2: at least 95 % succeed; our goal: all). RTO
here is the time until the last terminal answered. With `break_recovery` the server is stopped
(SIGSTOP) for the run's first seconds, with a short deadline, so the failures are counted.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time

from lapce_bridge.bench.report import figure_row
from lapce_bridge.chaos.clients import stopped
from lapce_bridge.chaos.harness import ServerUnderTest, Tally
from lapce_bridge.chaos.scenario import ChaosContext, ChaosResult
from lapce_bridge.chaos.terminal import execute
from lapce_bridge.core.errors import BridgeError
from lapce_bridge.ipc.client import BridgeClient

PER_CLIENT = 25
_BURN = "import time\nend = time.monotonic() + float(__import__('sys').argv[1])\n" + (
    "while time.monotonic() < end: pass\n"
)


async def _one(client: BridgeClient, i: int, ws: str, within: float) -> bool:
    try:
        created = await client.request(
            "terminal/create", {"shell": "bash", "cwd": ws}, timeout=within
        )
        tid = str(created["terminalId"])
        answer = await execute(client, tid, f"echo job-{i}", timeout_s=within)
        await client.request("terminal/close", {"terminalId": tid}, timeout=within)
    except (BridgeError, TimeoutError):
        return False
    return bool(answer.get("output") == f"job-{i}\n" and answer.get("exitCode") == 0)


async def run(ctx: ChaosContext) -> ChaosResult:
    count = ctx.n(100, 10)
    within = 5.0 if ctx.break_recovery else 120.0
    tally = Tally()
    burners = [  # started and left running: Popen does not wait for them
        subprocess.Popen([sys.executable, "-c", _BURN, str(within + 30)])  # noqa: ASYNC220
        for _ in range(os.cpu_count() or 2)
    ]
    try:
        sut = ServerUnderTest(ctx.workdir, "terminals")
        async with sut as client:
            # Terminals are owned per connection, with a per-connection quota (32 by
            # default): the terminals come from several clients, as from several agents.
            clients = [client] + [
                await sut.connect_another() for _ in range((count - 1) // PER_CLIENT)
            ]
            started = time.monotonic()
            try:
                with stopped(sut.pid, ctx.break_recovery):
                    results = await asyncio.gather(
                        *(
                            _one(clients[i // PER_CLIENT], i, str(sut.workspace), within)
                            for i in range(count)
                        )
                    )
                elapsed = (time.monotonic() - started) * 1000
            finally:
                for other in clients[1:]:
                    await other.close(stop_server=False)
            for ok in results:
                tally.check(ok, "terminal failed its command")
    finally:
        for proc in burners:
            proc.kill()
            proc.wait()
    success = 100.0 * (count - tally.lost) / count
    return tally.result(
        f"{count} terminals under CPU load",
        elapsed,
        1,
        seed_ms=120_000,
        goal_ms=30_000,
        ok=success >= 95,
        detail=f"{len(burners)} busy loops; {PER_CLIENT} terminals a client: create, `echo`, "
        f"close each; RTO = until the last answer.",
        more=[
            figure_row(
                "chaos",
                f"{count} terminals under CPU load: succeeded",
                success,
                "%",
                higher_is_better=True,
                seed=95,
                goal=100,
                samples=count,
            )
        ],
    )
