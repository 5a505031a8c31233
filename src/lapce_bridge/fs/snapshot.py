"""Last-known state of watched trees, and turning it into the changes a client must hear of.

Theory of operation: a snapshot maps each absolute path under a watch's roots to a `Stamp`
(mtime, ctime, size, inode, kind) taken with `lstat`, so symlinks are recorded, never
followed (a link out of the workspace is never walked). Two operations keep clients exact:

- `diff(old, new)` lists what changed between two scans, used after a watcher is recreated:
  every change made while it was down shows up as added, modified or deleted.
- `Reconciler.apply(paths)` takes the paths a live watcher reported and decides each one's
  kind from the file system and the snapshot rather than trusting the report: an atomic
  replace reported as "added" is a modification of a known file; a folder renamed away
  reports only the folder, so everything the snapshot held under it is deleted too (deepest
  first, as `rm -r` goes); a folder created with content (`mkdir -p a/b && touch a/b/c`)
  reports only `a`, so it is scanned.
  A path that came and went between reports (a temp file) is not reported at all.

Folders are reported added and deleted but never modified (their mtime moves with every
child, which is already reported). Scans stop at `max_entries` (reported as truncated) and
skip folders named in `skip_dirs` below a root, and our own temp files.
"""

from __future__ import annotations

import os
import stat as st_mod
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from lapce_bridge.fs.atomic import is_temp_name

Stamp = tuple[int, int, int, int, str]
"""(mtime_ns, ctime_ns, size, inode, kind) of one path; folders carry only their kind."""
Snapshot = dict[str, Stamp]
Change = tuple[str, str]
"""(absolute path, "added" | "modified" | "deleted")."""

DEFAULT_SKIP_DIRS = frozenset(
    {".git", ".hg", ".svn", "node_modules", "__pycache__", ".mypy_cache", ".pytest_cache",
     ".ruff_cache", ".tox", ".venv", ".hypothesis"}
)  # fmt: skip
_DIR_STAMP: Stamp = (0, 0, 0, 0, "directory")


def stamp_of(st: os.stat_result) -> Stamp:
    mode = st.st_mode
    if st_mod.S_ISDIR(mode):
        return _DIR_STAMP
    kind = "file" if st_mod.S_ISREG(mode) else "symlink" if st_mod.S_ISLNK(mode) else "other"
    return (st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino, kind)


@dataclass(frozen=True, slots=True)
class Scope:
    """Which paths a watch covers."""

    roots: tuple[str, ...]
    recursive: bool = True
    skip_dirs: frozenset[str] = DEFAULT_SKIP_DIRS

    def covers(self, path: str) -> bool:
        if is_temp_name(os.path.basename(path)):
            return False
        for root in self.roots:
            if path == root:
                return True
            prefix = root if root.endswith(os.sep) else root + os.sep
            if not path.startswith(prefix):
                continue
            rest = path[len(prefix) :].split(os.sep)
            if not self.recursive and len(rest) > 1:
                continue
            if any(part in self.skip_dirs for part in rest[:-1]) or (
                rest[-1] in self.skip_dirs and os.path.isdir(path)
            ):
                continue
            return True
        return False


def scan(scope: Scope, *, max_entries: int = 100_000) -> tuple[Snapshot, bool]:
    """Stamp every path the scope covers; returns the snapshot and whether it was cut short."""
    snap: Snapshot = {}
    for root in scope.roots:
        if _scan_into(snap, root, scope, max_entries, top=True):
            return snap, True
    return snap, False


