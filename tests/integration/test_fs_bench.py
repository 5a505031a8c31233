"""The fs bench suite runs end to end (quick mode) and yields the rows BENCHMARKS.md names."""

from __future__ import annotations

import math
from pathlib import Path

from lapce_bridge.bench import fs
from lapce_bridge.bench.runner import BenchContext


async def test_the_suite_yields_every_row_with_its_targets(tmp_path: Path) -> None:
    rows = {row.name: row for row in await fs.run(BenchContext(workdir=tmp_path, quick=True))}
    targets = {
        "file read, cached (4 KiB)": ((10, 100, 1000), (5, 30)),
        "file read, disk (4 KiB)": ((100, 1000, 10000), (30, 200)),
    }
    for name, (seed, goal) in targets.items():
        row = rows[name]
        assert (row.unit, row.seed, row.goal) == ("us", seed, goal)
        assert row.p50 is not None
        assert row.p99 is not None
        assert 0 < row.p50 <= row.p99
    mixed = rows["file operations, mixed 90% read / 10% atomic write"]
    assert (mixed.unit, mixed.seed, mixed.goal, mixed.higher_is_better) == (
        "ops/s", (1000,), (5000,), True
    )  # fmt: skip
    assert mixed.value is not None
    assert mixed.value > 0
    assert mixed.extra["writes_per_s"] > 0
    assert fs.fs_type(tmp_path) in mixed.note
    recovery = rows["transient file-system error recovery"]
    assert (recovery.unit, recovery.goal, recovery.samples) == ("ms", (1000,), 3)
    # Two faults mean two backoffs (50 and 100 ms, -10 % jitter at most): a figure below
    # that would mean the faults were never met.
    assert recovery.value is not None
    assert recovery.value >= 135
    for name in fs.IPC_CALLS:
        row = rows[name]
        assert row.p50 is not None
        assert math.isfinite(row.p50)
        assert row.samples == 300


def test_fs_type_names_the_mount_holding_a_path(tmp_path: Path) -> None:
    assert fs.fs_type(Path("/proc/self")) == "proc"
    assert fs.fs_type(tmp_path) not in ("", "proc")
