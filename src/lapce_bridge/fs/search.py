"""`fs/search`: literal or regex search over file contents, paged, bounded in time and size.

Theory of operation: one worker thread walks the folder depth first, entries sorted by name,
through folder descriptors: the search's folder is opened beneath the workspace root in one
step (`Workspace.open`, openat2), and every folder and file below it is opened relative to
its parent's descriptor by its bare name with `O_NOFOLLOW`. A name holds no `/` and a
symlink in its place fails to open, so nothing the walk reaches can lie outside the folder it
started in, whatever is swapped meanwhile; and the kernel resolves one component per open,
not the whole path. Each file is read whole (one `read` for most source files) and searched
as bytes: a literal is ruled out by its rarest byte first (one `memchr`, about ten times
faster than a substring search of the same bytes: most files hold no match), then found
through that byte (`Finder`); a regex is one compiled bytes pattern with `re.MULTILINE`. Only
a hit costs
Python work: the line around it is cut out, its number counted, and the search goes on after
that line (one result per matching line, as `grep -n` prints). Searching bytes spares
decoding 100 MB that mostly does not match; a pattern with non-ASCII characters is encoded as
UTF-8, so it matches UTF-8 text exactly (`\\w` and case folding are ASCII).

One worker thread (`Scan`) walks, reads and searches: it lists folders, filters names,
reads the clock, and reads and searches each file where the walk meets it. Per file the work
is three system calls (open, read, close) and a `memchr`. Those calls are most of a search's
time, and threads cannot overlap them in Python (two walking threads spent more on handing
the GIL over than they saved: 107-111 ms against 78 in one, on two cores), so a large
folder's walk is shared with a forked copy of this process (`fs.fanout`): the folder's
entries (and, while they hold fewer than `MIN_UNITS` folders, their subfolders' entries;
and a folder holding more subfolders than all the others together, its entries: one folder
holding most of the tree must not go whole to one process) become units numbered in the
walk's order; once this process has searched `SPLIT_AFTER` files alone (a small search
never forks) the child takes units from the same queue, each unit's matches and counts
kept apart, and the pages are merged in unit order into exactly the page one process would
give (`Scan._merge`: a page full in one unit caps the units after it; running out of time
in either halts both). The child walks the same folders by
the same descriptors, so confinement is unchanged.

Skipped: `.git`, folders and files `.gitignore` excludes (unless `gitignore: false`),
symbolic links (their targets inside the workspace are found under their own names), our
temporary files, files with a NUL byte in their first 8 KiB (binary, git's own test), files
over `MAX_FILE_BYTES`, and unreadable files (counted in `filesSkipped`, never fatal).

Paging: the walk's order is the order of paths compared component by component, so a
position is a (path, line) pair. A page ends after `maxResults` lines or at the deadline
(`timeoutMs`, on the injected clock, read every `CHECK_EVERY` files); its `nextCursor`
encodes the position and a digest of the query, and the next request skips everything up to
it without reading it: whole folders before it are pruned by name. A cursor from a
different query is refused. Results are bounded: at most 10,000 lines a page, each cut to
`MAX_LINE_CHARS` characters.
"""

from __future__ import annotations

import asyncio
import base64
import bisect
import hashlib
import operator
import os
import re
import stat as st_mod
import threading
from dataclasses import dataclass, field

import msgspec

from lapce_bridge.core.clock import Clock
from lapce_bridge.core.errors import InvalidParams
from lapce_bridge.fs.atomic import TEMP_PREFIX, is_temp_name
from lapce_bridge.fs.fanout import MAX_UNITS, Fanout
from lapce_bridge.fs.files import FileStore
from lapce_bridge.fs.ignore import ALWAYS_IGNORED, Globs, IgnoreRules
from lapce_bridge.fs.listing import fs_error
from lapce_bridge.fs.ops import FsOps
from lapce_bridge.rpc import Params
from lapce_bridge.schema.files import SearchMatch, SearchParams, SearchResult
from lapce_bridge.schema.validate import convert, refuse