def _scan_into(snap: Snapshot, start: str, scope: Scope, max_entries: int, *, top: bool) -> bool:
    """Add `start` and what lies below it to `snap`; True if `max_entries` was reached."""
    try:
        st = os.lstat(start)
    except OSError:
        return False
    snap[start] = stamp_of(st)
    if not st_mod.S_ISDIR(st.st_mode) or (not top and not scope.recursive):
        return False
    stack = [start]
    while stack:
        folder = stack.pop()
        try:
            with os.scandir(folder) as it:
                entries = list(it)
        except OSError:
            continue  # vanished or unreadable: what is gone is reported as gone
        for entry in entries:
            if is_temp_name(entry.name):
                continue
            try:
                est = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            is_dir = st_mod.S_ISDIR(est.st_mode)
            if is_dir and entry.name in scope.skip_dirs:
                continue
            if len(snap) >= max_entries:
                return True
            snap[entry.path] = stamp_of(est)
            if is_dir and scope.recursive:
                stack.append(entry.path)
    return False


def diff(old: Snapshot, new: Snapshot) -> list[Change]:
    """What changed from `old` to `new`, sorted by path."""
    changes: list[Change] = []
    for path, stamp in new.items():
        before = old.get(path)
        if before is None:
            changes.append((path, "added"))
        elif before != stamp:  # two folders always compare equal: their stamp is constant
            changes.append((path, "modified"))
    changes.extend((path, "deleted") for path in old.keys() - new.keys())
    changes.sort()
    return changes


class Reconciler:
    """Applies reported paths to a snapshot, producing the exact changes."""

    def __init__(
        self,
        scope: Scope,
        snapshot: Snapshot,
        *,
        max_entries: int = 100_000,
        lstat: Callable[[str], os.stat_result] = os.lstat,
    ) -> None:
        self.scope = scope
        self.snapshot = snapshot
        self.max_entries = max_entries
        self.truncated = False
        self._lstat = lstat

    def apply(self, reported: Iterable[tuple[str, bool]]) -> list[Change]:
        """`reported` holds (path, the watcher called it modified); returns the changes."""
        said_modified: dict[str, bool] = {}
        for path, modified in reported:
            said_modified[path] = said_modified.get(path, False) or modified
        changes: list[Change] = []
        for path in sorted(said_modified):
            if self.scope.covers(path):
                self._one(path, said_modified[path], changes)
        return changes

    def _one(self, path: str, said_modified: bool, out: list[Change]) -> None:
        snap = self.snapshot
        try:
            st: os.stat_result | None = self._lstat(path)
        except OSError:
            st = None
        before = snap.get(path)
        if st is None:
            if before is not None:
                self._forget(path, before, out)
            return
        stamp = stamp_of(st)
        if before is None:
            snap[path] = stamp
            out.append((path, "added"))
            if stamp[4] == "directory" and self.scope.recursive:
                self._adopt_tree(path, out)
        elif before[4] == "directory" and stamp[4] != "directory":
            self._forget(path, before, out)
            snap[path] = stamp
            out.append((path, "added"))
        elif stamp[4] == "directory":
            if before[4] != "directory":
                snap[path] = stamp
                out.append((path, "modified"))
                self._adopt_tree(path, out)
        elif stamp != before or said_modified:
            snap[path] = stamp
            out.append((path, "modified"))

    def _forget(self, path: str, before: Stamp, out: list[Change]) -> None:
        snap = self.snapshot
        del snap[path]
        if before[4] == "directory":
            prefix = path + os.sep
            for child in sorted((p for p in snap if p.startswith(prefix)), reverse=True):
                del snap[child]
                out.append((child, "deleted"))
        out.append((path, "deleted"))

    def _adopt_tree(self, folder: str, out: list[Change]) -> None:
        found: Snapshot = {}
        budget = self.max_entries - len(self.snapshot) + 1
        if _scan_into(found, folder, self.scope, max(budget, 1), top=False):
            self.truncated = True
        for path in sorted(found):
            if path not in self.snapshot:
                self.snapshot[path] = found[path]
                out.append((path, "added"))


__all__ = [
    "DEFAULT_SKIP_DIRS",
    "Change",
    "Reconciler",
    "Scope",
    "Snapshot",
    "Stamp",
    "diff",
    "scan",
    "stamp_of",
]
