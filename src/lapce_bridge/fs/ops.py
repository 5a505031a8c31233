"""The operating-system calls the file service makes, behind one small object.

Theory of operation: every call the service makes on the file system goes through an `FsOps`
(the `os` functions it needs, under the same names and signatures), so a test can swap in
`lapce_bridge.testing.faultfs.FaultyFs` and make any call fail with a chosen errno, return
short, or be interrupted, on a healthy disk. `RealFs` binds the `os` builtins themselves as
attributes (not wrapper methods), so going through the object costs one attribute lookup and
nothing else on the cached-read path.

Calls that take `dir_fd` resolve their path relative to that folder descriptor (as the `os`
functions do), and `open_beneath` resolves and opens beneath one in a single step
(`fs.beneath`): together they let a write or a listing stay inside the folder it opened
even while a local process swaps symlinks along the path.
"""

from __future__ import annotations

import os
from typing import Protocol

from lapce_bridge.fs.beneath import open_beneath, walk_open


class FsOps(Protocol):
    """The `os` calls the file service uses; each behaves (and fails) as `os.<name>` does."""

    def stat(
        self, path: str, *, dir_fd: int | None = None, follow_symlinks: bool = True
    ) -> os.stat_result: ...
    def lstat(self, path: str) -> os.stat_result: ...
    def open(
        self, path: str, flags: int, mode: int = 0o777, *, dir_fd: int | None = None
    ) -> int: ...
    def open_beneath(self, dir_fd: int, rel: str, flags: int, mode: int = 0o777) -> int: ...
    def fstat(self, fd: int) -> os.stat_result: ...
    def read(self, fd: int, n: int) -> bytes: ...
    def write(self, fd: int, data: bytes | memoryview) -> int: ...
    def fsync(self, fd: int) -> None: ...
    def fchmod(self, fd: int, mode: int) -> None: ...
    def fchown(self, fd: int, uid: int, gid: int) -> None: ...
    def utime(self, fd: int, *, ns: tuple[int, int]) -> None: ...
    def close(self, fd: int) -> None: ...
    def replace(self, src: str, dst: str, *, dir_fd: int | None = None) -> None: ...
    def unlink(self, path: str, *, dir_fd: int | None = None) -> None: ...
    def mkdir(self, path: str, mode: int = 0o777, *, dir_fd: int | None = None) -> None: ...
    def scandir(self, path: str | int) -> list[os.DirEntry[str]]: ...


def _scandir(path: str | int) -> list[os.DirEntry[str]]:
    # os.scandir of a descriptor reads a dup of it and rewinds it after: reusable.
    with os.scandir(path) as it:
        return list(it)


def _replace(src: str, dst: str, *, dir_fd: int | None = None) -> None:
    os.replace(src, dst, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)


class RealFs:
    """The real calls: the `os` functions bound as attributes."""

    stat = staticmethod(os.stat)
    lstat = staticmethod(os.lstat)
    open = staticmethod(os.open)
    fstat = staticmethod(os.fstat)
    read = staticmethod(os.read)
    write = staticmethod(os.write)
    fsync = staticmethod(os.fsync)
    fchmod = staticmethod(os.fchmod)
    fchown = staticmethod(os.fchown)
    utime = staticmethod(os.utime)
    close = staticmethod(os.close)
    replace = staticmethod(_replace)
    unlink = staticmethod(os.unlink)
    mkdir = staticmethod(os.mkdir)
    scandir = staticmethod(_scandir)
    open_beneath = staticmethod(open_beneath)  # openat2 where the kernel has it


class WalkingFs(RealFs):
    """The real calls, confining by the descriptor walk even where `openat2` exists (the
    way older kernels go; the tests drive both)."""

    open_beneath = staticmethod(walk_open)


REAL_FS: FsOps = RealFs()

__all__ = ["REAL_FS", "FsOps", "RealFs", "WalkingFs"]