METHOD = "fs/search"
BLOCK = 64 * 1024
BINARY_PROBE = 8192
MAX_FILE_BYTES = 64 * 1024 * 1024
MAX_LINE_CHARS = 500
CHECK_EVERY = 64  # files searched between two looks at the clock and the stop flag
SPLIT_AFTER = 256  # files a walk searches alone before it shares the rest with a child
EXPAND_LEVELS = 2  # levels of folders opened to cut a walk into units
MIN_UNITS = 16  # folders among the units that end the expansion
MAX_OPEN = 64  # folders held open for the units
# O_NONBLOCK: a file swapped for a FIFO after it was listed must not block the walk.
FILE_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY
DIR_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_DIRECTORY

# Bytes by how often they occur in source code and prose, most common first (spaces, lower
# case letters, punctuation, digits, then upper case); a byte not listed is rarer than all.
# The needle's byte that comes last here is the one least likely to be in a file.
_BY_FREQUENCY = (
    b" etaoinsrlcdhupmfgy.,_\n()=:;bwv\"'/-kx0123456789>{}<[]#*+\tjqzETSIACRNOLDPMF!&|%$@"
    b"BUGHWVKYXJQZ\\^`~?"
)
_RANK = {byte: rank for rank, byte in enumerate(_BY_FREQUENCY)}


def rarest_byte(needle: bytes) -> int:
    """The byte of `needle` least likely to occur in a file (by `_BY_FREQUENCY`)."""
    return max(needle, key=lambda b: _RANK.get(b, 256))


@dataclass(frozen=True, slots=True)
class Finder:
    """How one query finds its matches. Exactly one of `literal` (searched on the lowered
    bytes when `lower`) and `regex` is set. Lowering keeps every byte where it is, so a
    position found in the lowered bytes is one in the file. `rare` holds the bytes (one, or
    a letter's two cases) of which a file must contain one to match at all.

    A literal is found through its rarest byte (`anchor`: that byte, as searched, and where
    it first stands in the literal): a `memchr` to each place the byte occurs, and a compare
    of the literal around it, as grep's Boyer-Moore prefilter does. That is several times
    faster than `bytes.find`'s own search for a literal of a few bytes, whose rare byte
    seldom occurs; where it occurs often (`ANCHOR_MISSES` candidates that were not a
    match), the rest of the search is `bytes.find`'s."""

    literal: bytes | None = None
    lower: bool = False
    regex: re.Pattern[bytes] | None = None
    rare: tuple[bytes, ...] = ()
    anchor: tuple[bytes, int] | None = None

    def find(self, hay: bytes, pos: int) -> int:
        """Where the next match starts at or after `pos`, or -1."""
        literal = self.literal
        if literal is not None:
            if self.anchor is None:
                return hay.find(literal, pos)
            byte, at = self.anchor
            starts = hay.startswith
            seen = hay.find(byte, pos + at)
            for _ in range(ANCHOR_MISSES):
                if seen < 0:
                    return -1
                if starts(literal, seen - at):
                    return seen - at
                seen = hay.find(byte, seen + 1)
            return -1 if seen < 0 else hay.find(literal, seen - at)
        assert self.regex is not None
        m = self.regex.search(hay, pos)
        return -1 if m is None else m.start()


ANCHOR_MISSES = 16  # candidates of the rare byte tried before `bytes.find` takes over


def _anchored(literal: bytes, byte: bytes) -> tuple[bytes, int] | None:
    """`byte` and where it first stands in `literal` (None for a one-byte literal, which
    `bytes.find` searches with `memchr` itself)."""
    return None if len(literal) < 2 else (byte, literal.index(byte))


