"""Workspace confinement: every client path resolves to a real path inside the workspace root.

Theory of operation: a path from a client is a `str`, relative to the workspace root or
absolute. It is joined to the root and resolved with `os.path.realpath` semantics: every
symlink along the existing prefix is followed, `..` is applied after the symlink it follows
(as the kernel does), and a missing tail (the target of a write, the folders `createDirs`
will make) is kept as written. The result must be the root or lie below it; otherwise the
request is refused with `PermissionDenied` (-32006), whether it escaped by `..`, by an
absolute path or through a symlink (a dangling one included: realpath reads the link).

Invariants: the returned path is absolute, normalised, free of symlinks on its existing
prefix, and inside the root; a non-str, empty, or NUL-containing path is `InvalidParams`.

That check alone guards against what a client asks for, not against a local process
swapping a folder for a symlink between the check and the open. So nothing is opened by
the checked path: `Workspace.open` opens it relative to a descriptor of the root held since
start-up, beneath it in one step (`fs.beneath`: `openat2(RESOLVE_BENEATH |
RESOLVE_NO_MAGICLINKS)`, or a walk that follows no symlink). When that refuses (EXDEV: the
path changed since it was checked), the path is resolved and checked afresh: refused with
`PermissionDenied` if it now leads outside, opened beneath the root again if not.
Writes, listings and stats work through descriptors obtained this way, so what they touch
is beneath the root at the moment they touch it.
"""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path
from typing import Any

from lapce_bridge.core.errors import FileSystemError, InvalidParams, PermissionDenied
from lapce_bridge.fs.ops import REAL_FS, FsOps

OPEN_ATTEMPTS = 8  # re-resolutions of a path that keeps changing before giving up


def _realpath(path: str) -> str:
    """`os.path.realpath`, which raises when a link it saw vanishes before it reads it (a
    path being swapped): tried again, then a retryable error rather than a crash."""
    for _ in range(OPEN_ATTEMPTS):
        try:
            return os.path.realpath(path)
        except OSError:
            continue
    raise FileSystemError(
        f"{path} kept changing while it was resolved (symlinks swapped along it); try again",
        retryable=True,
    )


class Workspace:
    __slots__ = ("_memo", "_prefix", "memo_limit", "root", "root_fd")

    def __init__(self, root: Path | str, *, memo_limit: int = 4096) -> None:
        real = os.path.realpath(root)
        if not os.path.isdir(real):
            raise InvalidParams(f"workspace {str(root)!r} is not a folder")
        self.root = real
        self._prefix = real if real.endswith(os.sep) else real + os.sep
        self._memo: dict[str, str] = {}
        self.memo_limit = memo_limit
        # Held for the workspace's life: everything is opened beneath this very folder,
        # even if its path is later made to point elsewhere.
        self.root_fd = os.open(real, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)

    def close(self) -> None:
        fd, self.root_fd = getattr(self, "root_fd", -1), -1  # -1 if __init__ refused the root
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)

    def __del__(self) -> None:
        self.close()

    def open(self, real: str, flags: int, mode: int = 0o777, *, ops: FsOps = REAL_FS) -> int:
        """A descriptor of the confined path `real`, opened beneath the root in one step.

        Raises `PermissionDenied` if the path now leads outside, what the OS raised otherwise.
        """
        for _ in range(OPEN_ATTEMPTS):
            try:
                return ops.open_beneath(self.root_fd, self.relative(real), flags, mode)
            except OSError as exc:
                if exc.errno != errno.EXDEV:
                    raise
            real = self._confined(_realpath(real), self.relative(real))
        raise FileSystemError(
            f"{self.relative(real)} kept changing while it was opened (symlinks swapped "
            "along it); try again",
            retryable=True,
        )

    def _confined(self, real: str, raw: str, what: str = "path") -> str:
        if real != self.root and not real.startswith(self._prefix):
            raise PermissionDenied(
                f"{what} {raw!r} resolves to {real!r}, outside the workspace {self.root!r}"
            )
        return real

    def resolve(self, raw: object, *, what: str = "path") -> str:
        """The real absolute path `raw` names, refused unless it lies inside the workspace."""
        if not isinstance(raw, str):
            raise InvalidParams(f"{what} must be a string, got {type(raw).__name__}")
        if not raw:
            raise InvalidParams(f"{what} must not be empty (use '.' for the workspace root)")
        if "\0" in raw:
            raise InvalidParams(f"{what} must not contain NUL bytes")
        joined = os.path.join(self.root, raw)
        real = self._confined(_realpath(joined), raw, what)
        if real == os.path.normpath(joined) and ".." not in raw.split(os.sep):
            memo = self._memo
            if len(memo) >= self.memo_limit:
                memo.clear()
            memo[raw] = real
        return real

    def remembered(self, raw: str) -> str | None:
        """The real path of a plain `raw` resolved before: one with no symlink and no `..`.

        For such a path the real path is the path itself, so the kernel resolves it exactly
        as it would `raw` now, even after a symlink was swapped in somewhere along it. What
        that may not guarantee is confinement, which the reader restores: a cached entry is
        served only for the identical file version it vetted, and a disk read checks what
        it opened (see `FileStore.read_path`). Paths through symlinks are resolved afresh
        every time, so re-pointing a link is seen at once.
        """
        return self._memo.get(raw)

    def relative(self, real: str) -> str:
        """`real` relative to the root, in POSIX form ('.' for the root itself)."""
        if real == self.root:
            return "."
        rel = real[len(self._prefix) :] if real.startswith(self._prefix) else real
        return rel if os.sep == "/" else rel.replace(os.sep, "/")


class OpensBeneath:
    """`ops` with `open` made beneath `workspace`'s root (`Workspace.open`), for code that
    walks by path and opens what it finds (fs/search): a folder swapped for a symlink
    mid-walk cannot make it read a file outside. A path that now leads outside fails as
    `PermissionError`, an `OSError` like any file the walk cannot open. Every other call
    is `ops`'s own."""

    def __init__(self, workspace: Workspace, ops: FsOps = REAL_FS) -> None:
        self._workspace = workspace
        self._ops = ops

    def open(self, path: str, flags: int, mode: int = 0o777, *, dir_fd: int | None = None) -> int:
        if dir_fd is not None:
            return self._ops.open(path, flags, mode, dir_fd=dir_fd)
        try:
            return self._workspace.open(path, flags, mode, ops=self._ops)
        except PermissionDenied as exc:
            raise PermissionError(errno.EACCES, str(exc), path) from exc

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ops, name)


def for_wire(name: str) -> str:
    """`name` as JSON can carry it: a file name that is not valid UTF-8 holds lone surrogates
    (Python's surrogateescape), which no JSON encoder accepts; its bytes are shown escaped
    (`\\xff`) instead. Such a name is for display: no client path can name that file."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return os.fsencode(name).decode("utf-8", "backslashreplace")
    return name


__all__ = ["OpensBeneath", "Workspace", "for_wire"]
