"""Transient file-system errors: reads meet EIO (injected: a healthy disk cannot be made to
fail on demand) and must succeed within the retry schedule (BENCHMARKS.md goal: under 1 s),
not fall back to stale content and not fail.
"""

from __future__ import annotations

from lapce_bridge.bench.fs import transient_recovery
from lapce_bridge.bench.runner import BenchContext
from lapce_bridge.chaos.scenario import ChaosContext, ChaosResult


async def run(ctx: ChaosContext) -> ChaosResult:
    bench = BenchContext(ctx.workdir, quick=ctx.quick)
    lost = 0
    try:
        row = await transient_recovery(bench)
        rto = row.value if row.value is not None else float("inf")
        rounds = row.samples
    except AssertionError:  # a read fell back to stale content instead of recovering
        rto, lost, rounds = float("inf"), 1, 1
    return ChaosResult(
        "transient file-system error",
        rto,
        lost,
        rounds,
        seed_ms=10_000,
        goal_ms=1_000,
        ok=lost == 0 and rto < 1_000,
        detail="two EIO errors on open, default retry schedule, real clock",
    )
