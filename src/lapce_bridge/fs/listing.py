"""`fs/stat` and `fs/list` answers, and turning OS errors on workspace paths into the tree.

Theory of operation: both answers are synchronous (the server answers them inline) and make
no retries: a transient errno comes back as a -32004 error marked retryable, which the
client may retry. EINTR alone is retried here, at once, as the OS itself would. Kinds come
from `lstat`, so a symlink is reported as one; a listing never follows links and hides our
own temporary files, and sizes are those of regular files (0 for everything else, whose
`st_size` means something different on every file system).

`fs_error` is the one place an `OSError` on a workspace path becomes a `BridgeError`: the
errno's classification is kept, EACCES/EPERM/EROFS become `PermissionDenied`, and `data`
carries the errno's name and the workspace-relative path.
"""

from __future__ import annotations

import errno as errno_mod
import os
import stat as st_mod
from collections.abc import Callable
from functools import partial
from typing import Any, TypeVar

from lapce_bridge.core.errors import (
    BridgeError,
    FileSystemError,
    PermissionDenied,
    classify_errno,
    to_bridge_error,
)
from lapce_bridge.fs.atomic import is_temp_name
from lapce_bridge.fs.ops import REAL_FS, FsOps
from lapce_bridge.fs.paths import Workspace

T = TypeVar("T")
_PERMISSION = frozenset({errno_mod.EACCES, errno_mod.EPERM, errno_mod.EROFS})


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


def stat_path(workspace: Workspace, raw: object, *, ops: FsOps = REAL_FS) -> dict[str, Any]:
    """`{size, mtimeNs, kind}` of a path; a symlink (inside) reports its target's figures."""
    real = workspace.resolve(raw)
    rel = workspace.relative(real)
    assert isinstance(raw, str)  # resolve() accepted it
    try:
        link = eintr_safe(partial(ops.lstat, os.path.join(workspace.root, raw)))
        st = link if not st_mod.S_ISLNK(link.st_mode) else eintr_safe(partial(ops.stat, real))
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
        out["target"] = rel
    return out


def list_folder(workspace: Workspace, raw: object, *, ops: FsOps = REAL_FS) -> list[dict[str, Any]]:
    """The folder's entries `{name, kind, size, mtimeNs}` by name, our temp files hidden."""
    real = workspace.resolve(raw)
    try:
        entries = eintr_safe(partial(ops.scandir, real))
    except OSError as exc:
        raise fs_error(exc, "list", workspace.relative(real)) from exc
    out: list[dict[str, Any]] = []
    for entry in entries:
        if is_temp_name(entry.name):
            continue
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue  # removed while we listed
        out.append(
            {
                "name": entry.name,
                "kind": kind_of(st.st_mode),
                "size": st.st_size if st_mod.S_ISREG(st.st_mode) else 0,
                "mtimeNs": st.st_mtime_ns,
            }
        )
    out.sort(key=lambda e: e["name"])
    return out


__all__ = ["eintr_safe", "fs_error", "kind_of", "list_folder", "stat_path"]
