"""write_atomic on real files: content, modes, the mtime check, and cleanup on every failure."""

from __future__ import annotations

import errno
import itertools
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lapce_bridge.core.errors import ConflictError, FileSystemError
from lapce_bridge.fs.atomic import (
    MUST_NOT_EXIST,
    STALE_TEMP_AGE_NS,
    UMASK,
    is_stale_temp,
    is_temp_name,
    sweep_temp_files,
    temp_name,
    write_atomic,
)
from lapce_bridge.testing.faultfs import Fault, FaultyFs


def leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if is_temp_name(p.name)]


def test_creates_a_new_file_with_the_umask_mode(tmp_path: Path) -> None:
    target = tmp_path / "new.txt"
    st = write_atomic(str(target), b"hello")
    assert target.read_bytes() == b"hello"
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~UMASK
    assert st.st_size == 5
    assert st.st_ino == target.stat().st_ino
    assert st.st_mtime_ns == target.stat().st_mtime_ns
    assert leftovers(tmp_path) == []


def test_replaces_and_keeps_the_mode(tmp_path: Path) -> None:
    target = tmp_path / "script.sh"
    target.write_text("old")
    target.chmod(0o751)
    write_atomic(str(target), b"new content")
    assert target.read_text() == "new content"
    assert stat.S_IMODE(target.stat().st_mode) == 0o751


def test_a_symlinked_target_path_keeps_the_link(tmp_path: Path) -> None:
    real = tmp_path / "real.txt"
    real.write_text("old")
    (tmp_path / "link.txt").symlink_to(real)
    # The service resolves paths first, so write_atomic is given the real path.
    write_atomic(os.path.realpath(tmp_path / "link.txt"), b"new")
    assert (tmp_path / "link.txt").is_symlink()
    assert (tmp_path / "link.txt").read_text() == "new"


def test_expected_mtime_must_match(tmp_path: Path) -> None:
    target = tmp_path / "f"
    target.write_text("v1")
    seen = target.stat().st_mtime_ns
    write_atomic(str(target), b"v2", expected_mtime_ns=seen)
    with pytest.raises(ConflictError) as info:
        write_atomic(str(target), b"v3 from a stale reader", expected_mtime_ns=seen)
    assert target.read_text() == "v2"
    assert info.value.data["mtimeNs"] == target.stat().st_mtime_ns
    assert info.value.code == -32004
    assert not info.value.classification.retryable
    assert leftovers(tmp_path) == []


def test_expected_mtime_of_a_deleted_file_conflicts(tmp_path: Path) -> None:
    with pytest.raises(ConflictError, match="deleted"):
        write_atomic(str(tmp_path / "gone"), b"x", expected_mtime_ns=123)
    assert not (tmp_path / "gone").exists()


def test_zero_means_create_only(tmp_path: Path) -> None:
    target = tmp_path / "once"
    write_atomic(str(target), b"first", expected_mtime_ns=MUST_NOT_EXIST)
    with pytest.raises(ConflictError, match="already exists"):
        write_atomic(str(target), b"second", expected_mtime_ns=MUST_NOT_EXIST)
    assert target.read_text() == "first"


