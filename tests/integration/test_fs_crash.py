"""Atomic writes under SIGKILL: a real writer process killed at random points, many times.

After every kill the target must hold exactly one complete version (never a mix, never
empty), the temp file the writer may have left must be invisible to `fs/list`, and the
sweep a service runs on start must remove it.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lapce_bridge.core.retry import RetryPolicy
from lapce_bridge.fs.atomic import is_temp_name, sweep_temp_files, write_atomic
from lapce_bridge.fs.cache import FileCache
from lapce_bridge.fs.files import FileStore
from lapce_bridge.fs.paths import Workspace
from lapce_bridge.testing import FakeClock

SIZE = 1 << 20  # large enough that a kill often lands inside a write
ROUNDS = 25

WRITER = """
import sys
from lapce_bridge.fs.atomic import write_atomic

target, start, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
print("ready", flush=True)
i = start
while True:
    write_atomic(target, f"{i:08d}\\n".encode() + bytes([i % 251]) * size)
    print(i, flush=True)
    i += 1
"""


def version(i: int) -> bytes:
    return f"{i:08d}\n".encode() + bytes([i % 251]) * SIZE


def which_version(data: bytes) -> int:
    """The version `data` is, or fail: it must be one complete version, byte for byte."""
    assert len(data) == SIZE + 9, f"torn file: {len(data)} bytes"
    i = int(data[:8])
    assert data == version(i), f"version {i} is corrupt"
    return i


@pytest.mark.slow
def test_sigkill_at_random_points_never_tears_the_file(tmp_path: Path) -> None:
    rng = random.Random(633)
    target = tmp_path / "data.bin"
    write_atomic(str(target), version(0))
    store = FileStore(Workspace(tmp_path), cache=FileCache(), retry=RetryPolicy(clock=FakeClock()))
    seen: list[int] = []
    leftovers = 0
    next_version = 1
    for _ in range(ROUNDS):
        with subprocess.Popen(
            [sys.executable, "-c", WRITER, str(target), str(next_version), str(SIZE)],
            stdout=subprocess.PIPE,
            text=True,
        ) as proc:
            try:
                assert proc.stdout is not None
                assert proc.stdout.readline().strip() == "ready"
                # The kill lands somewhere in the write loop: open, write, fsync, rename, ...
                time.sleep(rng.uniform(0.0, 0.05))
            finally:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
        assert proc.returncode == -signal.SIGKILL
        current = which_version(target.read_bytes())
        if seen:
            assert current >= seen[-1]  # versions only move forward
        seen.append(current)
        next_version = max(next_version, current + 1) + 1
        temps = [n for n in os.listdir(tmp_path) if is_temp_name(n)]
        leftovers += len(temps)
        assert [e["name"] for e in store.list(".")] == ["data.bin"]
        assert sweep_temp_files(str(tmp_path)) == len(temps)
        assert [n for n in os.listdir(tmp_path) if is_temp_name(n)] == []
    # The kills must have landed both between and inside writes for the test to mean much.
    assert len(set(seen)) > 3, seen
    assert leftovers > 0, "no kill landed inside a write; raise SIZE or ROUNDS"
