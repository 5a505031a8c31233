"""A bench suite with one row at its goal and one that misses its seed, for the CLI tests."""

from __future__ import annotations

from lapce_bridge.bench.report import Row, figure_row, latency_row
from lapce_bridge.bench.runner import BenchContext

MISS = True  # the test flips it to see --check pass
RAISE = False  # the test sets it to see a broken suite reported as a miss
GOAL_MISSED = False  # the fast op at its seed but past its goal


async def run(ctx: BenchContext) -> list[Row]:
    if RAISE:
        raise TimeoutError("timed out")
    return [
        latency_row(
            "fake",
            "fast op",
            [(8e-6 if GOAL_MISSED else 1e-6)] * 100,
            seed=(10, 50, 100),
            goal=(5, 20),
        ),
        figure_row(
            "fake", "rate", 5.0 if MISS else 500.0, "ops/s", higher_is_better=True, seed=100
        ),
    ]