def test_create_dirs(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "c.txt"
    with pytest.raises(FileNotFoundError):
        write_atomic(str(target), b"x")
    write_atomic(str(target), b"x", create_dirs=True)
    assert target.read_text() == "x"


def test_create_dirs_through_a_file_fails_cleanly(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(NotADirectoryError):
        write_atomic(str(tmp_path / "file" / "sub" / "x"), b"x", create_dirs=True)
    assert (tmp_path / "file").read_text() == "not a folder"


def test_refuses_to_replace_a_folder_or_a_fifo(tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir()
    with pytest.raises(IsADirectoryError):
        write_atomic(str(tmp_path / "dir"), b"x")
    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(FileSystemError, match="not a regular file"):
        write_atomic(str(tmp_path / "pipe"), b"x")
    assert stat.S_ISFIFO((tmp_path / "pipe").stat().st_mode)
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("op", ["open", "write", "fchmod", "fsync", "replace"])
def test_a_failure_before_the_rename_leaves_the_original_and_no_temp(
    tmp_path: Path, op: str
) -> None:
    target = tmp_path / "f"
    target.write_text("original")
    target.chmod(0o640)  # so fchmod is called
    # An injected open failure hits the temp file's creation, not the folder's opening.
    glob = "*/.lapce-bridge-*" if op == "open" else None
    fs = FaultyFs(faults=[Fault(op, errno.EIO, path_glob=glob)])
    with pytest.raises(OSError) as info:
        write_atomic(str(target), b"replacement" * 100, ops=fs)
    assert info.value.errno == errno.EIO
    assert target.read_text() == "original"
    assert leftovers(tmp_path) == []
    assert fs.count(op, "EIO") == 1
    if op != "open":
        assert fs.count("unlink") == 1  # the temp file was removed
    # Every descriptor opened (the folder's, the temp file's) was closed.
    assert fs.count("close") == fs.count("open", "ok") >= 1


def test_short_writes_are_completed(tmp_path: Path) -> None:
    fs = FaultyFs(faults=[Fault("write", short=True, times=3)])
    payload = os.urandom(10_000)
    write_atomic(str(tmp_path / "f"), payload, ops=fs)
    assert (tmp_path / "f").read_bytes() == payload
    assert fs.outcomes("write")[:3] == ["short", "short", "short"]


def test_a_failing_folder_sync_comes_after_the_rename(tmp_path: Path) -> None:
    target = tmp_path / "f"
    target.write_text("old")
    # The first fsync is the file's, the second the folder's.
    fs = FaultyFs(faults=[Fault("fsync", errno.EIO, after=1)])
    with pytest.raises(OSError):
        write_atomic(str(target), b"new", ops=fs)
    assert target.read_text() == "new"
    assert leftovers(tmp_path) == []


def test_durable_false_skips_fsync(tmp_path: Path) -> None:
    fs = FaultyFs()
    write_atomic(str(tmp_path / "f"), b"x", ops=fs, durable=False)
    assert fs.count("fsync") == 0
    fs2 = FaultyFs()
    write_atomic(str(tmp_path / "g"), b"x", ops=fs2)
    assert fs2.count("fsync") == 2


def test_a_mode_less_file_system_is_tolerated(tmp_path: Path) -> None:
    target = tmp_path / "f"
    target.write_text("old")
    target.chmod(0o644)
    fs = FaultyFs(faults=[Fault("fchmod", errno.EPERM)])
    write_atomic(str(target), b"new", ops=fs)
    assert target.read_text() == "new"


def test_temp_names() -> None:
    a, b = temp_name(), temp_name()
    assert a != b
    assert is_temp_name(a)
    assert a.startswith(f".lapce-bridge-{os.getpid()}-")
    assert not is_temp_name("notes.tmp")
    assert not is_temp_name(".lapce-bridge-config")


def dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], check=True,
                          capture_output=True, text=True)  # fmt: skip
    return int(proc.stdout)


def test_stale_temp_rules() -> None:
    now = time.time_ns()
    mine = f".lapce-bridge-{os.getpid()}-{'a' * 12}.tmp"
    gone = f".lapce-bridge-{dead_pid()}-{'b' * 12}.tmp"
    assert not is_stale_temp(mine, now, now)  # a write of ours may be in progress
    assert is_stale_temp(gone, now, now)
    assert is_stale_temp(mine, now - STALE_TEMP_AGE_NS - 1, now)
    assert not is_stale_temp(".lapce-bridge-abc.tmp", 0, now)  # not one of our names


def test_sweep_removes_only_stale_temps(tmp_path: Path) -> None:
    dead = dead_pid()
    (tmp_path / "sub" / "deeper").mkdir(parents=True)
    (tmp_path / "node_modules").mkdir()
    stale = [
        tmp_path / f".lapce-bridge-{dead}-{'1' * 12}.tmp",
        tmp_path / "sub" / "deeper" / f".lapce-bridge-{dead}-{'2' * 12}.tmp",
    ]
    live = tmp_path / f".lapce-bridge-{os.getpid()}-{'3' * 12}.tmp"
    skipped = tmp_path / "node_modules" / f".lapce-bridge-{dead}-{'4' * 12}.tmp"
    keep = [tmp_path / "sub" / "real.txt", tmp_path / ".lapce-bridge-notes.tmp"]
    for p in [*stale, live, skipped, *keep]:
        p.write_text("x")
    (tmp_path / "outlink").symlink_to("/")  # a symlink is not followed
    removed = sweep_temp_files(str(tmp_path), skip_dirs=frozenset({"node_modules"}))
    assert removed == 2
    assert not any(p.exists() for p in stale)
    assert live.exists()
    assert skipped.exists()
    assert all(p.exists() for p in keep)


def test_every_version_gets_a_later_mtime_even_within_one_tick(tmp_path: Path) -> None:
    target = tmp_path / "f"
    target.write_text("v0")
    seen = [target.stat().st_mtime_ns]
    for i in range(1, 30):
        # Each writer names the version it read: no write may be lost to a shared mtime.
        seen.append(
            write_atomic(str(target), f"v{i}".encode(), expected_mtime_ns=seen[-1]).st_mtime_ns
        )
    assert all(a < b for a, b in itertools.pairwise(seen))
    assert target.read_text() == "v29"
    with pytest.raises(ConflictError):
        write_atomic(str(target), b"late", expected_mtime_ns=seen[-2])
