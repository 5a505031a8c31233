"""The terminal's private files: a verified folder, a command file held open, safe reads.

Theory of operation: a terminal's files (the command the shell sources, the exported
environment its hooks save for crash recovery) can hold secrets, and the command file is
executed: another local user who could write or swap it would run commands as us. So the
folders are `lapce_bridge.private` folders (created 0700 or verified as ours, walked by
descriptor, no symlink followed, never a shared fallback), and:

- `CommandFile` creates its file once with `O_CREAT | O_EXCL | O_NOFOLLOW`, mode 0600, and
  keeps the descriptor: each command is a `pwrite` + `ftruncate` on it, so no path is opened
  again on the event loop (a FIFO swapped in cannot block it) and no symlink is followed;
- `read_private` reads only a regular private file of ours, opened without blocking;
- `write_private` replaces a file atomically inside its private folder, mode 0600.
"""

from __future__ import annotations

import os
from pathlib import Path

from lapce_bridge.private import (
    NotPrivate,
    create_private_file,
    open_private_dir,
    open_private_file,
    private_dir,
    write_private_file,
)

__all__ = [
    "CommandFile",
    "new_private_dir",
    "private_dir",
    "read_private",
    "runtime_base",
    "write_private",
]

_MAX_READ = 16 << 20


def new_private_dir(path: Path) -> Path:
    """A private folder at `path` that did not exist before (a per-terminal folder)."""
    parent = open_private_dir(path.parent)
    try:
        os.mkdir(path.name, 0o700, dir_fd=parent)
    finally:
        os.close(parent)
    return private_dir(path, create=False)


def runtime_base(state_dir: Path) -> Path:
    """Where terminal folders live: a private folder on tmpfs when there is one.

    Candidates are `$XDG_RUNTIME_DIR` and `/dev/shm` (a write there costs a quarter of one on
    disk), then `state_dir`; one that another user could have prepared is skipped, never used.
    """
    name = f"lapce-bridge-{os.getuid()}"
    for base in (os.environ.get("XDG_RUNTIME_DIR"), "/dev/shm"):
        if not base or not os.path.isdir(base) or not os.access(base, os.W_OK | os.X_OK):
            continue
        try:
            # Folders with our name, so an older version's looser mode may be tightened
            # (only when they are ours: another user's is refused).
            private_dir(Path(base) / name, repair=True)
            return private_dir(Path(base) / name / "terminals", repair=True)
        except (NotPrivate, OSError):
            continue
    return private_dir(state_dir / "terminals", repair=True)


class CommandFile:
    """The file a shell sources: created once, rewritten in place through its descriptor."""

    __slots__ = ("_size", "fd", "path")

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = create_private_file(path, os.O_RDWR)
        self._size = 0  # at least the file's length: only this object writes it (O_EXCL)

    def write(self, data: bytes) -> None:
        fd = self.fd
        if fd < 0:
            raise OSError("the command file is closed")
        size = len(data)
        longest = self._size
        self._size = max(longest, size)  # whatever fails below, the file is no longer
        offset = os.pwrite(fd, data, 0)
        if offset < size:
            view = memoryview(data)
            while offset < size:
                offset += os.pwrite(fd, view[offset:], offset)
        # Cut only what an earlier, longer command left: most commands are no shorter than
        # the last, and the write alone then leaves exactly `data`.
        if size < longest:
            os.ftruncate(fd, size)
            self._size = size

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def read_private(path: Path) -> bytes | None:
    """The content of a regular private file of ours; None when missing or not trustworthy."""
    try:
        fd = open_private_file(path)
    except (NotPrivate, OSError):
        return None
    try:
        if os.fstat(fd).st_size > _MAX_READ:
            return None
        chunks = []
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
        return b"".join(chunks)
    except OSError:
        return None
    finally:
        os.close(fd)


def write_private(path: Path, data: bytes) -> None:
    """Replace `path` (in a private folder) with `data`, atomically, mode 0600."""
    folder = open_private_dir(path.parent, create=False)
    try:
        write_private_file(folder, path.name, data)
    finally:
        os.close(folder)
