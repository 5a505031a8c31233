"""FileStore writes: atomic, retried, serialised per path, no lost update, cache kept right."""

from __future__ import annotations

import asyncio
import errno
import os
import random
from pathlib import Path

import pytest

from lapce_bridge.core.errors import ConflictError, FileSystemError, FileTooLarge
from lapce_bridge.core.retry import RetryPolicy
from lapce_bridge.fs.atomic import is_temp_name
from lapce_bridge.fs.cache import FileCache
from lapce_bridge.fs.files import FileStore
from lapce_bridge.fs.ops import REAL_FS, FsOps
from lapce_bridge.fs.paths import Workspace
from lapce_bridge.testing import FakeClock
from lapce_bridge.testing.faultfs import Fault, FaultyFs


def make_store(
    root: Path,
    clock: FakeClock,
    ops: FsOps = REAL_FS,
    *,
    durable: bool = True,
    max_file_bytes: int = 1 << 20,
) -> FileStore:
    retry = RetryPolicy(max_attempts=4, initial_delay=0.05, max_delay=0.5, jitter=0.0,
                        clock=clock, rng=random.Random(1))  # fmt: skip
    return FileStore(
        Workspace(root),
        cache=FileCache(),
        retry=retry,
        ops=ops,
        racy_window_ns=0,
        durable=durable,
        max_file_bytes=max_file_bytes,
    )


def temps(folder: Path) -> list[str]:
    return [name for name in os.listdir(folder) if is_temp_name(name)]


@pytest.fixture
def jumpy() -> FakeClock:
    return FakeClock(autojump=True)


async def test_write_then_read_is_served_from_the_cache(tmp_path: Path, jumpy: FakeClock) -> None:
    store = make_store(tmp_path, jumpy)
    real = store.workspace.resolve("notes.txt")
    st = await store.write(real, b"hello")
    assert st.st_size == 5
    assert (tmp_path / "notes.txt").read_bytes() == b"hello"
    result = await store.read("notes.txt")
    assert (result.data, result.from_cache, result.mtime_ns) == (b"hello", True, st.st_mtime_ns)


async def test_lost_update_is_refused(tmp_path: Path, jumpy: FakeClock) -> None:
    (tmp_path / "f").write_text("v1")
    store = make_store(tmp_path, jumpy)
    seen = (await store.read("f")).mtime_ns
    real = store.workspace.resolve("f")
    # Another editor saves first ...
    await store.write(real, b"v2 by someone else", expected_mtime_ns=seen)
    # ... so this writer, who read v1, must not overwrite it.
    with pytest.raises(ConflictError) as info:
        await store.write(real, b"v2 by me", expected_mtime_ns=seen)
    assert (tmp_path / "f").read_text() == "v2 by someone else"
    assert info.value.code == -32004
    assert store.statistics().write_conflicts == 1
    assert jumpy.sleeps == []  # a conflict is not retried


async def test_concurrent_writers_of_one_version_one_wins(tmp_path: Path, jumpy: FakeClock) -> None:
    (tmp_path / "f").write_text("base")
    store = make_store(tmp_path, jumpy)
    seen = (await store.read("f")).mtime_ns
    real = store.workspace.resolve("f")
    outcomes = await asyncio.gather(
        *(store.write(real, f"writer {i}".encode(), expected_mtime_ns=seen) for i in range(5)),
        return_exceptions=True,
    )
    winners = [o for o in outcomes if isinstance(o, os.stat_result)]
    losers = [o for o in outcomes if isinstance(o, ConflictError)]
    assert (len(winners), len(losers)) == (1, 4)
    assert (tmp_path / "f").read_text() == "writer 0"
    assert store._writers == {}  # per-path locks are released


@pytest.mark.parametrize("op", ["open", "write", "fsync", "replace"])
async def test_transient_failures_before_the_rename_are_retried(
    tmp_path: Path, jumpy: FakeClock, op: str
) -> None:
    (tmp_path / "f").write_text("old")
    # Only the calls on the temp file (and the rename onto the target), not the folder's.
    glob = "*/f" if op == "replace" else "*.tmp"
    fs = FaultyFs(faults=[Fault(op, errno.EIO, times=2, path_glob=glob)])
    store = make_store(tmp_path, jumpy, fs)
    await store.write(store.workspace.resolve("f"), b"new")
    assert (tmp_path / "f").read_text() == "new"
    assert jumpy.sleeps == [0.05, 0.1]
    assert temps(tmp_path) == []
    assert fs.count(op, "EIO") == 2


