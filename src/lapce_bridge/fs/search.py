"""`fs/search`: literal or regex search over file contents, paged, bounded in time and size.

Theory of operation: one worker thread walks the folder depth first, entries sorted by name,
and searches each file's bytes whole: a file is opened, read in 64 KiB blocks (most source
files in one `read`), and searched with `bytes.find` (a literal, case-sensitive) or one
compiled bytes regex (everything else, `re.MULTILINE` so `^` and `$` are per line). Only a
hit costs Python work: the line around it is cut out, its number counted, and the search
goes on after that line (one result per matching line, as `grep -n` prints). Searching bytes
spares decoding 100 MB that mostly does not match; a pattern with non-ASCII characters is
encoded as UTF-8, so it matches UTF-8 text exactly (`\\w` and case folding are ASCII).

Skipped: `.git`, folders and files `.gitignore` excludes (unless `gitignore: false`),
symbolic links (their targets inside the workspace are found under their own names), our
temporary files, files with a NUL byte in their first 8 KiB (binary, git's own test), files
over `MAX_FILE_BYTES`, and unreadable files (counted in `filesSkipped`, never fatal).

Paging: the walk's order is the order of paths compared component by component, so a
position is a (path, line) pair. A page ends after `maxResults` lines or at the deadline
(`timeoutMs`, on the injected clock); its `nextCursor` encodes the position and a digest of
the query, and the next request skips everything up to it without reading it: whole folders
before it are pruned by name. A cursor from a different query is refused. Results are
bounded: at most 10,000 lines a page, each cut to `MAX_LINE_CHARS` characters.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import re
import stat as st_mod
import threading
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import msgspec

from lapce_bridge.core.clock import Clock
from lapce_bridge.core.errors import InvalidParams
from lapce_bridge.fs.atomic import is_temp_name
from lapce_bridge.fs.files import FileStore
from lapce_bridge.fs.ignore import ALWAYS_IGNORED, Globs, IgnoreRules
from lapce_bridge.fs.listing import fs_error
from lapce_bridge.fs.ops import FsOps
from lapce_bridge.fs.paths import OpensBeneath
from lapce_bridge.rpc import Params
from lapce_bridge.schema.files import SearchMatch, SearchParams, SearchResult
from lapce_bridge.schema.validate import convert, refuse

METHOD = "fs/search"
BLOCK = 64 * 1024
BINARY_PROBE = 8192
MAX_FILE_BYTES = 64 * 1024 * 1024
MAX_LINE_CHARS = 500
BATCH = 64  # files a worker searches per task (the clock is read between batches)
WORKERS = min(2, os.cpu_count() or 1)
_O_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | getattr(os, "O_NOCTTY", 0)


@dataclass(frozen=True, slots=True)
class Finder:
    """How one query finds its matches. Exactly one of `literal` (searched with `in` and
    `bytes.find`, on the lowered bytes when `lower`) and `regex` is set. Lowering keeps every
    byte where it is, so a position found in the lowered bytes is one in the file."""

    literal: bytes | None = None
    lower: bool = False
    regex: re.Pattern[bytes] | None = None

    def find(self, hay: bytes, pos: int) -> int:
        """Where the next match starts at or after `pos`, or -1."""
        if self.literal is not None:
            return hay.find(self.literal, pos)
        assert self.regex is not None
        m = self.regex.search(hay, pos)
        return -1 if m is None else m.start()


def compile_finder(query: str, *, regex: bool, case_sensitive: bool) -> Finder:
    """How to find `query`, or InvalidParams for a bad regular expression."""
    needle = query.encode("utf-8")
    if not regex and case_sensitive:
        return Finder(literal=needle)
    if not regex and needle.isascii():
        # bytes.lower() and find: about 5x faster than re.IGNORECASE on the same bytes.
        return Finder(literal=needle.lower(), lower=True)
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


@dataclass(slots=True)
class Page:
    matches: list[SearchMatch] = field(default_factory=list)
    searched: int = 0
    skipped: int = 0
    stop_at: tuple[str, int] | None = None  # the position to resume from, if cut short
    timed_out: bool = False


Job = tuple[str, str, int]  # (real path, workspace-relative path, resume after this line)
SKIPPED: list[SearchMatch] = []  # the marker (by identity) of a file that was not searched
Batch = tuple[int, list[tuple[str, list[SearchMatch]]]]
"""A searched batch: how many files it held, and the (path, matches) of those that matched
or were skipped (SKIPPED), in order."""


def matching_lines(
    data: bytes, hay: bytes, rel: str, after: int, finder: Finder, cap: int
) -> list[SearchMatch]:
    """The lines of `data` (searched as `hay`) that match, past line `after`, at most `cap`."""
    found: list[SearchMatch] = []
    line = 1
    counted = 0
    end = len(data)
    pos = finder.find(hay, 0)
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


class Scan:
    """One page of a search, run synchronously (in a worker thread) from `run()`.

    The walk happens here, in order; files are searched in batches by `workers` threads
    (open and read release the GIL, so a second thread reads while the first searches), and
    their answers are merged back in walk order, so paging sees one sequence whatever the
    threads did.
    """

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
        workers: int = WORKERS,
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
        self.workers = workers
        self.page = Page()
        self._resume = None if resume is None else (tuple(resume[0].split("/")), resume[1])

    def run(self, rel: str, real: str, is_dir: bool) -> Page:
        if is_dir:
            jobs = self._walk(real, "" if rel == "." else rel + "/", self.rules)
        else:
            after = self._resume_line(rel)
            jobs = iter([(real, rel, after)] if after >= 0 else [])
        with ThreadPoolExecutor(self.workers, thread_name_prefix="fs-search") as pool:
            window: deque[tuple[str, Future[Batch]]] = deque()
            batches = _batches(jobs, self.stop)
            try:
                for batch in batches:
                    window.append((batch[0][1], pool.submit(self._batch, batch)))
                    if len(window) > 2 * self.workers and not self._take(window):
                        return self.page
                while window:
                    if not self._take(window):
                        return self.page
            finally:
                for _, future in window:
                    future.cancel()
        return self.page

    def _take(self, window: deque[tuple[str, Future[Batch]]]) -> bool:
        """Merge the oldest batch; False once the page is complete."""
        first, future = window[0]
        if self.stop.is_set() or self.clock.now() >= self.deadline:
            self.page.timed_out = not self.stop.is_set()
            self.page.stop_at = (first, 0)
            return False
        window.popleft()
        return self._merge(future.result())

    def _merge(self, batch: Batch) -> bool:
        page = self.page
        files, found = batch
        page.searched += files
        for _, matches in found:
            if matches is SKIPPED:
                page.searched -= 1
                page.skipped += 1
                continue
            for match in matches:
                if len(page.matches) >= self.max_results:
                    page.stop_at = (match.path, match.line - 1)
                    return False
                page.matches.append(match)
        return True

    def _batch(self, jobs: list[Job]) -> Batch:
        """Search a batch of files: the hot loop, so the common case (no match) costs an
        open, one read, a close and one `in` or regex search, and no Python call beyond."""
        finder = self.finder
        literal, lower, regex = finder.literal, finder.lower, finder.regex
        probe = regex.search if regex is not None else None
        ops = self.ops
        open_, read, close = ops.open, ops.read, ops.close
        cap = self.max_results + 1
        found: list[tuple[str, list[SearchMatch]]] = []
        for real, rel, after in jobs:
            try:
                fd = open_(real, _O_FLAGS)
            except OSError:
                found.append((rel, SKIPPED))
                continue
            try:
                data: bytes | None = read(fd, BLOCK)
                if data is not None and len(data) == BLOCK:
                    data = read_rest(fd, data, ops)
            except OSError:
                data = None
            finally:
                try:
                    close(fd)
                except OSError:
                    pass
            if data is None:
                found.append((rel, SKIPPED))
                continue
            hay = data.lower() if lower else data
            if probe is None:
                if literal not in hay:  # type: ignore[operator]
                    continue
            elif probe(hay) is None:
                continue
            if data.find(b"\0", 0, BINARY_PROBE) >= 0:
                found.append((rel, SKIPPED))
                continue
            found.append((rel, matching_lines(data, hay, rel, after, finder, cap)))
            if self.stop.is_set():
                break
        return len(jobs), found

    def _resume_line(self, rel: str) -> int:
        resume = self._resume
        if resume is None:
            return 0
        parts = tuple(rel.split("/"))
        if parts < resume[0]:
            return -1  # before the cursor: already searched
        return resume[1] if parts == resume[0] else 0

    def _walk(self, real: str, prefix: str, rules: IgnoreRules | None) -> Iterator[Job]:
        """The files to search below `real` (workspace-relative `prefix`, '' or ending in
        '/'), in order, each with the line to resume after."""
        try:
            entries = self.ops.scandir(real)
        except OSError:
            self.page.skipped += 1
            return
        entries.sort(key=_name)
        resume = self._resume
        for entry in entries:
            name = entry.name
            rel = prefix + name
            try:
                is_dir = entry.is_dir(follow_symlinks=False)
                if not is_dir and not entry.is_file(follow_symlinks=False):
                    continue  # symlinks, sockets, fifos, devices
            except OSError:
                continue
            after = 0
            if resume is not None:
                parts = tuple(rel.split("/"))
                if is_dir:
                    if parts < resume[0][: len(parts)]:
                        continue  # the whole folder lies before the cursor
                elif parts < resume[0]:
                    continue
                elif parts == resume[0]:
                    after = resume[1]
            if is_dir and name in ALWAYS_IGNORED:
                continue
            if rules is not None and rules.ignored(rel, is_dir=is_dir):
                continue
            if self.exclude is not None and self.exclude.matches(rel, is_dir=is_dir):
                continue
            if is_dir:
                inner = rules.descend(entry.path, rel) if rules is not None else None
                yield from self._walk(entry.path, rel + "/", inner)
            elif not is_temp_name(name) and (
                self.include is None or self.include.matches(rel, is_dir=False)
            ):
                yield entry.path, rel, after


def _batches(jobs: Iterator[Job], stop: threading.Event) -> Iterator[list[Job]]:
    batch: list[Job] = []
    for job in jobs:
        batch.append(job)
        if len(batch) >= BATCH:
            yield batch
            batch = []
            if stop.is_set():
                return
    if batch:
        yield batch


def _name(entry: os.DirEntry[str]) -> str:
    return entry.name


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
        rules = IgnoreRules.for_folder(workspace.root, rel if is_dir else _parent(rel))
        scan = Scan(
            finder=finder,
            ops=OpensBeneath(workspace, store.ops),  # files are read beneath the root
            rules=rules if p.gitignore else None,
            include=include,
            exclude=exclude,
            resume=resume,
            max_results=p.max_results,
            deadline=clock.now() + p.timeout_ms / 1000,
            clock=clock,
            stop=stop,
        )
        return scan.run(rel, real, is_dir)

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
