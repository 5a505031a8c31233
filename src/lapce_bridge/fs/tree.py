"""`fs/tree`: a depth-limited listing of a folder, with sizes, kinds and mtimes.

Theory of operation: a breadth-first walk in a worker thread (a tree of thousands of entries
costs a stat each, which must not stall the event loop), entries sorted by name, folders
descended up to `depth` levels (depth 1 is the folder's own entries). Kinds come from `lstat`:
links are reported as links and never followed, so the walk cannot leave the workspace or
loop. Our temporary files are hidden; with `gitignore: true` so is everything `.gitignore`
excludes, and `.git`. The answer is bounded by `maxEntries`: once that many entries are
listed the walk stops and `truncated` says so; folders it never reached have `children: null`
(as folders at the depth limit do) rather than an empty list, which would claim they are empty.
"""

from __future__ import annotations

import asyncio
import os
import stat as st_mod
from collections import deque

import msgspec

from lapce_bridge.core.errors import PermissionDenied
from lapce_bridge.fs.atomic import is_temp_name
from lapce_bridge.fs.files import FileStore
from lapce_bridge.fs.ignore import IgnoreRules
from lapce_bridge.fs.listing import fs_error, kind_of
from lapce_bridge.fs.ops import FsOps
from lapce_bridge.fs.paths import Workspace, for_wire
from lapce_bridge.rpc import Params
from lapce_bridge.schema.files import TreeEntry, TreeParams, TreeResult
from lapce_bridge.schema.validate import convert, refuse

METHOD = "fs/tree"


def _listed(workspace: Workspace, folder: str, ops: FsOps) -> list[tuple[str, os.stat_result]]:
    """(name, lstat) of each entry of `folder`, by name, read through one descriptor."""
    fd = workspace.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, ops=ops)
    try:
        found = []
        for entry in ops.scandir(fd):
            try:
                found.append((entry.name, entry.stat(follow_symlinks=False)))
            except OSError:
                continue  # removed while listed
    finally:
        ops.close(fd)
    found.sort(key=lambda item: item[0])
    return found


def build_tree(
    real: str,
    rel: str,
    *,
    depth: int,
    max_entries: int,
    rules: IgnoreRules | None,
    ops: FsOps,
    workspace: Workspace,
) -> TreeResult:
    """The tree below the folder `real` (workspace-relative `rel`)."""
    top: list[TreeEntry] = []
    count = 0
    truncated = False
    # (folder's real path, its workspace-relative prefix, its level, its node (None for the
    #  top), the rules in force in it)
    queue: deque[tuple[str, str, int, TreeEntry | None, IgnoreRules | None]] = deque(
        [(real, "" if rel == "." else rel + "/", 1, None, rules)]
    )
    while queue:
        folder, prefix, level, parent, here = queue.popleft()
        into = top if parent is None or parent.children is None else parent.children
        try:
            # Listed and stat'ed through a descriptor opened beneath the workspace root: a
            # folder swapped for a symlink since its parent was listed shows nothing outside.
            entries = _listed(workspace, folder, ops)
        except (OSError, PermissionDenied):
            continue  # vanished, unreadable or redirected since its parent was listed
        for name, info in entries:
            if is_temp_name(name):
                continue
            kind = kind_of(info.st_mode)
            child_rel = prefix + name
            is_dir = kind == "directory"
            if here is not None and here.ignored(child_rel, is_dir=is_dir):
                continue
            if count >= max_entries:
                truncated = True
                break
            count += 1
            node = TreeEntry(
                name=for_wire(name),
                kind=kind,  # type: ignore[arg-type]
                size=info.st_size if st_mod.S_ISREG(info.st_mode) else 0,
                mtime_ns=info.st_mtime_ns,
            )
            into.append(node)
            if is_dir and level < depth:
                node.children = []
                path = os.path.join(folder, name)
                inner = here.descend(path, child_rel) if here is not None else None
                queue.append((path, child_rel + "/", level + 1, node, inner))
        if truncated:
            break
    # Folders queued but never listed get null, not an empty (and false) list.
    for _, _, _, unlisted, _ in queue:
        if unlisted is not None:
            unlisted.children = None
    return TreeResult(path=rel, entries=top, count=count, truncated=truncated)


async def tree(store: FileStore, params: Params) -> dict[str, object]:
    """The `fs/tree` method on `store`'s workspace."""
    p = convert(params, TreeParams, METHOD)
    workspace = store.workspace
    real = workspace.resolve(p.path)
    rel = workspace.relative(real)
    try:
        info = store.ops.stat(real)
    except OSError as exc:
        raise fs_error(exc, "list", rel) from exc
    if not st_mod.S_ISDIR(info.st_mode):
        raise refuse(METHOD, "path", f"{rel!r} is not a folder (use fs/stat)")

    def run() -> TreeResult:
        rules = IgnoreRules.for_folder(workspace.root, rel) if p.gitignore else None
        return build_tree(
            real,
            rel,
            depth=p.depth,
            max_entries=p.max_entries,
            rules=rules,
            ops=store.ops,
            workspace=workspace,
        )

    result = await asyncio.to_thread(run)
    return msgspec.to_builtins(result)  # type: ignore[no-any-return]


__all__ = ["build_tree", "tree"]