def compile_finder(query: str, *, regex: bool, case_sensitive: bool) -> Finder:
    """How to find `query`, or InvalidParams for a bad regular expression."""
    needle = query.encode("utf-8")
    if not regex and case_sensitive:
        rare = bytes([rarest_byte(needle)])
        return Finder(literal=needle, rare=(rare,), anchor=_anchored(needle, rare))
    if not regex and needle.isascii():
        # bytes.lower() and find: about 5x faster than re.IGNORECASE on the same bytes.
        rare = bytes([rarest_byte(needle)])
        cases = tuple(dict.fromkeys((rare.lower(), rare.upper())))
        lowered = needle.lower()
        return Finder(
            literal=lowered, lower=True, rare=cases, anchor=_anchored(lowered, rare.lower())
        )
    pattern = needle if regex else re.escape(needle)
    flags = re.MULTILINE | (0 if case_sensitive else re.IGNORECASE)
    try:
        return Finder(regex=re.compile(pattern, flags))
    except re.error as exc:
        at = f" at position {exc.pos}" if exc.pos is not None else ""
        raise InvalidParams(
            f"{METHOD}: query is not a valid regular expression: {exc.msg}{at}",
            data={"parameter": "query", "position": exc.pos},
        ) from None


# A folder's entry the walk searches: name, workspace-relative path, whether it is a file,
# and the line to resume after (0: from the start).
Entry = tuple[str, str, bool, int]


@dataclass(slots=True)
class Page:
    matches: list[SearchMatch] = field(default_factory=list)
    searched: int = 0
    skipped: int = 0
    stop_at: tuple[str, int] | None = None  # the position to resume from, if cut short
    timed_out: bool = False
    # One per file with matches: the index of its first match, and `searched` and `skipped`
    # once it was searched (where a page cut inside that file leaves the counts).
    marks: list[tuple[int, int, int]] = field(default_factory=list)


# A unit of a split walk (`Scan.run(split=True)`): the descriptor of the folder that holds
# it and that folder's ignore rules, then the entry.
Unit = tuple[int, IgnoreRules | None, str, str, bool, int]


class _UnitPage(msgspec.Struct, array_like=True):
    """A unit's page as the child sends it back."""

    unit: int
    matches: list[SearchMatch]
    searched: int
    skipped: int
    marks: list[tuple[int, int, int]]
    stop_at: tuple[str, int] | None
    timed_out: bool


_UNIT_PAGES = msgspec.msgpack.Decoder(list[_UnitPage])


def matching_lines(
    data: bytes, hay: bytes, pos: int, rel: str, after: int, finder: Finder, cap: int
) -> list[SearchMatch]:
    """The lines of `data` (searched as `hay`, its first match at `pos`) that match, past
    line `after`, at most `cap`."""
    found: list[SearchMatch] = []
    line = 1
    counted = 0
    end = len(data)
    while pos >= 0:
        start = data.rfind(b"\n", 0, pos) + 1
        stop = data.find(b"\n", pos)
        if stop < 0:
            stop = end
        line += data.count(b"\n", counted, start)
        counted = start
        if line > after:
            text = data[start:stop].decode("utf-8", "replace")
            if text.endswith("\r"):
                text = text[:-1]
            if len(text) > MAX_LINE_CHARS:
                text = text[:MAX_LINE_CHARS] + "…"
            found.append(SearchMatch(path=rel, line=line, text=text))
            if len(found) >= cap:
                break
        if stop >= end:
            break
        pos = finder.find(hay, stop + 1)
    return found


def read_rest(fd: int, head: bytes, ops: FsOps) -> bytes | None:
    """The rest of a file whose first `read` filled a whole block (None if too large)."""
    info = ops.fstat(fd)
    if not st_mod.S_ISREG(info.st_mode) or info.st_size > MAX_FILE_BYTES:
        return None
    chunks = [head]
    total = len(head)
    while True:
        more = ops.read(fd, max(BLOCK, info.st_size - total + 1))
        if not more:
            return b"".join(chunks)
        chunks.append(more)
        total += len(more)
        if total > MAX_FILE_BYTES:
            return None


