"""FileStore reads: cache, every errno path, stale fallback, staleness, limits (FakeClock)."""

from __future__ import annotations

import asyncio
import errno
import os
import random
from pathlib import Path

import pytest

from lapce_bridge.core.breaker import CircuitBreaker, CircuitState
from lapce_bridge.core.errors import (
    ErrorCategory,
    FileSystemError,
    FileTooLarge,
    InvalidParams,
    PermissionDenied,
    Unavailable,
)
from lapce_bridge.core.incidents import IncidentLog
from lapce_bridge.core.retry import RetryPolicy
from lapce_bridge.fs.cache import FileCache
from lapce_bridge.fs.files import DISK_BREAKER, FileStore
from lapce_bridge.fs.ops import REAL_FS, FsOps
from lapce_bridge.fs.paths import Workspace
from lapce_bridge.testing import FakeClock
from lapce_bridge.testing.faultfs import Fault, FaultyFs

SCHEDULE = [0.05, 0.1, 0.2]  # the policy below: 4 attempts, no jitter


def make_store(
    root: Path,
    clock: FakeClock,
    ops: FsOps = REAL_FS,
    *,
    jitter: float = 0.0,
    **kw: object,
) -> FileStore:
    retry = RetryPolicy(
        max_attempts=4, initial_delay=0.05, max_delay=0.5, jitter=jitter, clock=clock,
        rng=random.Random(7),
    )  # fmt: skip
    kw.setdefault("racy_window_ns", 0)
    return FileStore(Workspace(root), cache=FileCache(), retry=retry, ops=ops, **kw)  # type: ignore[arg-type]


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "a.txt").write_text("alpha")
    (tmp_path / "dir").mkdir()
    return tmp_path


@pytest.fixture
def jumpy() -> FakeClock:
    return FakeClock(autojump=True)


async def test_first_read_from_disk_then_from_cache_with_one_stat(
    root: Path, jumpy: FakeClock
) -> None:
    fs = FaultyFs()
    store = make_store(root, jumpy, fs)
    first = await store.read("a.txt")
    assert (first.data, first.from_cache, first.stale) == (b"alpha", False, False)
    fs.calls.clear()
    second = await store.read("a.txt")
    assert (second.data, second.from_cache) == (b"alpha", True)
    assert [c.op for c in fs.calls] == ["stat"]
    assert second.mtime_ns == os.stat(root / "a.txt").st_mtime_ns
    s = store.statistics()
    assert (s.reads, s.cache_hits, s.disk_reads) == (2, 1, 1)


@pytest.mark.parametrize(
    "err", [errno.EIO, errno.EAGAIN, errno.ETIMEDOUT, errno.ECONNRESET, errno.ECONNABORTED,
            errno.ESTALE, errno.EBUSY],
    ids=errno.errorcode.get,
)  # fmt: skip
async def test_transient_errors_recover_on_the_backoff_schedule(
    root: Path, jumpy: FakeClock, err: int
) -> None:
    fs = FaultyFs(faults=[Fault("open", err, times=2)])
    store = make_store(root, jumpy, fs)
    result = await store.read("a.txt")
    assert result.data == b"alpha"
    assert not result.stale
    assert jumpy.sleeps == SCHEDULE[:2]
    assert fs.count("open") == 3
    assert store.retry.statistics().recovered == 1


@pytest.mark.parametrize("op", ["stat", "open", "fstat", "read"])
async def test_every_call_of_a_read_is_covered_by_the_retry(
    root: Path, jumpy: FakeClock, op: str
) -> None:
    fs = FaultyFs(faults=[Fault(op, errno.EIO, times=1, after=0)])
    store = make_store(root, jumpy, fs)
    assert (await store.read("a.txt")).data == b"alpha"
    assert fs.count(op, "EIO") == 1


async def test_eintr_is_retried_at_once(root: Path, jumpy: FakeClock) -> None:
    fs = FaultyFs(faults=[Fault("read", errno.EINTR, times=3)])
    store = make_store(root, jumpy, fs)
    assert (await store.read("a.txt")).data == b"alpha"
    assert jumpy.sleeps == []
    assert store.retry.statistics().eintr_retries == 3


async def test_a_file_that_ends_early_is_read_again(root: Path, jumpy: FakeClock) -> None:
    fs = FaultyFs(faults=[Fault("read", eof=True, times=1)])
    store = make_store(root, jumpy, fs)
    assert (await store.read("a.txt")).data == b"alpha"
    assert jumpy.sleeps == [0.05]
    assert fs.count("open") == 2


