"""The start-up sweep of crashed writers' temp files runs in the background and stops on exit."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from lapce_bridge.fs.ops import RealFs
from lapce_bridge.fs.service import FileService
from lapce_bridge.testing import FakeClock
from lapce_bridge.testing.memory import MemoryServer

GATE_BOUND = 10.0  # real seconds a gated call may wait, at most (only a broken test waits)


def present(path: Path) -> bool:
    return os.path.lexists(path)


class GatedFs(RealFs):
    """The real calls, with `scandir` held until the test opens the gate."""

    def __init__(self, fail: BaseException | None = None) -> None:
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.listed: list[str | int] = []
        self.fail = fail

    def scandir(self, path: str | int) -> list[os.DirEntry[str]]:
        self.listed.append(path)
        self.entered.set()
        if not self.gate.wait(GATE_BOUND):
            raise AssertionError("the test never opened the gate")
        if self.fail is not None:
            raise self.fail
        return RealFs.scandir(path)


@pytest.fixture
def dead_pid() -> int:
    proc = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(proc.stdout)


@pytest.fixture
def junk(tmp_path: Path, dead_pid: int) -> Path:
    (tmp_path / "src").mkdir()
    path = tmp_path / "src" / f".lapce-bridge-{dead_pid}-0123456789ab.tmp"
    path.write_text("half a file")
    return path


async def test_entering_does_not_wait_for_the_sweep(tmp_path: Path, junk: Path) -> None:
    ops = GatedFs()
    svc = FileService(workspace=tmp_path, clock=FakeClock(), ops=ops)
    async with svc:
        await asyncio.to_thread(ops.entered.wait, GATE_BOUND)
        assert present(junk)  # in service while the sweep is still walking
        assert svc.statistics().temp_files_swept == 0
        ops.gate.set()
        assert await svc.swept() == 1
        assert not present(junk)
        assert svc.statistics().temp_files_swept == 1


async def test_leaving_stops_the_walk_at_the_next_folder(tmp_path: Path, junk: Path) -> None:
    ops = GatedFs()
    svc = FileService(workspace=tmp_path, clock=FakeClock(), ops=ops)
    await svc.__aenter__()
    await asyncio.to_thread(ops.entered.wait, GATE_BOUND)
    leaving = asyncio.create_task(svc.__aexit__(None, None, None))
    await asyncio.sleep(0)  # the exit has asked the sweep to stop
    assert not leaving.done()  # and waits for the thread
    ops.gate.set()
    await leaving
    assert ops.listed == [svc.workspace.root]  # src/ was never walked
    assert present(junk)


async def test_a_failing_sweep_is_logged_not_raised(
    tmp_path: Path, junk: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ops = GatedFs(fail=RuntimeError("a bug in the walk"))
    ops.gate.set()
    svc = FileService(workspace=tmp_path, clock=FakeClock(), ops=ops)
    with caplog.at_level(logging.ERROR, logger="lapce_bridge.fs.service"):
        async with svc:
            assert await svc.swept() == 0
            client = MemoryServer(svc.methods(), clock=svc.clock).connect()
            assert (await client.request("fs/stat", {"path": "src"}))["kind"] == "directory"
    assert "sweeping temporary files" in caplog.text
    assert present(junk)


async def test_without_a_start_sweep_swept_is_zero(tmp_path: Path, junk: Path) -> None:
    async with FileService(workspace=tmp_path, clock=FakeClock(), sweep_on_start=False) as svc:
        assert await svc.swept() == 0
    assert present(junk)
