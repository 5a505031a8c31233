"""Shell killed: SIGKILL the shell of a live terminal, measure the time to a working terminal.

RTO runs from the kill to the first command answered by the recreated shell; that command
checks that the working directory and an exported variable set before the kill were restored
(BENCHMARKS.md goal: 100 ms, cwd and env restored). A command running at the moment of the
kill must be answered (status "interrupted"), never left hanging: RPO counts rounds where the
state was lost or a request went unanswered.
"""

from __future__ import annotations

import asyncio
import os
import signal

from lapce_bridge.bench.terminal import BenchTerminals, recovery_ms
from lapce_bridge.chaos.scenario import ChaosContext, ChaosResult
from lapce_bridge.terminal.recovery import CrashLoopPolicy


async def killed_mid_command(env: BenchTerminals, rounds: int) -> int:
    """Kill the shell while a command runs; count commands that were not answered."""
    unanswered = 0
    policy = CrashLoopPolicy(max_deaths=rounds + 1)
    async with env.start("bash", crash_policy=policy) as term:
        for _ in range(rounds):
            running = asyncio.ensure_future(term.execute("sleep 30", timeout=60))
            await asyncio.sleep(0.2)
            os.kill(term.pid or 0, signal.SIGKILL)
            try:
                result = await asyncio.wait_for(running, 10)
            except Exception:  # a timeout or an error: either way, not answered
                unanswered += 1
                continue
            if result.status not in ("interrupted", "completed"):
                unanswered += 1
    return unanswered


async def run(ctx: ChaosContext) -> ChaosResult:
    env = BenchTerminals(ctx.workdir)
    rounds = ctx.n(20, 3)
    lost = 0
    try:
        rto = await recovery_ms(env, rounds)
    except RuntimeError:  # the recovered terminal lost its cwd or env
        rto, lost = float("inf"), 1
    lost += await killed_mid_command(env, ctx.n(5, 1))
    return ChaosResult(
        "shell process killed",
        rto,
        lost,
        rounds,
        seed_ms=1_000,
        goal_ms=100,
        ok=lost == 0 and rto < 1_000,
        detail="SIGKILL to the shell; RTO = kill to a command answered with cwd and env restored",
    )