async def test_short_reads_are_continued_not_retried(root: Path, jumpy: FakeClock) -> None:
    payload = os.urandom(50_000)
    (root / "big.bin").write_bytes(payload)
    fs = FaultyFs(faults=[Fault("read", short=True, times=6)])
    store = make_store(root, jumpy, fs)
    assert (await store.read("big.bin")).data == payload
    assert jumpy.sleeps == []
    assert fs.count("open") == 1


async def test_exhausted_retries_serve_the_previous_content_as_stale(
    root: Path, jumpy: FakeClock
) -> None:
    fs = FaultyFs()
    store = make_store(root, jumpy, fs)
    await store.read("a.txt")
    (root / "a.txt").write_text("changed on a disk that now fails")
    fs.add(Fault("open", errno.EIO, times=None))
    result = await store.read("a.txt")
    assert (result.data, result.stale, result.from_cache) == (b"alpha", True, True)
    assert "EIO" in result.stale_reason
    assert "a.txt" in result.stale_reason
    assert jumpy.sleeps == SCHEDULE
    assert fs.count("open", "EIO") == 4
    assert store.statistics().stale_served == 1


async def test_a_stale_answer_is_an_incident_from_the_first_until_the_disk_answers(
    root: Path, jumpy: FakeClock
) -> None:
    fs = FaultyFs()
    log = IncidentLog(clock=jumpy)
    store = make_store(root, jumpy, fs, incidents=log)
    await store.read("a.txt")
    (root / "a.txt").write_text("changed on a disk that now fails")
    fs.add(Fault("open", errno.EIO, times=None))
    started = jumpy.now()
    assert (await store.read("a.txt")).stale
    (incident,) = log.open_incidents()
    assert (incident.kind, incident.subject) == ("cache_fallback", "fs/read a.txt")
    assert "EIO" in incident.detail
    assert incident.started == started + sum(SCHEDULE)  # when the cached copy was served
    assert (await store.read("a.txt")).stale  # the same failure: the same incident
    assert len(log.open_incidents()) == 1
    assert log.total == 1
    fs.clear()
    await jumpy.advance(10.0)
    fresh = await store.read("a.txt")
    assert (fresh.data, fresh.stale) == (b"changed on a disk that now fails", False)
    assert log.open_incidents() == []
    (ended,) = log.recent()
    assert ended.recovered is True
    assert ended.detail == "read from the disk again"
    assert ended.duration == pytest.approx(jumpy.now() - incident.started)
    assert ended.duration is not None
    assert ended.duration > 10.0


async def test_a_cache_fallback_ends_with_a_write_or_a_definite_answer(
    root: Path, jumpy: FakeClock
) -> None:
    (root / "b.txt").write_text("beta")
    fs = FaultyFs()
    log = IncidentLog(clock=jumpy)
    store = make_store(root, jumpy, fs, incidents=log)
    for name in ("a.txt", "b.txt"):
        await store.read(name)
        (root / name).write_text(f"{name} changed")
    fs.add(Fault("open", errno.EIO, times=None, path_glob="*.txt"))
    assert (await store.read("a.txt")).stale
    assert (await store.read("b.txt")).stale
    assert len(log.open_incidents()) == 2
    fs.clear()
    await store.write(store.workspace.resolve("a.txt"), b"rewritten")
    (root / "b.txt").unlink()
    with pytest.raises(FileSystemError):
        await store.read("b.txt")
    assert log.open_incidents() == []
    written, gone = log.recent()
    assert (written.subject, written.recovered, written.detail) == (
        "fs/read a.txt",
        True,
        "written to the disk",
    )
    assert gone.subject == "fs/read b.txt"
    assert gone.recovered is True  # the disk answered: the file is gone, not failing
    assert "ENOENT" in gone.detail


