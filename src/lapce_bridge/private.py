"""Private folders and files: created or verified as ours, never through a symlink, never blocking.

Theory of operation: a folder is private when it is a real folder (not a symlink), owned by
us, with no access for group or others, and reached through folders no one else can change.
`open_private_dir` checks all of that by walking the path one component at a time, by
descriptor, from `/`: each component is opened with `O_DIRECTORY | O_NOFOLLOW` relative to
the descriptor of the one above and `fstat`ed through its own descriptor, so what is checked
is what is used, and a folder swapped for a symlink between two steps fails the open instead
of redirecting it. Missing components are created (`mkdirat`, mode 0700) when asked.

Invariants:
1. Every folder on the way (an ancestor) is owned by root or by us, and no one else can
   rename entries in it: not writable by others, nor by a group other than our own, unless
   it is sticky (`/tmp`, `/dev/shm`: there only an entry's owner may rename it, and every
   entry we go through is checked to be ours or root's).
2. An ancestor that is a symlink is followed only when the link itself is owned by root or
   by us (it lies in a folder checked by 1, so no one else could have made it); the walk
   then restarts at its target, at most 40 links deep. The private folder itself is never
   a symlink: that is refused.
3. The private folder is owned by us and has no group or other permission bits. A folder
   we created in this walk is given exactly 0700. An existing folder with looser bits is
   refused with an error that says what to do, unless the caller names it as one of our
   own (`repair=True`: a folder with our application's name, made by an earlier version);
   only then is it tightened. A folder a user chose (`--state-dir`, the folder of
   `--socket`) is never chmodded: its sticky bit and mode stay as they were.
4. There is no fallback: a folder that fails a check is `NotPrivate` (-32006, naming the
   folder, its owner or mode and the fix), never replaced by a shared folder.
5. Files: `create_private_file` creates with `O_CREAT | O_EXCL | O_NOFOLLOW` and mode 0600
   (an existing name, a symlink included, is `FileExistsError`); `open_private_file` opens
   an existing file with `O_NOFOLLOW | O_NONBLOCK` (a FIFO someone swapped in can neither
   block the open nor be read: it is refused as not a regular file), then checks through
   the descriptor that it is a regular file, ours, with no group or other access; blocking
   mode is restored on the descriptor before it is returned.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import secrets
import stat
from pathlib import Path

from lapce_bridge.core.errors import PermissionDenied

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
FILE_FLAGS = os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY
PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600
MAX_LINK_HOPS = 40


class NotPrivate(PermissionDenied):
    """A folder or file that is not ours alone, or a path someone else could redirect."""


def _trusted(uid: int) -> bool:
    return uid in (0, os.geteuid())


def _check_ancestor(info: os.stat_result, where: str) -> None:
    if not _trusted(info.st_uid):
        raise NotPrivate(
            f"{where} belongs to uid {info.st_uid}; a folder on the way to a private folder "
            "must be owned by root or by us"
        )
    mode = info.st_mode
    if mode & stat.S_ISVTX:
        return
    if mode & stat.S_IWOTH or (mode & stat.S_IWGRP and info.st_gid != os.getegid()):
        raise NotPrivate(
            f"{where} (mode {stat.S_IMODE(mode):o}) can be changed by other users and is not "
            "sticky; choose a folder only you can write to"
        )


def _check_final(info: os.stat_result, where: str) -> None:
    if info.st_uid != os.geteuid():
        raise NotPrivate(
            f"{where} belongs to uid {info.st_uid}, not to us (uid {os.geteuid()}); another "
            "user may have created it first: remove it or choose another folder"
        )


def _components(path: str) -> list[str]:
    return [part for part in os.path.normpath(os.path.abspath(path)).split("/") if part]


def open_private_dir(
    path: str | os.PathLike[str], *, create: bool = True, repair: bool = False, shared: bool = False
) -> int:
    """A descriptor of the private folder `path`, created (with missing parents) if asked.

    With `shared`, an existing folder need not be private, only safe as an ancestor is
    (invariant 1): the folder a user chose for a socket that is itself 0600 (`/tmp`, say).
    The caller closes the descriptor. Raises `NotPrivate` when a check fails, and the
    `OSError` the system raised otherwise (`FileNotFoundError` without `create`).
    """
    parts = _components(os.fspath(path))
    for _hop in range(MAX_LINK_HOPS):
        target = _walk(parts, create=create, repair=repair, shared=shared)
        if isinstance(target, int):
            return target
        parts = target
    raise NotPrivate(f"{os.fspath(path)}: more than {MAX_LINK_HOPS} symlinks on the way")


def _walk(parts: list[str], *, create: bool, repair: bool, shared: bool) -> int | list[str]:
    """The verified descriptor, or the components to walk instead (a trusted ancestor link)."""
    fd = os.open("/", DIR_FLAGS)
    here = "/"
    try:
        _check_ancestor(os.fstat(fd), "/")
        if not parts:
            raise NotPrivate("/ cannot be a private folder")
        for i, name in enumerate(parts):
            last = i == len(parts) - 1
            where = os.path.join(here, name)
            created = False
            try:
                child = os.open(name, DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise
                with contextlib.suppress(FileExistsError):  # made meanwhile: checked below
                    os.mkdir(name, PRIVATE_DIR_MODE, dir_fd=fd)
                    created = True
                child = _open_dir_child(fd, name, where)
            except OSError as exc:
                if exc.errno not in (errno.ENOTDIR, errno.ELOOP):
                    raise
                link = _trusted_link(fd, name, where, last)
                if link is None:
                    raise
                rest = parts[i + 1 :]
                base = link if os.path.isabs(link) else os.path.join(here, link)
                return _components(os.path.join(base, *rest))
            os.close(fd)
            fd = child
            here = where
            info = os.fstat(fd)
            mode = stat.S_IMODE(info.st_mode)
            if created:
                _check_final(info, where)
                if mode != PRIVATE_DIR_MODE:
                    os.fchmod(fd, PRIVATE_DIR_MODE)  # the umask may have taken bits we need
            elif not last or shared:
                _check_ancestor(info, where)
            else:
                _check_final(info, where)
                if mode & 0o077 and not repair:
                    raise NotPrivate(
                        f"{where} has mode {mode:o}: other users can see into it; run "
                        f"`chmod 700 {where}` or choose another folder"
                    )
                if mode & 0o077:
                    os.fchmod(fd, PRIVATE_DIR_MODE)
        result, fd = fd, -1
        return result
    finally:
        if fd >= 0:
            os.close(fd)


def _open_dir_child(fd: int, name: str, where: str) -> int:
    try:
        return os.open(name, DIR_FLAGS, dir_fd=fd)
    except OSError as exc:
        if exc.errno in (errno.ENOTDIR, errno.ELOOP):
            raise NotPrivate(f"{where} is not a folder (a symlink is refused)") from exc
        raise


def _trusted_link(fd: int, name: str, where: str, last: bool) -> str | None:
    """The target of the ancestor link `name`, if it may be followed (see invariant 2)."""
    info = os.stat(name, dir_fd=fd, follow_symlinks=False)
    if not stat.S_ISLNK(info.st_mode):
        if stat.S_ISDIR(info.st_mode):
            return None  # replaced by a folder meanwhile: the caller's error stands
        raise NotPrivate(f"{where} is not a folder")
    if last:
        raise NotPrivate(f"{where} is a symlink; a private folder must be a real folder")
    if not _trusted(info.st_uid):
        raise NotPrivate(f"{where} is a symlink owned by uid {info.st_uid}; not following it")
    return os.readlink(name, dir_fd=fd)


def private_dir(
    path: str | os.PathLike[str], *, create: bool = True, repair: bool = False, shared: bool = False
) -> Path:
    """`path`, once created or verified as a private folder (see `open_private_dir`)."""
    os.close(open_private_dir(path, create=create, repair=repair, shared=shared))
    return Path(path)


def private_file(path: Path, *, repair_dir: bool = False) -> Path:
    """`path` as a private file of ours in a private folder, created empty (0600) if missing.

    For files another library opens by name (SQLite databases): it then finds a file only
    we can read, and SQLite gives its -wal and -shm files the same mode.
    """
    folder = open_private_dir(path.parent, repair=repair_dir)
    try:
        os.close(open_private_file(path.name, os.O_RDWR, dir_fd=folder, create=True))
    finally:
        os.close(folder)
    return path


def create_private_file(
    path: str | os.PathLike[str], flags: int = os.O_WRONLY, *, dir_fd: int | None = None
) -> int:
    """A descriptor of a new file, mode 0600, that did not exist (not even as a symlink)."""
    return os.open(
        path, flags | os.O_CREAT | os.O_EXCL | FILE_FLAGS, PRIVATE_FILE_MODE, dir_fd=dir_fd
    )


def open_private_file(
    path: str | os.PathLike[str],
    flags: int = os.O_RDONLY,
    *,
    dir_fd: int | None = None,
    create: bool = False,
) -> int:
    """A descriptor of our existing private file `path` (created 0600 first with `create`).

    Refused with `NotPrivate`: a symlink, a FIFO, socket or device (without blocking on
    it), a file of another user's, a file with group or other permission bits.
    """
    extra = os.O_CREAT if create else 0
    try:
        fd = os.open(
            path, flags | extra | FILE_FLAGS | os.O_NONBLOCK, PRIVATE_FILE_MODE, dir_fd=dir_fd
        )
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise NotPrivate(f"{os.fspath(path)} is a symlink; refusing to open it") from exc
        if exc.errno == errno.ENXIO:  # O_WRONLY | O_NONBLOCK on a FIFO nobody reads
            raise NotPrivate(f"{os.fspath(path)} is not a regular file (a FIFO?)") from exc
        raise
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise NotPrivate(
                f"{os.fspath(path)} is not a regular file (a FIFO, socket or device); refusing it"
            )
        if info.st_uid != os.geteuid():
            raise NotPrivate(f"{os.fspath(path)} belongs to uid {info.st_uid}, not to us")
        if stat.S_IMODE(info.st_mode) & 0o077:
            raise NotPrivate(
                f"{os.fspath(path)} has mode {stat.S_IMODE(info.st_mode):o}; a private file "
                "must give no access to group or others"
            )
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
    except BaseException:
        os.close(fd)
        raise
    return fd


def write_private_file(folder_fd: int, name: str, data: bytes) -> None:
    """Replace `name` in the private folder `folder_fd` with `data`, atomically, mode 0600.

    The temporary file is created in the same folder through the same descriptor and
    renamed over `name` relative to it, so nothing is ever written outside that folder.
    """
    tmp = f".{name}.{secrets.token_hex(6)}.tmp"
    fd = create_private_file(tmp, dir_fd=folder_fd)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
        os.rename(tmp, name, src_dir_fd=folder_fd, dst_dir_fd=folder_fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=folder_fd)
        raise


__all__ = [
    "DIR_FLAGS",
    "PRIVATE_DIR_MODE",
    "PRIVATE_FILE_MODE",
    "NotPrivate",
    "create_private_file",
    "open_private_dir",
    "open_private_file",
    "private_dir",
    "private_file",
    "write_private_file",
]
