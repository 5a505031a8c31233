"""The terminal's private files: a verified folder, a command file held open, safe reads.

Theory of operation: a terminal's files (the command the shell sources, the exported
environment its hooks save for crash recovery) can hold secrets, and the command file is
executed: another local user who could write or swap it would run commands as us. So:

- `private_dir` creates each folder with mode 0700, or accepts an existing one only when
  `lstat` shows a real folder (never a symlink), owned by us, with no permission for group
  or others; the folder above it must be ours or root's, and not writable by others unless
  sticky (`/dev/shm`, `/tmp`). A folder that fails is refused, never chmod'ed or used.
- `CommandFile` creates its file once with `O_CREAT | O_EXCL | O_NOFOLLOW`, mode 0600, and
  keeps the descriptor: each command is a `pwrite` + `ftruncate` on it, so no path is opened
  again on the event loop (a FIFO swapped in cannot block it) and no symlink is followed.
- `read_private` opens with `O_NOFOLLOW | O_NONBLOCK` and reads only a regular file of ours.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from lapce_bridge.core.errors import PermissionDenied

__all__ = ["CommandFile", "private_dir", "read_private", "runtime_base", "write_private"]

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_MAX_READ = 16 << 20


def _check_parent(path: Path) -> None:
    st = os.stat(path)  # the parent may itself be reached through a symlink (/tmp on macOS)
    uid = os.getuid()
    if st.st_uid not in (uid, 0):
        raise PermissionDenied(f"{path} belongs to uid {st.st_uid}, not to us or root")
    if st.st_mode & stat.S_IWOTH and not st.st_mode & stat.S_ISVTX:
        raise PermissionDenied(f"{path} is writable by others and not sticky")


def _check_private(path: Path) -> None:
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        raise PermissionDenied(f"{path} is a symlink; refusing to use it")
    if not stat.S_ISDIR(st.st_mode):
        raise PermissionDenied(f"{path} is not a folder")
    if st.st_uid != os.getuid():
        raise PermissionDenied(f"{path} belongs to uid {st.st_uid}, not to us")
    if st.st_mode & 0o077:
        raise PermissionDenied(f"{path} has mode {stat.S_IMODE(st.st_mode):o}, not 0700")


def private_dir(path: Path, *, exclusive: bool = False) -> Path:
    """`path` as a verified private folder (created 0700 when missing).

    `exclusive`: the folder must not exist yet (a per-terminal folder with a random name).
    """
    _check_parent(path.parent)
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        if exclusive:
            raise PermissionDenied(f"{path} exists already; refusing to share it") from None
    _check_private(path)
    return path


def runtime_base(state_dir: Path) -> Path:
    """Where terminal folders live: a verified folder on tmpfs when there is one.

    Candidates are `$XDG_RUNTIME_DIR` and `/dev/shm` (a write there costs a quarter of one on
    disk), then `state_dir`; one that another user could have prepared is skipped, never used.
    """
    name = f"lapce-bridge-{os.getuid()}"
    for base in (os.environ.get("XDG_RUNTIME_DIR"), "/dev/shm"):
        if not base or not os.path.isdir(base) or not os.access(base, os.W_OK | os.X_OK):
            continue
        try:
            return private_dir(private_dir(Path(base) / name) / "terminals")
        except (PermissionDenied, OSError):
            continue
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    return private_dir(state_dir / "terminals")


class CommandFile:
    """The file a shell sources: created once, rewritten in place through its descriptor."""

    __slots__ = ("fd", "path")

    def __init__(self, path: Path) -> None:
        self.path = path
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC
        self.fd = os.open(path, flags, 0o600)

    def write(self, data: bytes) -> None:
        fd = self.fd
        if fd < 0:
            raise OSError("the command file is closed")
        view = memoryview(data)
        offset = 0
        while offset < len(view):
            offset += os.pwrite(fd, view[offset:], offset)
        os.ftruncate(fd, len(data))

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def read_private(path: Path) -> bytes | None:
    """The content of a regular file of ours at `path`; None when missing or not trustworthy."""
    try:
        fd = os.open(path, os.O_RDONLY | _NOFOLLOW | os.O_NONBLOCK | _CLOEXEC)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid() or st.st_size > _MAX_READ:
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
    """A new 0600 file at `path` (an old one of ours is replaced; a symlink is never followed)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        pass
    else:
        if stat.S_ISDIR(st.st_mode):
            raise PermissionDenied(f"{path} is a folder")
        os.unlink(path)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)