def read_whole(fd: int, ops: FsOps) -> bytes | None:
    """A file's content (one `read` for most source files), or None when it cannot be read
    (EAGAIN included: a FIFO swapped in for the file), is too large, or is no longer a
    regular file."""
    try:
        data: bytes = ops.read(fd, BLOCK)
        return read_rest(fd, data, ops) if len(data) == BLOCK else data
    except OSError:
        return None


class _Done(Exception):
    """The page is complete (full, out of time, or stopped): unwinds the walk."""


class _Abandon(Exception):
    """A split walk's unit lies past the cap (the page filled before it): dropped."""


class Scan:
    """One page of a search, run synchronously (in a worker thread) from `run()`.

    The walk lists folders in order, applies the filters, reads the clock every
    `CHECK_EVERY` files and reads and searches each file where the walk meets it: the order
    of the results, paging, the deadline and confinement are the walk's."""

    def __init__(
        self,
        *,
        finder: Finder,
        ops: FsOps,
        rules: IgnoreRules | None,
        include: Globs | None,
        exclude: Globs | None,
        resume: tuple[str, int] | None,
        max_results: int,
        deadline: float,
        clock: Clock,
        stop: threading.Event,
    ) -> None:
        self.finder = finder
        self.ops = ops
        self.include = include
        self.exclude = exclude
        self.max_results = max_results
        self.deadline = deadline
        self.clock = clock
        self.stop = stop
        self.rules = rules
        self.page = Page()
        self._resume = None if resume is None else (tuple(resume[0].split("/")), resume[1])
        self._until_check = 0
        self._before = 0  # matches this process found in the units before the current one
        self._fan: Fanout | None = None
        self._unit = 0
        self._late = False  # the clock ran out while the child worked
        rare = finder.rare
        # A file holding none of these bytes cannot match (one `memchr` each).
        self._first = rare[0] if rare else b""
        self._second = rare[1] if len(rare) > 1 else None

    def run(self, rel: str, fd: int, is_dir: bool, *, split: bool = False) -> Page:
        """Search `fd` (workspace-relative `rel`): a folder's descriptor, or a file's. The
        descriptor stays the caller's. `split`: a large folder's walk is shared with a
        forked child (`_run_split`); the page is the one a walk in one process gives."""
        try:
            if is_dir:
                prefix = "" if rel == "." else rel + "/"
                if split:
                    return self._run_split(fd, prefix)
                self._walk(fd, prefix, self.rules)
            else:
                after = self._resume_line(rel)
                if after >= 0:
                    self._check(rel, after)
                    self._search(read_whole(fd, self.ops), rel, after)
        except _Done:
            pass
        return self.page

    def _check(self, rel: str, after: int) -> None:
        """Stop here (before `rel`) when out of time or stopped (in a split walk: also when
        the other process halted, or drop the unit when it lies past the cap)."""
        self._until_check = CHECK_EVERY
        stopped = self.stop.is_set()
        fan = self._fan
        if fan is not None:
            if self._unit > fan.cap:
                raise _Abandon
            stopped = stopped or fan.halted
        if stopped or self.clock.now() >= self.deadline:
            self.page.timed_out = not stopped
            self.page.stop_at = (rel, after)
            raise _Done

    def _search(self, data: bytes | None, rel: str, after: int) -> None:
        """Search one file's content and add its matching lines to the page; cut the page
        at the first line that does not fit (the file counts as searched)."""
        page = self.page
        if data is None:
            page.skipped += 1  # unreadable, too large, or no longer a regular file
            return
        finder = self.finder
        hay = data.lower() if finder.lower else data
        first = finder.find(hay, 0)
        if first < 0:
            page.searched += 1
            return
        if data.find(b"\0", 0, BINARY_PROBE) >= 0:
            page.skipped += 1
            return
        page.searched += 1
        room = self.max_results - self._before - len(page.matches)
        found = matching_lines(data, hay, first, rel, after, finder, room + 1)
        if found:
            page.marks.append((len(page.matches), page.searched, page.skipped))
        if len(found) > room:
            page.matches.extend(found[:room])
            cut = found[room]
            page.stop_at = (cut.path, cut.line - 1)
            raise _Done
        page.matches.extend(found)

    def _resume_line(self, rel: str) -> int:
        resume = self._resume
        if resume is None:
            return 0
        parts = tuple(rel.split("/"))
        if parts < resume[0]:
            return -1  # before the cursor: already searched
        return resume[1] if parts == resume[0] else 0

    def _run_split(self, dir_fd: int, prefix: str) -> Page:
        """The walk of the folder open as `dir_fd`, cut into units (`_units`) that this
        process takes in order and, once it has searched `SPLIT_AFTER` files with units
        left, shares with a forked child (`fs.fanout`); the two pages are merged into the
        page one process would give (`_merge`). A failed child costs a second walk here."""
        opened: list[int] = []
        try:
            units = self._units(dir_fd, prefix, opened)
            if units is None:
                self._walk(dir_fd, prefix, self.rules)
                return self.page
            fan = Fanout(len(units))
            try:
                mine = self._drain(units, fan, [dir_fd, *opened])
                theirs = fan.collect(self._should_stop) if fan.spawned else b""
            finally:
                fan.close()
            merged = None if theirs is None else self._merge(len(units), mine, theirs)
            if merged is None:  # the child failed: the whole walk again, here
                self.page, self._fan, self._before, self._until_check = Page(), None, 0, 0
                self._walk(dir_fd, prefix, self.rules)
                return self.page
            return merged
        finally:
            for fd in opened:
                self.ops.close(fd)

    def _units(self, dir_fd: int, prefix: str, opened: list[int]) -> list[Unit] | None:
        """The folder's entries as units, its subfolders opened and replaced by their own
        entries (up to `EXPAND_LEVELS` levels) while there are fewer than `MIN_UNITS`
        folders among them; `opened` gets the descriptors opened. None when there is
        nothing to share (or too much for the queue)."""
        rules = self.rules
        try:
            listed = self._entries(dir_fd, prefix, rules)
        except OSError:
            return None
        units: list[Unit] = [(dir_fd, rules, *entry) for entry in listed]
        for _ in range(EXPAND_LEVELS):
            folders = sum(1 for unit in units if not unit[4])
            if folders == 0 or folders >= MIN_UNITS or len(opened) + folders > MAX_OPEN:
                break
            units = [inner for unit in units for inner in self._expand(unit, opened)]
        units = self._expand_largest(units, opened)
        return units if 2 <= len(units) <= MAX_UNITS else None

    def _expand_largest(self, units: list[Unit], opened: list[int]) -> list[Unit]:
        """`units` with each folder that holds more subfolders than all the other folder
        units together replaced by its entries, the largest first, while descriptors and
        the queue allow: a tree whose one folder holds most of it (a virtualenv's
        `site-packages`, a monorepo's `packages/`) would otherwise go whole to one process
        while the other idles. A folder's subfolders are counted by its link count (two
        more than its subfolders on ext4, xfs and tmpfs; where it is always 1, as on btrfs,
        nothing is expanded), one `stat` per folder unit."""
        counted: dict[tuple[int, str], int] = {}
        while len(opened) < MAX_OPEN:
            folders: list[tuple[int, int]] = []  # (subfolders, index)
            for i, (dir_fd, _, name, _, is_file, _) in enumerate(units):
                if is_file:
                    continue
                key = (dir_fd, name)
                if key not in counted:
                    try:
                        links = self.ops.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_nlink
                    except OSError:
                        links = 0
                    counted[key] = links - 2
                folders.append((counted[key], i))
            if not folders:
                break
            most, i = max(folders)
            if most <= len(folders) - 1:
                break
            held = len(opened)
            inner = self._expand(units[i], opened)
            if len(opened) == held or len(units) - 1 + len(inner) > MAX_UNITS:
                if len(opened) > held:
                    self.ops.close(opened.pop())
                break
            units = [*units[:i], *inner, *units[i + 1 :]]
        return units

    def _expand(self, unit: Unit, opened: list[int]) -> list[Unit]:
        """A folder unit's entries as units (the unit itself when it is a file or its folder
        cannot be opened or listed: walking it then counts the failure as a walk would)."""
        dir_fd, rules, name, rel, is_file, _ = unit
        if is_file:
            return [unit]
        try:
            sub = self.ops.open(name, DIR_FLAGS, dir_fd=dir_fd)
        except OSError:
            return [unit]
        try:
            inner = rules.descend_at(sub, rel) if rules is not None else None
            listed = self._entries(sub, rel + "/", inner)
        except OSError:
            self.ops.close(sub)
            return [unit]
        opened.append(sub)
        return [(sub, inner, *entry) for entry in listed]

    def _drain(self, units: list[Unit], fan: Fanout, keep: list[int]) -> list[tuple[int, Page]]:
        """Take units from `fan` and search each into a page of its own, until the queue
        is empty, the page is full, or time is out; the parent forks the child (which runs
        this too) once it has searched `SPLIT_AFTER` files with two units or more left."""
        self._fan = fan
        pages: list[tuple[int, Page]] = []
        files = 0
        while True:
            if not fan.spawned and files >= SPLIT_AFTER and fan.units - fan.taken >= 2:
                fan.spawn(lambda: self._child(units, fan), keep)
            unit = fan.take()
            if unit is None:
                break
            self._unit = unit
            page = self.page = Page()
            dir_fd, rules, name, rel, is_file, after = units[unit]
            try:
                self._search_listed(dir_fd, [(name, rel, is_file, after)], rules)
            except _Abandon:
                break
            except _Done:
                pages.append((unit, page))
                if page.timed_out or self.stop.is_set() or fan.halted:
                    fan.halt()
                else:
                    fan.fill(unit)  # full: no unit after this one is needed
                break
            pages.append((unit, page))
            self._before += len(page.matches)
            files += page.searched + page.skipped
        return pages

    def _child(self, units: list[Unit], fan: Fanout) -> bytes:
        """What the forked child does: its share of the units, sent back as bytes."""
        self._before = self._until_check = 0
        pages = self._drain(units, fan, [])
        return msgspec.msgpack.encode(
            [
                _UnitPage(u, p.matches, p.searched, p.skipped, p.marks, p.stop_at, p.timed_out)
                for u, p in pages
            ]
        )

    def _should_stop(self) -> bool:
        """Whether the child must be halted (asked while the parent waits for it)."""
        if self.stop.is_set():
            return True
        self._late = self.clock.now() >= self.deadline
        return self._late

    def _merge(self, count: int, mine: list[tuple[int, Page]], theirs: bytes) -> Page | None:
        """The units' pages in order, up to the first that was cut, then cut at
        `max_results` (the counts where a walk in one process would have stopped). None
        when a unit is missing (the child's bytes were lost)."""
        pages = dict(mine)
        if theirs:
            try:
                sent = _UNIT_PAGES.decode(theirs)
            except msgspec.DecodeError:
                return None
            for u in sent:
                pages[u.unit] = Page(
                    u.matches, u.searched, u.skipped, u.stop_at, u.timed_out, u.marks
                )
        out = Page()
        for unit in range(count):
            page = pages.get(unit)
            if page is None:
                return None
            base = len(out.matches)
            out.marks += [(base + i, out.searched + s, out.skipped + k) for i, s, k in page.marks]
            out.matches += page.matches
            out.searched += page.searched
            out.skipped += page.skipped
            if page.stop_at is not None:
                out.stop_at = page.stop_at
                out.timed_out = self._late or any(p.timed_out for p in pages.values())
                break
        if len(out.matches) > self.max_results:
            cut = out.matches[self.max_results]
            starts = [mark[0] for mark in out.marks]
            _, out.searched, out.skipped = out.marks[
                bisect.bisect_right(starts, self.max_results) - 1
            ]
            del out.matches[self.max_results :]
            out.stop_at, out.timed_out = (cut.path, cut.line - 1), False
        return out

    def _entries(self, dir_fd: int, prefix: str, rules: IgnoreRules | None) -> list[Entry]:
        """The entries of the folder open as `dir_fd` (workspace-relative `prefix`, '' or
        ending in '/') the walk searches, in order: the filters applied, everything before
        the cursor left out. OSError when the folder cannot be listed."""
        entries = self.ops.scandir(dir_fd)
        entries.sort(key=_NAME)
        resume = self._resume
        exclude, include = self.exclude, self.include
        filtered = rules is not None or exclude is not None or include is not None
        kept: list[Entry] = []
        for entry in entries:
            name = entry.name
            try:
                is_file = entry.is_file(follow_symlinks=False)
                if not is_file and not entry.is_dir(follow_symlinks=False):
                    continue  # symlinks, sockets, fifos, devices
            except OSError:
                continue
            rel = prefix + name
            after = 0
            if resume is not None:
                parts = tuple(rel.split("/"))
                if not is_file:
                    if parts < resume[0][: len(parts)]:
                        continue  # the whole folder lies before the cursor
                elif parts < resume[0]:
                    continue
                elif parts == resume[0]:
                    after = resume[1]
            if is_file:
                if (name.startswith(TEMP_PREFIX) and is_temp_name(name)) or (
                    filtered
                    and (
                        (rules is not None and rules.ignored(rel, is_dir=False))
                        or (exclude is not None and exclude.matches(rel, is_dir=False))
                        or (include is not None and not include.matches(rel, is_dir=False))
                    )
                ):
                    continue
            elif (
                name in ALWAYS_IGNORED
                or (rules is not None and rules.ignored(rel, is_dir=True))
                or (exclude is not None and exclude.matches(rel, is_dir=True))
            ):
                continue
            kept.append((name, rel, is_file, after))
        return kept

    def _walk(self, dir_fd: int, prefix: str, rules: IgnoreRules | None) -> None:
        """Search the folder open as `dir_fd` (workspace-relative `prefix`), in order."""
        try:
            listed = self._entries(dir_fd, prefix, rules)
        except OSError:
            self.page.skipped += 1
            return
        self._search_listed(dir_fd, listed, rules)

    def _search_listed(self, dir_fd: int, listed: list[Entry], rules: IgnoreRules | None) -> None:
        """Search `listed`, entries of the folder open as `dir_fd`, in order: each file as it
        comes, each folder as it comes. The hot path: for the common file (no match) it is
        one open, one read, one close and one `memchr`, in this one loop with its calls
        bound to locals (a call per file and the lookups in it cost a quarter more CPU)."""
        ops = self.ops
        open_, read, close = ops.open, ops.read, ops.close
        first, second = self._first, self._second
        page = self.page
        for name, rel, is_file, after in listed:
            if not is_file:
                self._folder(dir_fd, name, rel, rules)
                continue
            self._until_check -= 1
            if self._until_check <= 0:
                self._check(rel, after)
            try:
                fd = open_(name, FILE_FLAGS, dir_fd=dir_fd)
            except OSError:
                page.skipped += 1
                continue
            data: bytes | None
            try:
                data = read(fd, BLOCK)
                if len(data) == BLOCK:
                    data = read_rest(fd, data, ops)
            except OSError:
                data = None  # EAGAIN included: a FIFO swapped in for the file
            finally:
                close(fd)
            if (
                data is not None
                and first
                and data.find(first) < 0
                and (second is None or data.find(second) < 0)
            ):
                # Ruled out by one memchr (two for a letter in either case), the common
                # case, without a substring search.
                page.searched += 1
            else:
                self._search(data, rel, after)

    def _folder(self, dir_fd: int, name: str, rel: str, rules: IgnoreRules | None) -> None:
        """Search the folder `name` of the folder open as `dir_fd`."""
        ops = self.ops
        try:
            sub = ops.open(name, DIR_FLAGS, dir_fd=dir_fd)
        except OSError:
            self.page.skipped += 1  # gone, unreadable, or swapped for a symlink
            return
        try:
            inner = rules.descend_at(sub, rel) if rules is not None else None
            self._walk(sub, rel + "/", inner)
        finally:
            ops.close(sub)


