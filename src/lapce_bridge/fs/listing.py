"""`fs/stat` and `fs/list` answers, and turning OS errors on workspace paths into the tree.

Theory of operation: neither answer retries: a transient errno comes back as a -32004 error
marked retryable, which the client may retry. EINTR alone is retried here, at once, as the
OS itself would. `stat_path` is synchronous (the server answers it inline); `list_resolved`
touches no shared state, so a large folder can be listed in a worker thread (see
`FileStore.list_async`). Kinds come from `lstat`, so a symlink is reported as one; a listing
never follows links and hides our own temporary files, and sizes are those of regular files
(0 for everything else, whose `st_size` means something different on every file system).
A listing too large for one message is refused (FileTooLarge) instead of being sent, and a
name that is not valid UTF-8 is shown escaped, since JSON cannot carry it.

A path stat'ed before with no symlink and no `..` in it (`Workspace.remembered`) skips the
`realpath` (most of the cost): it is opened with `O_PATH | O_NOFOLLOW` and the kernel's own
name for what was opened (/proc/self/fd) must be the remembered path, so a folder swapped for
a symlink since cannot leak what lies outside. Anything unexpected (the open fails, the
names differ, the last component is now a link) takes the full path, which reports it.

`fs_error` is the one place an `OSError` on a workspace path becomes a `BridgeError`: the
errno's classification is kept, EACCES/EPERM/EROFS become `PermissionDenied`, and `data`
carries the errno's name and the workspace-relative path.
"""

from __future__ import annotations

import contextlib
import errno as errno_mod
import os
import stat as st_mod
from collections.abc import Callable
from functools import partial
from typing import Any, TypeVar

from lapce_bridge.core.errors import (
    BridgeError,
    FileSystemError,
    FileTooLarge,
    PermissionDenied,
    classify_errno,
    to_bridge_error,
)
from lapce_bridge.fs.atomic import is_temp_name
from lapce_bridge.fs.ops import REAL_FS, FsOps
from lapce_bridge.fs.paths import Workspace, for_wire

T = TypeVar("T")
_PERMISSION = frozenset({errno_mod.EACCES, errno_mod.EPERM, errno_mod.EROFS})
_PROC_FD = "/proc/self/fd/"
_O_PATH = getattr(os, "O_PATH", 0)
_VERIFY_FLAGS = _O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
_LIST_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
FAST_STAT = bool(_O_PATH) and os.path.isdir(_PROC_FD)
DEFAULT_MAX_LIST_BYTES = 15 * 1024 * 1024  # below the 16 MiB message limit, with room to spare


def kind_of(mode: int) -> str:
    if st_mod.S_ISREG(mode):
        return "file"
    if st_mod.S_ISDIR(mode):
        return "directory"
    if st_mod.S_ISLNK(mode):
        return "symlink"
    return "other"


def fs_error(exc: BaseException, action: str, where: str) -> BridgeError:
    """Translate a failure of `action` on `where` (workspace-relative) into the error tree."""
    if isinstance(exc, BridgeError):
        return exc
    where = for_wire(where)
    if isinstance(exc, OSError) and exc.errno is not None:
        name = errno_mod.errorcode.get(exc.errno, str(exc.errno))
        detail = f"{action} {where}: {exc.strerror or exc} ({name})"
        cls = classify_errno(exc.errno)
        data = {"errno": name, "path": where}
        if exc.errno in _PERMISSION:
            return PermissionDenied(detail, classification=cls, data=data)
        return FileSystemError(detail, errno=exc.errno, classification=cls, data=data)
    return to_bridge_error(exc, f"{action} {where}: {type(exc).__name__}: {exc}")


def eintr_safe(fn: Callable[[], T], limit: int = 10) -> T:
    for _ in range(limit):
        try:
            return fn()
        except InterruptedError:
            continue
    return fn()


def _verified_stat(real: str, ops: FsOps) -> os.stat_result | None:
    """The `lstat` of the remembered path `real` if it still names a non-link inside, else None."""
    try:
        fd = ops.open(real, _VERIFY_FLAGS)
    except OSError:
        return None
    try:
        if os.readlink(f"{_PROC_FD}{fd}") != real:
            return None
        st = ops.fstat(fd)
    except OSError:
        return None
    finally:
        with contextlib.suppress(OSError):  # an O_PATH descriptor holds nothing to flush
            ops.close(fd)
    return None if st_mod.S_ISLNK(st.st_mode) else st


def _confined_stat(workspace: Workspace, real: str, ops: FsOps) -> os.stat_result:
    fd = eintr_safe(partial(workspace.open, real, _O_PATH | os.O_CLOEXEC, ops=ops))
    try:
        return ops.fstat(fd)
    finally:
        with contextlib.suppress(OSError):  # an O_PATH descriptor holds nothing to flush
            ops.close(fd)


