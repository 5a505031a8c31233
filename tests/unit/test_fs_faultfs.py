"""The shipped fault injectors themselves: FaultyFs and FaultyWatchBackend."""

from __future__ import annotations

import asyncio
import errno
import os
import threading
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from lapce_bridge.fs.watch import RawChanges
from lapce_bridge.testing.faultfs import Fault, FaultyFs, FaultyWatchBackend


@pytest.fixture
def file(tmp_path: Path) -> str:
    p = tmp_path / "f.bin"
    p.write_bytes(bytes(range(256)) * 4)
    return str(p)


def test_passes_calls_through_and_records_them(file: str) -> None:
    fs = FaultyFs()
    assert fs.stat(file).st_size == 1024
    fd = fs.open(file, os.O_RDONLY)
    try:
        assert fs.read(fd, 2000) == bytes(range(256)) * 4
        assert fs.fstat(fd).st_size == 1024
    finally:
        fs.close(fd)
    assert [(c.op, c.path, c.outcome) for c in fs.calls] == [
        ("stat", file, "ok"),
        ("open", file, "ok"),
        ("read", file, "ok"),
        ("fstat", file, "ok"),
        ("close", file, "ok"),
    ]


def test_raises_the_chosen_errno_the_chosen_number_of_times(file: str) -> None:
    fs = FaultyFs(faults=[Fault("stat", errno.EIO, times=2)])
    for _ in range(2):
        with pytest.raises(OSError) as info:
            fs.stat(file)
        assert info.value.errno == errno.EIO
        assert info.value.filename == file
    assert fs.stat(file).st_size == 1024
    assert fs.outcomes("stat") == ["EIO", "EIO", "ok"]
    assert fs.faults[0].exhausted


def test_eintr_comes_out_as_interrupted_error(file: str) -> None:
    fs = FaultyFs(faults=[Fault("open", errno.EINTR)])
    with pytest.raises(InterruptedError):
        fs.open(file, os.O_RDONLY)


def test_errno_classes_match_the_os(file: str) -> None:
    fs = FaultyFs(faults=[Fault("stat", errno.ENOENT), Fault("lstat", errno.EACCES)])
    with pytest.raises(FileNotFoundError):
        fs.stat(file)
    with pytest.raises(PermissionError):
        fs.lstat(file)


def test_after_lets_calls_through_first_and_times_none_is_forever(file: str) -> None:
    fs = FaultyFs(faults=[Fault("stat", errno.EAGAIN, times=None, after=2)])
    fs.stat(file)
    fs.stat(file)
    for _ in range(5):
        with pytest.raises(BlockingIOError):
            fs.stat(file)
    assert fs.count("stat", "EAGAIN") == 5
    assert fs.count("stat", "ok") == 2


def test_path_glob_selects_paths_and_descriptor_calls_use_the_opened_path(
    tmp_path: Path, file: str
) -> None:
    other = tmp_path / "other.txt"
    other.write_text("fine")
    fs = FaultyFs(faults=[Fault("read", errno.EIO, path_glob="*.bin")])
    fd = fs.open(str(other), os.O_RDONLY)
    try:
        assert fs.read(fd, 10) == b"fine"
    finally:
        fs.close(fd)
    fd = fs.open(file, os.O_RDONLY)
    try:
        with pytest.raises(OSError):
            fs.read(fd, 10)
    finally:
        fs.close(fd)


def test_short_read_moves_half_for_real_and_eof_reports_the_end(file: str) -> None:
    fs = FaultyFs(faults=[Fault("read", short=True), Fault("read", eof=True)])
    fd = fs.open(file, os.O_RDONLY)
    try:
        first = fs.read(fd, 1024)
        assert first == (bytes(range(256)) * 4)[:512]
        assert fs.read(fd, 1024) == b""  # the injected end of file
        assert fs.read(fd, 1024) == (bytes(range(256)) * 4)[512:]  # the offset was real
    finally:
        fs.close(fd)
    assert fs.outcomes("read") == ["short", "eof", "ok"]


def test_short_write(tmp_path: Path) -> None:
    fs = FaultyFs(faults=[Fault("write", short=True)])
    path = str(tmp_path / "w")
    fd = fs.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        assert fs.write(fd, b"abcdef") == 3
        assert fs.write(fd, b"def") == 3
    finally:
        fs.close(fd)
    assert Path(path).read_bytes() == b"abcdef"


def test_a_failing_close_still_closes(file: str) -> None:
    fs = FaultyFs(faults=[Fault("close", errno.EIO)])
    fd = fs.open(file, os.O_RDONLY)
    with pytest.raises(OSError):
        fs.close(fd)
    with pytest.raises(OSError) as info:
        os.fstat(fd)
    assert info.value.errno == errno.EBADF


