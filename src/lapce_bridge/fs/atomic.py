"""Atomic file replacement, and the sweep of temporary files a crash left behind.

Theory of operation: `write_atomic` never writes into the target. It opens the target's folder
once (beneath the workspace root in one step, `Workspace.open`, when given one) and makes every
later call relative to that descriptor, so a folder on the path swapped for a symlink mid-write
cannot move the temporary file, the rename or the cleanup elsewhere. It creates a temporary
file beside the target (same folder, so the rename stays on one file system; `O_EXCL` with a
random name, hidden by a leading dot and named `.lapce-bridge-<pid>-<random>.tmp`), writes all
the bytes, gives it the target's mode (a new file gets `0o666 & ~umask`, as `open` would),
fsyncs it, renames it over the target, and fsyncs the folder so the rename itself survives a
power cut. Because `rename(2)` replaces the name in one step, a reader (or a crash at any
instant) sees either the whole old content or the whole new content, never a mix.

Invariants:
- On any failure before the rename the temporary file is removed and the target is
  untouched; after the rename the target holds the new content even if a later step fails.
- `expected_mtime_ns` is checked against the target just before the temporary file is made:
  a positive value must equal the target's current mtime (else `ConflictError`), `0` means
  the target must not exist. Another process could still slip in between that check and the
  rename; writes made through one `FileService` are serialised per path, so they cannot.
- The new version's mtime is always later than the one it replaces: file system timestamps
  advance in ticks of up to 10 ms, so two writes within a tick would otherwise share an mtime
  and `expected_mtime_ns` could not tell them apart (a lost update). When the clock has not
  moved on, the new file's mtime is set one nanosecond past the old one. A version written by
  another program within the tick of the one a client read remains indistinguishable.
- A crash leaves at most a temporary file, which `sweep_temp_files` removes once its writer
  (the pid in its name) is gone, and which listings hide.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import stat as st_mod
import threading
import time

from lapce_bridge.core.errors import ConflictError, FileSystemError, PermissionDenied
from lapce_bridge.fs.ops import REAL_FS, FsOps
from lapce_bridge.fs.paths import Workspace

TEMP_PREFIX = ".lapce-bridge-"
TEMP_SUFFIX = ".tmp"
_TEMP_RE = re.compile(r"\.lapce-bridge-(\d+)-[0-9a-f]{12}\.tmp")
MUST_NOT_EXIST = 0
"""`expected_mtime_ns` value meaning "create only: the target must not exist yet"."""
STALE_TEMP_AGE_NS = 3600 * 10**9  # a temp file this old is junk even if its pid was reused


def is_temp_name(name: str) -> bool:
    """Whether a file name is one of our temporary files (hidden from listings and watches)."""
    return name.startswith(TEMP_PREFIX) and name.endswith(TEMP_SUFFIX)


def temp_name() -> str:
    return f"{TEMP_PREFIX}{os.getpid()}-{secrets.token_hex(6)}{TEMP_SUFFIX}"


def _read_umask() -> int:
    # Setting the umask to read it races with other threads creating files, so prefer /proc.
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


UMASK = _read_umask()


def check_expected(target: str, current: os.stat_result | None, expected: int | None) -> None:
    """Refuse the write with ConflictError unless the target is as the writer last saw it."""
    if expected is None:
        return
    if expected == MUST_NOT_EXIST:
        if current is not None:
            raise ConflictError(
                f"{target} already exists (expectedMtimeNs 0 means create only)",
                data={"mtimeNs": current.st_mtime_ns},
            )
        return
    if current is None:
        raise ConflictError(f"{target} was deleted since it was read", data={"mtimeNs": None})
    if current.st_mtime_ns != expected:
        raise ConflictError(
            f"{target} changed since it was read (mtimeNs {current.st_mtime_ns}, "
            f"expected {expected}); read it again and merge",
            data={"mtimeNs": current.st_mtime_ns},
        )


FOLDER_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


def make_dirs(parent: str, *, ops: FsOps = REAL_FS) -> None:
    """Create `parent` and any missing folders above it (the umask applies)."""
    missing: list[str] = []
    path = parent
    while True:
        try:
            info = ops.stat(path)
        except FileNotFoundError:
            missing.append(path)
            up = os.path.dirname(path)
            if up == path:
                raise
            path = up
            continue
        if not st_mod.S_ISDIR(info.st_mode):
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), path)
        break
    for folder in reversed(missing):
        try:
            ops.mkdir(folder, 0o777)
        except FileExistsError:
            pass  # made by someone else meanwhile: what we wanted


def make_dirs_beneath(workspace: Workspace, parent: str, *, ops: FsOps = REAL_FS) -> int:
    """A descriptor of the confined folder `parent`, made (with missing folders above it)
    one step at a time, each relative to the descriptor of the one above and opened beneath
    it: a folder swapped for a symlink meanwhile cannot send the rest of the walk outside."""
    fd = workspace.open(workspace.root, FOLDER_FLAGS, ops=ops)
    try:
        rel = workspace.relative(parent)
        for name in [] if rel == "." else rel.split("/"):
            try:
                ops.mkdir(name, 0o777, dir_fd=fd)
            except FileExistsError:
                pass  # there already (or made by someone else meanwhile)
            try:
                step = ops.open_beneath(fd, name, FOLDER_FLAGS)
            except OSError as exc:
                if exc.errno != errno.EXDEV:
                    raise
                raise PermissionDenied(
                    f"{rel}: a folder on the way was replaced by a symlink leading outside "
                    "the workspace while it was being made"
                ) from exc
            ops.close(fd)
            fd = step
    except BaseException:
        ops.close(fd)
        raise
    return fd


def open_folder(parent: str, *, ops: FsOps, workspace: Workspace | None, create: bool) -> int:
    """A descriptor of the folder a write goes to: beneath the workspace when there is one."""
    if workspace is None:
        if create:
            make_dirs(parent, ops=ops)
        return ops.open(parent, FOLDER_FLAGS)
    if create:
        return make_dirs_beneath(workspace, parent, ops=ops)
    return workspace.open(parent, FOLDER_FLAGS, ops=ops)


def write_atomic(
    target: str,
    data: bytes,
    *,
    ops: FsOps = REAL_FS,
    expected_mtime_ns: int | None = None,
    create_dirs: bool = False,
    durable: bool = True,
    sync_folder: bool | None = None,
    workspace: Workspace | None = None,
) -> os.stat_result:
    """Replace `target` with `data` atomically; returns the new file's stat.

    `durable` fsyncs the content before the rename and, unless `sync_folder` says otherwise,
    the folder after it (a caller that retries the folder's sync on its own passes False).
    Every step after opening the folder (stat, temp file, rename, cleanup, sync) is made
    relative to its descriptor; with `workspace`, that folder is opened beneath its root.
    """
    parent, name = os.path.split(target)
    folder = open_folder(parent, ops=ops, workspace=workspace, create=create_dirs)
    try:
        return _replace_in(
            folder,
            name,
            target,
            data,
            ops=ops,
            expected_mtime_ns=expected_mtime_ns,
            durable=durable,
            sync_folder=durable if sync_folder is None else sync_folder,
            # Inside a workspace, a symlink swapped in for the target is never followed
            # (not even to read its mtime); the rename replaces the link itself.
            follow=workspace is None,
        )
    finally:
        ops.close(folder)


def _replace_in(
    folder: int,
    name: str,
    target: str,
    data: bytes,
    *,
    ops: FsOps,
    expected_mtime_ns: int | None,
    durable: bool,
    sync_folder: bool,
    follow: bool,
) -> os.stat_result:
    try:
        current: os.stat_result | None = ops.stat(name, dir_fd=folder, follow_symlinks=follow)
    except FileNotFoundError:
        current = None
    check_expected(target, current, expected_mtime_ns)
    if current is not None and not st_mod.S_ISREG(current.st_mode):
        if st_mod.S_ISDIR(current.st_mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), target)
        raise FileSystemError(f"{target} is not a regular file; refusing to replace it")
    mode = st_mod.S_IMODE(current.st_mode) if current is not None else 0o666 & ~UMASK
    tmp = temp_name()
    # 0o600 until the content is complete: a secret file's bytes are never world-readable.
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = ops.open(tmp, flags, 0o600, dir_fd=folder)
    renamed = False
    try:
        _write_all(ops, fd, data)
        if current is not None:
            _advance_mtime(ops, fd, current.st_mtime_ns)
        if mode != 0o600:
            _chmod(ops, fd, mode)
        if current is not None:
            _chown(ops, fd, current)
        if durable:
            ops.fsync(fd)
        ops.replace(tmp, name, dir_fd=folder)
        renamed = True
        # fstat of our own descriptor: the rename changed the ctime, and the path may already
        # name someone else's file.
        result = ops.fstat(fd)
    except BaseException:
        if not renamed:
            discard(tmp, ops=ops, dir_fd=folder)
        raise
    finally:
        try:
            ops.close(fd)
        except OSError:
            pass  # the data was already fsynced (or the write already failed)
    if sync_folder:
        _fsync_folder(ops, folder)
    return result


def _write_all(ops: FsOps, fd: int, data: bytes) -> None:
    view = memoryview(data)
    done = 0
    while done < len(view):
        n = ops.write(fd, view[done:])
        if n <= 0:
            raise OSError(errno.EIO, "write made no progress")
        done += n


def _advance_mtime(ops: FsOps, fd: int, previous_ns: int) -> None:
    st = ops.fstat(fd)
    if st.st_mtime_ns <= previous_ns:
        ops.utime(fd, ns=(st.st_atime_ns, previous_ns + 1))


def _chmod(ops: FsOps, fd: int, mode: int) -> None:
    try:
        ops.fchmod(fd, mode)
    except OSError as exc:
        # Some file systems (vfat, some FUSE) have no modes at all.
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise


def _chown(ops: FsOps, fd: int, current: os.stat_result) -> None:
    if (current.st_uid, current.st_gid) == (os.geteuid(), os.getegid()):
        return
    try:
        ops.fchown(fd, current.st_uid, current.st_gid)
    except PermissionError:
        pass  # only root may give a file away; the file becomes ours, as with any editor


def fsync_dir(folder: str, *, ops: FsOps = REAL_FS, workspace: Workspace | None = None) -> None:
    fd = open_folder(folder, ops=ops, workspace=workspace, create=False)
    try:
        _fsync_folder(ops, fd)
    finally:
        ops.close(fd)


def _fsync_folder(ops: FsOps, fd: int) -> None:
    try:
        ops.fsync(fd)
    except OSError as exc:
        if exc.errno != errno.EINVAL:  # file systems that cannot sync a folder say EINVAL
            raise


def discard(path: str, *, ops: FsOps = REAL_FS, dir_fd: int | None = None) -> None:
    try:
        ops.unlink(path, dir_fd=dir_fd)
    except OSError:
        pass  # best effort: the sweep removes what is left


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def is_stale_temp(name: str, mtime_ns: int, now_ns: int) -> bool:
    """A temp file whose writer is gone (or that is over an hour old)."""
    match = _TEMP_RE.fullmatch(name)
    if match is None:
        return False
    pid = int(match.group(1))
    return now_ns - mtime_ns > STALE_TEMP_AGE_NS or (pid != os.getpid() and not _pid_alive(pid))


def sweep_temp_files(
    root: str,
    *,
    ops: FsOps = REAL_FS,
    skip_dirs: frozenset[str] = frozenset(),
    max_entries: int = 200_000,
    now_ns: int | None = None,
    stop: threading.Event | None = None,
) -> int:
    """Remove stale temporary files under `root` (symlinks not followed); returns how many.

    `stop`, once set, ends the walk before the next folder.
    """
    now = time.time_ns() if now_ns is None else now_ns
    removed = 0
    seen = 0
    stack = [root]
    while stack and seen < max_entries and not (stop is not None and stop.is_set()):
        folder = stack.pop()
        try:
            entries = ops.scandir(folder)
        except OSError:
            continue  # unreadable or vanished: nothing of ours we could remove there
        for entry in entries:
            seen += 1
            try:
                if entry.is_dir(follow_symlinks=False):
                    if entry.name not in skip_dirs:
                        stack.append(entry.path)
                elif is_temp_name(entry.name) and is_stale_temp(
                    entry.name, entry.stat(follow_symlinks=False).st_mtime_ns, now
                ):
                    ops.unlink(entry.path)
                    removed += 1
            except OSError:
                continue
    return removed


__all__ = [
    "MUST_NOT_EXIST",
    "TEMP_PREFIX",
    "TEMP_SUFFIX",
    "UMASK",
    "check_expected",
    "discard",
    "fsync_dir",
    "is_stale_temp",
    "is_temp_name",
    "make_dirs",
    "make_dirs_beneath",
    "open_folder",
    "sweep_temp_files",
    "temp_name",
    "write_atomic",
]