async def test_open_cache_fallbacks_are_bounded(
    root: Path, jumpy: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("lapce_bridge.fs.files.MAX_FALLBACKS", 2)
    fs = FaultyFs()
    log = IncidentLog(clock=jumpy)
    store = make_store(root, jumpy, fs, incidents=log)
    for i in range(3):
        (root / f"f{i}.txt").write_text(str(i))
        await store.read(f"f{i}.txt")
        (root / f"f{i}.txt").write_text(f"{i} changed")
    fs.add(Fault("open", errno.EIO, times=None))
    for i in range(3):
        assert (await store.read(f"f{i}.txt")).stale
    assert [i.subject for i in log.open_incidents()] == ["fs/read f1.txt", "fs/read f2.txt"]
    (dropped,) = log.recent()
    assert (dropped.subject, dropped.recovered) == ("fs/read f0.txt", False)


def state_of(breaker: CircuitBreaker) -> CircuitState:
    return breaker.state  # read afresh: an assert on the property would narrow it for mypy


async def test_a_failing_disk_opens_the_breaker_and_reads_skip_it_until_trials_pass(
    root: Path, jumpy: FakeClock
) -> None:
    (root / "b.txt").write_text("beta")
    fs = FaultyFs()
    breaker = CircuitBreaker("fs.disk", DISK_BREAKER, clock=jumpy)
    store = make_store(root, jumpy, fs, breaker=breaker)
    await store.read("a.txt")  # cached
    (root / "a.txt").write_text("alpha, changed")
    fs.add(Fault("open", errno.EIO, times=None, path_glob="*/b.txt"))
    for _ in range(10):  # a missing file is the caller's: it never counts against the disk
        with pytest.raises(FileSystemError):
            await store.read("missing.txt")
    for _ in range(9):
        with pytest.raises(FileSystemError):
            await store.read("b.txt")
    assert state_of(breaker) is CircuitState.CLOSED  # 9 failures of 19: under half
    with pytest.raises(FileSystemError):
        await store.read("b.txt")
    assert state_of(breaker) is CircuitState.OPEN  # 10 of the last 20
    opens = fs.count("open")
    sleeps = len(jumpy.sleeps)
    # Open: no disk, no retry schedule; the cached copy at once, else -32002 naming it.
    stale = await store.read("a.txt")
    assert (stale.data, stale.stale) == (b"alpha", True)
    assert "fs.disk" in stale.stale_reason
    with pytest.raises(Unavailable) as info:
        await store.read("b.txt")
    assert info.value.code == -32002
    assert info.value.classification.retryable
    assert (fs.count("open"), len(jumpy.sleeps)) == (opens, sleeps)
    # After 5 s two trial reads go to the disk; both succeed: closed again.
    fs.clear()
    await jumpy.advance(DISK_BREAKER.wait_duration_in_open + 0.001)  # (3.5 + 5 - 3.5 < 5)
    assert (await store.read("a.txt")).data == b"alpha, changed"
    assert state_of(breaker) is CircuitState.HALF_OPEN
    assert (await store.read("b.txt")).data == b"beta"
    assert state_of(breaker) is CircuitState.CLOSED


async def test_exhausted_retries_without_a_cached_copy_fail_classified(
    root: Path, jumpy: FakeClock
) -> None:
    fs = FaultyFs(faults=[Fault("open", errno.EIO, times=None)])
    store = make_store(root, jumpy, fs)
    with pytest.raises(FileSystemError) as info:
        await store.read("a.txt")
    exc = info.value
    assert exc.code == -32004
    assert exc.errno == errno.EIO
    assert exc.classification.retryable
    assert exc.classification.category is ErrorCategory.FILESYSTEM
    assert exc.data == {"errno": "EIO", "path": "a.txt"}
    assert isinstance(exc.__cause__, OSError)
    assert jumpy.sleeps == SCHEDULE
    assert store.statistics().read_failures == 1


async def test_missing_file_fails_at_once_and_forgets_the_cached_copy(
    root: Path, jumpy: FakeClock
) -> None:
    store = make_store(root, jumpy)
    await store.read("a.txt")
    (root / "a.txt").unlink()
    with pytest.raises(FileSystemError) as info:
        await store.read("a.txt")
    assert info.value.errno == errno.ENOENT
    assert not info.value.classification.retryable
    assert jumpy.sleeps == []
    assert store.cache.get_any(store.workspace.resolve("a.txt")) is None


async def test_permission_denied_fails_at_once(root: Path, jumpy: FakeClock) -> None:
    fs = FaultyFs(faults=[Fault("open", errno.EACCES, times=None)])
    store = make_store(root, jumpy, fs)
    with pytest.raises(PermissionDenied) as info:
        await store.read("a.txt")
    assert info.value.code == -32006
    assert not info.value.classification.retryable
    assert fs.count("open") == 1
    assert jumpy.sleeps == []


async def test_folder_and_not_a_folder_fail_at_once(root: Path, jumpy: FakeClock) -> None:
    store = make_store(root, jumpy)
    with pytest.raises(FileSystemError) as info:
        await store.read("dir")
    assert info.value.errno == errno.EISDIR
    with pytest.raises(FileSystemError) as info:
        await store.read("a.txt/inside")
    assert info.value.errno == errno.ENOTDIR
    assert jumpy.sleeps == []


async def test_a_fifo_is_refused_without_blocking(root: Path, jumpy: FakeClock) -> None:
    os.mkfifo(root / "pipe")
    store = make_store(root, jumpy)
    with pytest.raises(FileSystemError, match="not a regular file") as info:
        await store.read("pipe")
    assert not info.value.classification.retryable


async def test_escapes_and_bad_paths_are_refused_before_any_io(
    root: Path, jumpy: FakeClock
) -> None:
    fs = FaultyFs()
    store = make_store(root / "dir", jumpy, fs)
    with pytest.raises(PermissionDenied):
        await store.read("../a.txt")
    with pytest.raises(InvalidParams):
        await store.read(None)
    with pytest.raises(InvalidParams):
        await store.read("a\0")
    assert fs.calls == []


async def test_too_large_is_refused_before_reading(root: Path, jumpy: FakeClock) -> None:
    (root / "big").write_bytes(b"x" * 101)
    fs = FaultyFs()
    store = make_store(root, jumpy, fs, max_file_bytes=100)
    with pytest.raises(FileTooLarge) as info:
        await store.read("big")
    assert info.value.data == {"size": 101, "limit": 100}
    assert fs.count("read") == 0
    assert jumpy.sleeps == []


def rewrite_in_place(path: Path, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.write(data)


class GrowingFs(FaultyFs):
    """Appends to the file right after its size was taken, as a writer racing the read would."""

    def fstat(self, fd: int) -> os.stat_result:
        st = super().fstat(fd)
        path = self._fd_path(fd)
        assert path is not None
        with open(path, "ab") as f:
            f.write(b"y" * 200)
        return st


async def test_a_file_growing_past_the_limit_while_read_is_refused(
    root: Path, jumpy: FakeClock
) -> None:
    (root / "log").write_bytes(b"x" * 50)
    store = make_store(root, jumpy, GrowingFs(), max_file_bytes=100)
    with pytest.raises(FileTooLarge):
        await store.read("log")


async def test_a_file_growing_within_the_limit_is_read_whole(root: Path, jumpy: FakeClock) -> None:
    (root / "log").write_bytes(b"x" * 50)
    store = make_store(root, jumpy, GrowingFs())
    result = await store.read("log")
    assert result.data == b"x" * 50 + b"y" * 200
    # The identity recorded is the one before the growth, so the next read goes to disk.
    assert not (await store.read("log")).from_cache


async def test_large_files_are_read_in_a_thread(root: Path, jumpy: FakeClock) -> None:
    payload = os.urandom(5000)
    (root / "large").write_bytes(payload)
    store = make_store(root, jumpy, thread_read_bytes=1000)
    assert (await store.read("large")).data == payload
    assert (await store.read("a.txt")).data == b"alpha"
    assert store.statistics().threaded_reads == 1


async def test_an_atomic_replace_with_the_same_size_and_mtime_is_seen(
    root: Path, jumpy: FakeClock
) -> None:
    store = make_store(root, jumpy)
    assert (await store.read("a.txt")).data == b"alpha"
    st = os.stat(root / "a.txt")
    (root / "b.tmp").write_text("omega")
    os.utime(root / "b.tmp", ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(root / "b.tmp", root / "a.txt")
    result = await store.read("a.txt")
    assert result.mtime_ns == st.st_mtime_ns  # same size, same mtime: the inode differs
    assert (result.data, result.from_cache) == (b"omega", False)


async def test_a_racy_entry_is_reread_so_a_same_tick_rewrite_is_seen(
    root: Path, jumpy: FakeClock
) -> None:
    target = root / "a.txt"
    # "Now" is the instant of the file's last change: every entry is within the racy window.
    store = make_store(
        root, jumpy, racy_window_ns=50_000_000, wall_ns=lambda: os.stat(target).st_ctime_ns
    )
    assert (await store.read("a.txt")).data == b"alpha"
    st = os.stat(target)
    rewrite_in_place(target, b"ALPHA")  # same inode, same size
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    result = await store.read("a.txt")
    assert (result.data, result.from_cache) == (b"ALPHA", False)


async def test_an_entry_older_than_the_racy_window_is_trusted(root: Path, jumpy: FakeClock) -> None:
    target = root / "a.txt"
    store = make_store(
        root,
        jumpy,
        racy_window_ns=50_000_000,
        wall_ns=lambda: os.stat(target).st_ctime_ns + 1_000_000_000,
    )
    await store.read("a.txt")
    assert (await store.read("a.txt")).from_cache


async def test_jittered_delays_stay_within_ten_percent(root: Path, jumpy: FakeClock) -> None:
    fs = FaultyFs(faults=[Fault("open", errno.EIO, times=3)])
    store = make_store(root, jumpy, fs, jitter=0.1)
    await store.read("a.txt")
    assert len(jumpy.sleeps) == 3
    for got, base in zip(jumpy.sleeps, SCHEDULE, strict=True):
        assert base * 0.9 <= got <= base * 1.1


async def test_cancellation_during_a_backoff_is_not_swallowed(root: Path, clock: FakeClock) -> None:
    fs = FaultyFs()
    store = make_store(root, clock, fs)
    await store.read("a.txt")  # cached: a fallback exists, and still must not be used
    (root / "a.txt").write_text("changed")
    fs.add(Fault("open", errno.EIO, times=None))
    task = asyncio.create_task(store.read("a.txt"))
    await clock.wait_for_sleepers(1)
    assert clock.sleeps == [0.05]
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert store.statistics().stale_served == 0


async def test_exact_delays_step_by_step(root: Path, clock: FakeClock) -> None:
    fs = FaultyFs(faults=[Fault("open", errno.EIO, times=2)])
    store = make_store(root, clock, fs)
    task = asyncio.create_task(store.read("a.txt"))
    await clock.wait_for_sleepers(1)
    await clock.advance(0.049)
    assert fs.count("open") == 1  # still waiting out the first delay
    await clock.advance(0.001)
    await clock.wait_for_sleepers(1)
    assert fs.count("open") == 2
    await clock.advance(0.1)
    result = await task
    assert result.data == b"alpha"
    assert clock.now() == pytest.approx(0.15)


async def test_a_symlink_swapped_in_after_a_read_does_not_leak_outside(
    tmp_path: Path, jumpy: FakeClock
) -> None:
    ws, outside = tmp_path / "ws", tmp_path / "outside"
    (ws / "d").mkdir(parents=True)
    (outside / "d").mkdir(parents=True)
    (ws / "a.txt").write_text("inside")
    (ws / "d" / "f.txt").write_text("inside too")
    (outside / "secret").write_text("SECRET")
    (outside / "d" / "f.txt").write_text("SECRET TOO")
    store = make_store(ws, jumpy)
    assert (await store.read("a.txt")).data == b"inside"
    assert (await store.read("d/f.txt")).data == b"inside too"
    # The file, and separately a folder above a file, become symlinks leading out.
    (ws / "a.txt").unlink()
    (ws / "a.txt").symlink_to(outside / "secret")
    (ws / "d").rename(tmp_path / "moved")
    (ws / "d").symlink_to(outside / "d")
    for raw in ("a.txt", "d/f.txt"):
        with pytest.raises(PermissionDenied):
            await store.read(raw)


async def test_a_remembered_path_is_verified_by_what_was_opened(
    root: Path, jumpy: FakeClock
) -> None:
    fs = FaultyFs()
    store = make_store(root, jumpy, fs)
    await store.read("a.txt")
    (root / "a.txt").write_text("alpha, longer")  # a miss: the disk path, through the memo
    result = await store.read("a.txt")
    assert (result.data, result.from_cache) == (b"alpha, longer", False)
    # Inside the workspace a swapped-in link is followed, after resolving it afresh.
    (root / "b.txt").write_text("beta")
    (root / "a.txt").unlink()
    (root / "a.txt").symlink_to(root / "b.txt")
    assert (await store.read("a.txt")).data == b"beta"


async def test_a_re_pointed_symlink_is_followed_at_once(tmp_path: Path, jumpy: FakeClock) -> None:
    for version in ("v1", "v2"):
        (tmp_path / version).mkdir()
        (tmp_path / version / "a.txt").write_text(version)
    (tmp_path / "current").symlink_to(tmp_path / "v1")
    store = make_store(tmp_path, jumpy)
    assert (await store.read("current/a.txt")).data == b"v1"
    assert (await store.read("current/a.txt")).data == b"v1"
    (tmp_path / "next").symlink_to(tmp_path / "v2")
    os.replace(tmp_path / "next", tmp_path / "current")
    assert (await store.read("current/a.txt")).data == b"v2"


async def test_a_path_through_a_symlink_is_resolved_each_time_but_still_cached(
    root: Path, jumpy: FakeClock
) -> None:
    (root / "alias").symlink_to(root / "dir")
    (root / "dir" / "f.txt").write_text("via a link")
    fs = FaultyFs()
    store = make_store(root, jumpy, fs)
    assert not (await store.read("alias/f.txt")).from_cache
    fs.calls.clear()
    again = await store.read("alias/f.txt")
    assert (again.data, again.from_cache) == (b"via a link", True)
    assert [c.op for c in fs.calls] == ["stat"]  # realpath aside, no read
