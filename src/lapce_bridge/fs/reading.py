"""Reading one file whole, in one attempt: the step `FileStore` retries.

Theory of operation: the file is opened beneath the workspace root in one step
(`Workspace.open`: a symlink swapped in along the path cannot lead the open outside), without
following a FIFO into a block (`O_NONBLOCK`), `fstat`ed through the descriptor (so the checks
apply to what was opened, not to whatever the path names a moment later), refused unless it is
a regular file within the size limit, and read to its end: the first `read` asks for one byte
more than `fstat` promised, so a file of the promised size ends in one call and growth shows at
once. A file that ends before the promised size shrank mid-read: a retryable FileSystemError
(the caller reads it again). A file that grows past the limit while read is refused as too
large.

With `verify`, the path came from the workspace's memo of plain paths, and /proc/self/fd
tells what was really opened: if it is not that path (a symlink was swapped in along it),
`Relocated` sends the caller back to resolving and confining the path afresh.
"""

from __future__ import annotations

import errno
import os
import stat as st_mod
from collections.abc import Callable

from lapce_bridge.core.errors import FileSystemError, FileTooLarge
from lapce_bridge.fs.cache import Identity, identity_of
from lapce_bridge.fs.listing import kind_of
from lapce_bridge.fs.ops import FsOps
from lapce_bridge.fs.paths import Workspace

READ_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY  # a FIFO must not block
CHUNK = 1024 * 1024
PROC_FD = "/proc/self/fd/"
HAVE_PROC_FD = os.path.isdir(PROC_FD)


class Relocated(Exception):
    """A remembered real path now opens something else (a symlink was swapped in)."""


def read_file(
    real: str,
    *,
    ops: FsOps,
    max_bytes: int,
    workspace: Workspace,
    verify: bool = False,
) -> tuple[bytes, Identity]:
    """The content and identity of `real` (confined to `workspace`); raises what the OS
    raised, or the tree's errors."""
    relative = workspace.relative
    fd = workspace.open(real, READ_FLAGS, ops=ops)
    try:
        if verify and os.readlink(f"{PROC_FD}{fd}") != real:
            raise Relocated(real)
        st = ops.fstat(fd)
        if not st_mod.S_ISREG(st.st_mode):
            if st_mod.S_ISDIR(st.st_mode):
                raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), real)
            raise FileSystemError(
                f"{relative(real)} is not a regular file "
                f"({kind_of(st.st_mode)}: a pipe, socket or device); refusing to read it",
                retryable=False,
            )
        if st.st_size > max_bytes:
            raise too_large(relative(real), st.st_size, max_bytes)
        data = _read_all(ops, fd, st.st_size, max_bytes, real, relative)
    finally:
        ops.close(fd)
    if len(data) < st.st_size:
        raise FileSystemError(
            f"unexpected end of file: read {len(data)} of {st.st_size} bytes of "
            f"{relative(real)} (it shrank while being read)",
            retryable=True,
        )
    return data, identity_of(st)


def _read_all(
    ops: FsOps, fd: int, size: int, limit: int, real: str, relative: Callable[[str], str]
) -> bytes:
    read = ops.read
    parts: list[bytes] = []
    total = 0
    want = size + 1  # one more than expected: growth shows without another call
    while True:
        chunk = read(fd, want)
        if not chunk:
            break
        parts.append(chunk)
        total += len(chunk)
        if total > limit:
            raise too_large(relative(real), total, limit)
        if total == size and len(chunk) < want:
            # All `fstat` promised, and the kernel stopped short of what was asked: the
            # end of the file. One call fewer than reading on until it returns nothing.
            break
        want = min(CHUNK, limit + 1 - total)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def too_large(name: str, size: int, limit: int) -> FileTooLarge:
    return FileTooLarge(
        f"{name} is {size} bytes, over the {limit} byte limit for one read",
        data={"size": size, "limit": limit},
    )


__all__ = ["HAVE_PROC_FD", "READ_FLAGS", "Relocated", "read_file", "too_large"]