_NAME = operator.attrgetter("name")  # a DirEntry's sort key


def _fingerprint(p: SearchParams) -> str:
    key = msgspec.json.encode(
        [p.query, p.regex, p.case_sensitive, p.path, p.include, p.exclude, p.gitignore]
    )
    return hashlib.blake2b(key, digest_size=8).hexdigest()


def encode_cursor(p: SearchParams, position: tuple[str, int]) -> str:
    raw = msgspec.json.encode({"v": 1, "q": _fingerprint(p), "p": position[0], "l": position[1]})
    return base64.urlsafe_b64encode(raw).decode("ascii")


def decode_cursor(p: SearchParams, cursor: str) -> tuple[str, int]:
    try:
        raw = msgspec.json.decode(base64.urlsafe_b64decode(cursor.encode("ascii")))
        if type(raw) is not dict or raw.get("v") != 1:
            raise ValueError("not a cursor")
        path, line, digest = raw["p"], raw["l"], raw["q"]
        if type(path) is not str or type(line) is not int or line < 0:
            raise ValueError("not a cursor")
    except (ValueError, KeyError, UnicodeError, msgspec.DecodeError):
        raise refuse(METHOD, "cursor", "is not a cursor this method returned") from None
    if digest != _fingerprint(p):
        raise refuse(METHOD, "cursor", "belongs to a different search (query or filters changed)")
    return path, line