async def test_exhausted_write_leaves_the_original_and_no_temp(
    tmp_path: Path, jumpy: FakeClock
) -> None:
    (tmp_path / "f").write_text("original")
    fs = FaultyFs(faults=[Fault("fsync", errno.EIO, times=None)])
    store = make_store(tmp_path, jumpy, fs)
    with pytest.raises(FileSystemError) as info:
        await store.write(store.workspace.resolve("f"), b"replacement")
    assert info.value.errno == errno.EIO
    assert info.value.classification.retryable
    assert (tmp_path / "f").read_text() == "original"
    assert temps(tmp_path) == []
    assert store.statistics().write_failures == 1


async def test_a_failing_folder_sync_is_retried_alone(tmp_path: Path, jumpy: FakeClock) -> None:
    (tmp_path / "f").write_text("old")
    # fsync calls: the temp file's, then the folder's (which fails once).
    fs = FaultyFs(faults=[Fault("fsync", errno.EIO, times=1, after=1)])
    store = make_store(tmp_path, jumpy, fs)
    seen = os.stat(tmp_path / "f").st_mtime_ns
    await store.write(store.workspace.resolve("f"), b"new", expected_mtime_ns=seen)
    assert (tmp_path / "f").read_text() == "new"
    assert fs.count("replace") == 1  # the write itself was not redone
    assert fs.outcomes("fsync") == ["ok", "EIO", "ok"]


async def test_a_folder_sync_that_never_works_says_the_content_is_in_place(
    tmp_path: Path, jumpy: FakeClock
) -> None:
    fs = FaultyFs(faults=[Fault("fsync", errno.EIO, times=None, after=1)])
    store = make_store(tmp_path, jumpy, fs)
    with pytest.raises(FileSystemError) as info:
        await store.write(store.workspace.resolve("f"), b"new")
    assert "in place" in "".join(info.value.__notes__)
    assert (tmp_path / "f").read_text() == "new"


async def test_not_durable_skips_every_fsync(tmp_path: Path, jumpy: FakeClock) -> None:
    fs = FaultyFs()
    store = make_store(tmp_path, jumpy, fs, durable=False)
    await store.write(store.workspace.resolve("f"), b"x")
    assert fs.count("fsync") == 0


async def test_too_large_writes_are_refused(tmp_path: Path, jumpy: FakeClock) -> None:
    store = make_store(tmp_path, jumpy, max_file_bytes=10)
    with pytest.raises(FileTooLarge):
        await store.write(store.workspace.resolve("f"), b"x" * 11)
    assert not (tmp_path / "f").exists()


async def test_writing_over_a_folder_fails_at_once(tmp_path: Path, jumpy: FakeClock) -> None:
    (tmp_path / "d").mkdir()
    store = make_store(tmp_path, jumpy)
    with pytest.raises(FileSystemError) as info:
        await store.write(store.workspace.resolve("d"), b"x")
    assert info.value.errno == errno.EISDIR
    assert jumpy.sleeps == []


async def test_create_dirs_and_missing_folder(tmp_path: Path, jumpy: FakeClock) -> None:
    store = make_store(tmp_path, jumpy)
    real = store.workspace.resolve("a/b/c.txt")
    with pytest.raises(FileSystemError) as info:
        await store.write(real, b"x")
    assert info.value.errno == errno.ENOENT
    await store.write(real, b"x", create_dirs=True)
    assert (tmp_path / "a" / "b" / "c.txt").read_bytes() == b"x"


async def test_a_write_by_someone_else_after_ours_is_not_hidden_by_the_cache(
    tmp_path: Path, jumpy: FakeClock
) -> None:
    store = make_store(tmp_path, jumpy)
    await store.write(store.workspace.resolve("f"), b"ours")
    (tmp_path / "g").write_text("theirs")
    os.replace(tmp_path / "g", tmp_path / "f")
    result = await store.read("f")
    assert (result.data, result.from_cache) == (b"theirs", False)