def stat_path(workspace: Workspace, raw: object, *, ops: FsOps = REAL_FS) -> dict[str, Any]:
    """`{size, mtimeNs, kind}` of a path; a symlink (inside) reports its target's figures."""
    if FAST_STAT and type(raw) is str:
        remembered = workspace.remembered(raw)
        if remembered is not None:
            found = _verified_stat(remembered, ops)
            if found is not None:
                mode = found.st_mode
                return {
                    "size": found.st_size if st_mod.S_ISREG(mode) else 0,
                    "mtimeNs": found.st_mtime_ns,
                    "kind": kind_of(mode),
                }
    real = workspace.resolve(raw)
    rel = workspace.relative(real)
    assert isinstance(raw, str)  # resolve() accepted it
    try:
        # The figures come from what was opened beneath the root (never from a symlink
        # swapped in since the check); the lstat of the client's path only tells whether it
        # names a link, whose kind and target are reported alongside.
        st = _confined_stat(workspace, real, ops)
        link = eintr_safe(partial(ops.lstat, os.path.join(workspace.root, raw)))
        if not st_mod.S_ISLNK(link.st_mode):
            link = st
    except OSError as exc:
        raise fs_error(exc, "stat", rel) from exc
    kind = kind_of(link.st_mode)
    out: dict[str, Any] = {
        "size": st.st_size if st_mod.S_ISREG(st.st_mode) else 0,
        "mtimeNs": st.st_mtime_ns,
        "kind": kind,
    }
    if kind == "symlink":
        out["targetKind"] = kind_of(st.st_mode)
        out["target"] = for_wire(rel)
    return out


ENTRY_JSON_BYTES = 96  # an entry's JSON besides its name: keys, kind, size, mtimeNs


def list_folder(
    workspace: Workspace,
    raw: object,
    *,
    ops: FsOps = REAL_FS,
    max_bytes: int = DEFAULT_MAX_LIST_BYTES,
) -> list[dict[str, Any]]:
    """The folder's entries `{name, kind, size, mtimeNs}` by name, our temp files hidden."""
    real = workspace.resolve(raw)
    return list_resolved(workspace, real, ops=ops, max_bytes=max_bytes)


def list_resolved(
    workspace: Workspace,
    real: str,
    *,
    ops: FsOps = REAL_FS,
    max_bytes: int = DEFAULT_MAX_LIST_BYTES,
) -> list[dict[str, Any]]:
    """`list_folder` of a confined real path; touches no shared state, so a thread may run it.

    A listing whose JSON could exceed `max_bytes` is refused with FileTooLarge rather than
    sent as a message the client would have to drop. A name that is not valid UTF-8 comes
    out escaped (see `for_wire`) and marked `undecodable`. The folder is opened beneath
    the workspace root (`Workspace.open`) and listed through that descriptor.
    """
    rel = workspace.relative(real)
    try:
        fd = eintr_safe(partial(workspace.open, real, _LIST_FLAGS, ops=ops))
    except OSError as exc:
        raise fs_error(exc, "list", rel) from exc
    try:  # the entries are stat'ed relative to the descriptor: it stays open until then
        return _entries(fd, rel, ops, max_bytes)
    finally:
        ops.close(fd)


def _entries(fd: int, rel: str, ops: FsOps, max_bytes: int) -> list[dict[str, Any]]:
    try:
        entries = eintr_safe(partial(ops.scandir, fd))
    except OSError as exc:
        raise fs_error(exc, "list", rel) from exc
    out: list[dict[str, Any]] = []
    budget = max_bytes
    for entry in entries:
        name = entry.name
        if is_temp_name(name):
            continue
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue  # removed while we listed
        budget -= ENTRY_JSON_BYTES + len(name)
        if budget < 0:
            raise FileTooLarge(
                f"{for_wire(rel)} holds {len(entries)} entries, more than one message of "
                f"{max_bytes} bytes can list; list its subfolders, or use a terminal",
                data={"entries": len(entries), "limit": max_bytes},
            )
        item: dict[str, Any] = {
            "name": name,
            "kind": kind_of(st.st_mode),
            "size": st.st_size if st_mod.S_ISREG(st.st_mode) else 0,
            "mtimeNs": st.st_mtime_ns,
        }
        shown = for_wire(name)
        if shown is not name:
            item["name"] = shown
            item["undecodable"] = True
            budget -= 3 * len(name)  # each escaped byte takes 4 characters, not 1
        out.append(item)
    out.sort(key=lambda e: e["name"])
    return out


__all__ = [
    "DEFAULT_MAX_LIST_BYTES",
    "ENTRY_JSON_BYTES",
    "FAST_STAT",
    "eintr_safe",
    "fs_error",
    "kind_of",
    "list_folder",
    "list_resolved",
    "stat_path",
]
