"""Opening beneath a folder in one step: openat2 and the descriptor walk, side by side."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from lapce_bridge.core.errors import PermissionDenied
from lapce_bridge.fs.beneath import have_openat2, open_beneath, walk_open
from lapce_bridge.fs.ops import REAL_FS, FsOps, WalkingFs
from lapce_bridge.fs.paths import OpensBeneath, Workspace

Opener = Callable[[int, str, int, int], int]


def _openat2(dir_fd: int, rel: str, flags: int, mode: int = 0o777) -> int:
    # `open_beneath` is `openat2` where the kernel has it (this parameter is skipped where it
    # has not), with its retry: a rename anywhere on a busy machine can make the kernel answer
    # a `..` lookup with EAGAIN, meaning "ask again".
    return open_beneath(dir_fd, rel, flags, mode)


OPENERS = [
    pytest.param(
        _openat2,
        id="openat2",
        marks=pytest.mark.skipif(not have_openat2(), reason="this kernel has no openat2"),
    ),
    pytest.param(walk_open, id="walk"),
]


@pytest.fixture
def tree(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    root = tmp_path / "root"
    (root / "a").mkdir(parents=True)
    (root / "a" / "b.txt").write_text("inside")
    (tmp_path / "secret.txt").write_text("outside")
    fd = os.open(root, os.O_PATH | os.O_DIRECTORY)
    try:
        yield root, fd
    finally:
        os.close(fd)


def read_through(opener: Opener, fd: int, rel: str) -> bytes:
    opened = opener(fd, rel, os.O_RDONLY, 0)
    try:
        return os.read(opened, 100)
    finally:
        os.close(opened)


@pytest.mark.parametrize("opener", OPENERS)
def test_a_plain_path_opens(tree: tuple[Path, int], opener: Opener) -> None:
    _, fd = tree
    assert read_through(opener, fd, "a/b.txt") == b"inside"
    folder = opener(fd, "a", os.O_RDONLY | os.O_DIRECTORY, 0)  # not taken for O_TMPFILE
    os.close(folder)


@pytest.mark.parametrize("opener", OPENERS)
@pytest.mark.parametrize("rel", ["../secret.txt", "a/../../secret.txt", "/etc/hostname"])
def test_dot_dot_and_absolute_paths_cannot_leave(
    tree: tuple[Path, int], opener: Opener, rel: str
) -> None:
    _, fd = tree
    with pytest.raises(OSError) as info:
        read_through(opener, fd, rel)
    assert info.value.errno == errno.EXDEV


@pytest.mark.parametrize("opener", OPENERS)
@pytest.mark.parametrize("where", ["folder", "file"])
def test_a_symlink_out_is_refused_wherever_it_is(
    tree: tuple[Path, int], opener: Opener, where: str
) -> None:
    root, fd = tree
    if where == "folder":
        (root / "out").symlink_to(root.parent)
        rel = "out/secret.txt"
    else:
        (root / "a" / "out.txt").symlink_to(root.parent / "secret.txt")
        rel = "a/out.txt"
    with pytest.raises(OSError) as info:
        read_through(opener, fd, rel)
    assert info.value.errno == errno.EXDEV


def test_a_link_that_stays_inside_is_followed_by_openat2_only(tree: tuple[Path, int]) -> None:
    root, fd = tree
    (root / "alias").symlink_to("a")
    if have_openat2():
        assert read_through(_openat2, fd, "alias/b.txt") == b"inside"
    # The walk is handed paths realpath found link-free: any link it meets was swapped in.
    with pytest.raises(OSError) as info:
        read_through(walk_open, fd, "alias/b.txt")
    assert info.value.errno == errno.EXDEV


@pytest.mark.parametrize("opener", OPENERS)
def test_files_are_created_with_the_mode_asked(tree: tuple[Path, int], opener: Opener) -> None:
    root, fd = tree
    made = opener(fd, "a/new.txt", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
    os.close(made)
    assert (root / "a" / "new.txt").stat().st_mode & 0o777 == 0o640


OPS = [
    pytest.param(
        REAL_FS,
        id="openat2",
        marks=pytest.mark.skipif(not have_openat2(), reason="this kernel has no openat2"),
    ),
    pytest.param(WalkingFs(), id="walk"),
]


@pytest.mark.parametrize("ops", OPS)
def test_workspace_open_resolves_a_swapped_path_afresh(tmp_path: Path, ops: FsOps) -> None:
    root = tmp_path / "ws"
    (root / "a").mkdir(parents=True)
    (root / "elsewhere").mkdir()
    (root / "elsewhere" / "b.txt").write_text("moved")
    (root / "a" / "b.txt").write_text("inside")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "b.txt").write_text("outside")
    workspace = Workspace(root)
    real = workspace.resolve("a/b.txt")
    # Swapped after the check for a link that stays inside: opened through the new path.
    os.rename(root / "a", root / "old")
    (root / "a").symlink_to(root / "elsewhere")
    fd = workspace.open(real, os.O_RDONLY, ops=ops)
    try:
        assert os.read(fd, 100) == b"moved"
    finally:
        os.close(fd)
    # Swapped for a link out: refused, as the check would refuse it now.
    (root / "a").unlink()
    (root / "a").symlink_to(tmp_path / "out")
    with pytest.raises(PermissionDenied, match="outside the workspace"):
        workspace.open(real, os.O_RDONLY, ops=ops)
    workspace.close()


def test_opens_beneath_reads_inside_and_fails_a_path_out_as_an_os_error(tmp_path: Path) -> None:
    root = tmp_path / "ws"
    (root / "a").mkdir(parents=True)
    (root / "a" / "b.txt").write_text("inside")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "b.txt").write_text("outside")
    workspace = Workspace(root)
    ops = OpensBeneath(workspace)
    real = workspace.resolve("a/b.txt")
    fd = ops.open(real, os.O_RDONLY)
    try:
        assert os.read(fd, 100) == b"inside"
        assert ops.fstat(fd).st_size == 6  # every other call is the real one
    finally:
        os.close(fd)
    # What a walk by path meets when a folder it listed was swapped for a link out.
    os.rename(root / "a", root / "old")
    (root / "a").symlink_to(tmp_path / "out")
    with pytest.raises(PermissionError, match="outside the workspace"):
        ops.open(real, os.O_RDONLY)
    workspace.close()