def test_write_side_calls(tmp_path: Path) -> None:
    fs = FaultyFs(faults=[Fault("replace", errno.EXDEV), Fault("mkdir", errno.EROFS)])
    src = tmp_path / "a"
    src.write_text("x")
    with pytest.raises(OSError) as info:
        fs.replace(str(src), str(tmp_path / "b"))
    assert info.value.errno == errno.EXDEV
    with pytest.raises(OSError):
        fs.mkdir(str(tmp_path / "d"))
    fs.mkdir(str(tmp_path / "d"))
    fs.replace(str(src), str(tmp_path / "b"))
    fd = fs.open(str(tmp_path / "b"), os.O_RDWR)
    try:
        fs.fchmod(fd, 0o640)
        fs.fchown(fd, os.geteuid(), os.getegid())
        fs.fsync(fd)
    finally:
        fs.close(fd)
    assert sorted(e.name for e in fs.scandir(str(tmp_path))) == ["b", "d"]
    assert (tmp_path / "b").stat().st_mode & 0o777 == 0o640
    fs.unlink(str(tmp_path / "b"))
    assert not (tmp_path / "b").exists()


def test_fault_validation() -> None:
    with pytest.raises(ValueError, match="unknown operation"):
        Fault("frobnicate")
    with pytest.raises(ValueError):
        Fault("stat", short=True)
    with pytest.raises(ValueError):
        Fault("write", eof=True)


def test_added_faults_and_clear(file: str) -> None:
    fs = FaultyFs()
    fs.add(Fault("stat", errno.EIO, times=None))
    with pytest.raises(OSError):
        fs.stat(file)
    fs.clear()
    assert fs.stat(file).st_size == 1024


def test_thread_safe_counting(file: str) -> None:
    fs = FaultyFs(faults=[Fault("stat", errno.EIO, times=50)])
    failures: list[int] = []

    def worker() -> None:
        for _ in range(100):
            try:
                fs.stat(file)
            except OSError:
                failures.append(1)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(failures) == 50
    assert len(fs.calls) == 400


# -- FaultyWatchBackend ----------------------------------------------------------------------
class ScriptedBackend:
    """A backend that yields one batch per `feed` until stopped (no file system involved)."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[RawChanges] = asyncio.Queue()
        self.started = asyncio.Event()

    def __call__(
        self, roots: Sequence[str], recursive: bool, stop: asyncio.Event, polling: bool
    ) -> AsyncIterator[RawChanges]:
        return self._run(stop)

    async def _run(self, stop: asyncio.Event) -> AsyncIterator[RawChanges]:
        self.started.set()
        # FaultyWatchBackend hands over an event that only polls (as the Rust core does).
        while not stop.is_set():
            try:
                yield self.queue.get_nowait()
            except asyncio.QueueEmpty:
                await asyncio.sleep(0.001)


async def test_watch_backend_fails_starts_with_enospc() -> None:
    backend = FaultyWatchBackend(ScriptedBackend(), fail_starts=1)
    with pytest.raises(OSError) as info:
        async for _ in backend(["/x"], True, asyncio.Event(), False):
            pass
    assert info.value.errno == errno.ENOSPC
    assert backend.starts == [False]


async def test_watch_backend_kill_raises_and_stop_ends_quietly() -> None:
    scripted = ScriptedBackend()
    backend = FaultyWatchBackend(scripted)
    got: list[RawChanges] = []
    first = asyncio.Event()

    async def consume(stop: asyncio.Event) -> None:
        async for batch in backend(["/x"], True, stop, True):
            got.append(batch)
            first.set()

    scripted.queue.put_nowait([(1, "/x/a")])
    task = asyncio.create_task(consume(asyncio.Event()))
    await first.wait()
    assert got == [[(1, "/x/a")]]
    assert backend.running == 1
    assert backend.kill() == 1
    with pytest.raises(OSError, match="killed"):
        await task
    assert backend.running == 0
    assert backend.kills == 1

    stop = asyncio.Event()
    scripted.started.clear()
    task = asyncio.create_task(consume(stop))
    await scripted.started.wait()
    stop.set()
    await task  # a requested stop ends without an error
    assert backend.starts == [True, True]


async def test_watch_backend_kill_can_end_without_raising() -> None:
    scripted = ScriptedBackend()
    backend = FaultyWatchBackend(scripted, raise_on_kill=False)
    task = asyncio.create_task(_drain(backend))
    await scripted.started.wait()
    backend.kill()
    await task
    assert backend.kills == 1


async def _drain(backend: FaultyWatchBackend) -> None:
    async for _ in backend(["/x"], True, asyncio.Event(), False):
        pass