async def search(store: FileStore, params: Params, *, clock: Clock) -> dict[str, object]:
    """The `fs/search` method on `store`'s workspace."""
    p = convert(params, SearchParams, METHOD)
    finder = compile_finder(p.query, regex=p.regex, case_sensitive=p.case_sensitive)
    resume = decode_cursor(p, p.cursor) if p.cursor is not None else None
    workspace = store.workspace
    real = workspace.resolve(p.path)
    rel = workspace.relative(real)
    try:
        info = store.ops.stat(real)
    except OSError as exc:
        raise fs_error(exc, "search", rel) from exc
    is_dir = st_mod.S_ISDIR(info.st_mode)
    include = Globs(p.include) if p.include else None
    exclude = Globs(p.exclude) if p.exclude else None
    stop = threading.Event()

    def run() -> Page:
        if not is_dir and not st_mod.S_ISREG(info.st_mode):
            return Page(skipped=1)  # a FIFO, a socket, a device: not searched, never opened
        rules = IgnoreRules.for_folder(workspace.root, rel if is_dir else _parent(rel))
        # Opened beneath the root in one step; everything below it by name from here.
        try:
            fd = workspace.open(real, DIR_FLAGS if is_dir else FILE_FLAGS, ops=store.ops)
        except OSError as exc:
            raise fs_error(exc, "search", rel) from exc
        scan = Scan(
            finder=finder,
            ops=store.ops,
            rules=rules if p.gitignore else None,
            include=include,
            exclude=exclude,
            resume=resume,
            max_results=p.max_results,
            deadline=clock.now() + p.timeout_ms / 1000,
            clock=clock,
            stop=stop,
        )
        try:
            return scan.run(rel, fd, is_dir, split=True)
        finally:
            store.ops.close(fd)

    try:
        page = await asyncio.to_thread(run)
    except BaseException:
        stop.set()  # a cancelled request stops the thread at its next clock check
        raise
    result = SearchResult(
        matches=page.matches,
        next_cursor=None if page.stop_at is None else encode_cursor(p, page.stop_at),
        complete=page.stop_at is None,
        timed_out=page.timed_out,
        files_searched=page.searched,
        files_skipped=page.skipped,
    )
    return msgspec.to_builtins(result)  # type: ignore[no-any-return]


def _parent(rel: str) -> str:
    head = rel.rpartition("/")[0]
    return head or "."


__all__ = ["Scan", "compile_finder", "decode_cursor", "encode_cursor", "search"]
