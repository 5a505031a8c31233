""".gitignore rules for walks over the workspace (`fs/search`, `fs/tree`).

Theory of operation: git reads a `.gitignore` in every folder, each pattern relative to the
folder that holds it, and a deeper file overrides a shallower one (`!keep.log` below undoes
`*.log` above). `IgnoreRules` is that stack for one folder: a walk calls `descend` when it
enters a subfolder (which reads the subfolder's `.gitignore`, if any) and `ignored` for each
entry; an ignored folder is pruned, so nothing below it is looked at, as git does.

Patterns are pathspec's `GitIgnoreSpec` (the reference implementation of git's rules). A
file without negations is matched with one combined regular expression, about 0.3 us a path
instead of 3 us: on a walk of 10,000 files the difference is the whole budget of a search.
The `.git` folder itself is always ignored (git never lists it). Unreadable `.gitignore`
files are treated as empty (git warns and goes on).
"""

from __future__ import annotations

import os
import re

from pathspec import GitIgnoreSpec

GITIGNORE = ".gitignore"
ALWAYS_IGNORED = frozenset({".git"})
_MAX_GITIGNORE_BYTES = 1 << 20
# O_NONBLOCK: a FIFO named .gitignore must not block a walk.
_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY


class _Matcher:
    """One `.gitignore` file's patterns: `check(path)` is True (ignored), False (re-included
    by a negation) or None (no pattern matched). Folder paths end with '/'."""

    __slots__ = ("_combined", "_spec")

    def __init__(self, lines: list[str]) -> None:
        spec = GitIgnoreSpec.from_lines(lines)
        active = [p for p in spec.patterns if p.include is not None]
        self._spec = spec
        self._combined: re.Pattern[str] | None = None
        regexes = [getattr(p, "regex", None) for p in active]
        if active and all(p.include for p in active) and all(r is not None for r in regexes):
            # pathspec names a group in every pattern; one alternation needs them anonymous.
            parts = [r.pattern.replace("(?P<ps_d>", "(?:") for r in regexes if r is not None]
            try:
                self._combined = re.compile("|".join(f"(?:{part})" for part in parts))
            except re.error:
                self._combined = None
        elif not active:
            self._combined = re.compile(r"(?!)")  # comments and blank lines only

    def check(self, path: str) -> bool | None:
        combined = self._combined
        if combined is not None:
            return True if combined.match(path) is not None else None
        return self._spec.check_file(path).include


class IgnoreRules:
    """The `.gitignore` files that apply inside one folder, from the walk's root down."""

    __slots__ = ("_layers",)

    def __init__(self, layers: tuple[tuple[str, _Matcher], ...] = ()) -> None:
        self._layers = layers

    @classmethod
    def for_folder(cls, root: str, rel: str) -> IgnoreRules:
        """The rules in force in `rel` (workspace-relative, '.' for the root) under `root`."""
        rules = cls().descend(root, ".")
        if rel in (".", ""):
            return rules
        walked = ""
        for part in rel.split("/"):
            walked = f"{walked}{part}/"
            rules = rules.descend(os.path.join(root, walked), walked[:-1])
        return rules

    def descend(self, real: str, rel: str) -> IgnoreRules:
        """The rules for the subfolder `real` (workspace-relative `rel`)."""
        return self._with(_read_lines(os.path.join(real, GITIGNORE)), rel)

    def descend_at(self, dir_fd: int, rel: str) -> IgnoreRules:
        """The rules for the subfolder open as `dir_fd` (workspace-relative `rel`): its
        `.gitignore` read through the descriptor, so a walk by descriptors reads the one in
        the folder it is in, whatever was swapped along the path meanwhile."""
        return self._with(_read_lines(GITIGNORE, dir_fd), rel)

    def _with(self, lines: list[str] | None, rel: str) -> IgnoreRules:
        if lines is None:
            return self
        base = "" if rel in (".", "") else rel + "/"
        return IgnoreRules((*self._layers, (base, _Matcher(lines))))

    def ignored(self, rel: str, *, is_dir: bool) -> bool:
        """Whether the workspace-relative `rel` is ignored (folders: pruned with their content)."""
        name = rel.rpartition("/")[2]
        if name in ALWAYS_IGNORED:
            return True
        path = rel + "/" if is_dir else rel
        for base, matcher in reversed(self._layers):
            if base and not path.startswith(base):
                continue
            verdict = matcher.check(path[len(base) :])
            if verdict is not None:
                return verdict
        return False

    @property
    def empty(self) -> bool:
        return not self._layers


class Globs:
    """Glob patterns with .gitignore syntax (`*.py` at any depth, `src/**/*.ts`, `build/`)."""

    __slots__ = ("_matcher",)

    def __init__(self, patterns: list[str]) -> None:
        self._matcher = _Matcher(patterns)

    def matches(self, rel: str, *, is_dir: bool) -> bool:
        return self._matcher.check(rel + "/" if is_dir else rel) is True


def _read_lines(path: str, dir_fd: int | None = None) -> list[str] | None:
    try:
        fd = os.open(path, _FLAGS, dir_fd=dir_fd)
    except OSError:
        return None
    try:
        with open(fd, "rb") as f:
            raw = f.read(_MAX_GITIGNORE_BYTES)
    except OSError:
        return None
    return raw.decode("utf-8", "replace").splitlines()


__all__ = ["ALWAYS_IGNORED", "GITIGNORE", "Globs", "IgnoreRules"]
