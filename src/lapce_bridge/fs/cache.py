"""An LRU cache of file contents, bounded in bytes and in entries, validated by file identity.

Theory of operation: entries are keyed by the resolved absolute path and hold the bytes read
together with the identity of the file they came from: `(mtime_ns, ctime_ns, size, inode,
device)` as one `stat` reports them. A reader stats the path and asks `get(path, identity)`;
an entry whose identity differs is stale and is not returned (it stays, so `get_any` can still
serve it as the last known content when the disk fails). Identity catches a rewrite in place
(mtime/ctime/size), an atomic replace (a new inode) and a different mount (device); ctime also
catches `os.utime` resetting the mtime. What no stat can catch is a rewrite of the same size
within one tick of the file system's timestamp clock: the caller marks such an entry `racy`
(written too recently to trust, as git does) and re-reads it instead of serving it.

An entry may also keep its content as the client last received it (the decoded text, or
the base64): a repeated read then skips decoding too. That copy counts against the budget.

Invariants: `bytes` is the sum of the entries' costs (content length plus the size of a kept
rendering) and never exceeds the byte budget after any call; the entry count never exceeds
the entry budget; eviction is least recently used first (a hit moves an entry to the back);
content larger than `max_entry_bytes` is never cached. Only the event loop's thread touches
a cache.
"""

from __future__ import annotations

import os
import sys
from collections import OrderedDict
from dataclasses import dataclass

from lapce_bridge.core.errors import InvalidParams

Identity = tuple[int, int, int, int, int]
"""(mtime_ns, ctime_ns, size, inode, device) of one file version."""


def identity_of(st: os.stat_result) -> Identity:
    return (st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino, st.st_dev)


@dataclass(slots=True)
class CacheEntry:
    path: str
    data: bytes
    identity: Identity
    racy: bool = False
    rendered: tuple[str, str] | None = None  # (encoding, content as sent to a client)
    cost: int = 0  # bytes this entry holds against the budget

    @property
    def mtime_ns(self) -> int:
        return self.identity[0]

    @property
    def size(self) -> int:
        return len(self.data)


@dataclass(frozen=True, slots=True)
class CacheStats:
    hits: int
    misses: int  # no entry for the path
    stale_hits: int  # an entry, but the file has changed since
    evictions: int
    bytes: int
    entries: int
    max_bytes: int
    max_entries: int
    base_max_bytes: int  # the configured budget; `max_bytes` is lower after `resize`


class FileCache:
    __slots__ = (
        "_bytes",
        "_entries",
        "_evictions",
        "_hits",
        "_misses",
        "_stale",
        "base_max_bytes",
        "max_bytes",
        "max_entries",
        "max_entry_bytes",
    )

    def __init__(
        self,
        max_bytes: int = 64 * 1024 * 1024,
        max_entries: int = 4096,
        *,
        max_entry_bytes: int | None = None,
    ) -> None:
        if max_bytes < 0 or max_entries < 0:
            raise InvalidParams("cache budgets must not be negative")
        self.base_max_bytes = max_bytes
        self.max_bytes = max_bytes
        self.max_entries = max_entries
        # One huge file must not push out everything else.
        self.max_entry_bytes = max_bytes // 4 if max_entry_bytes is None else max_entry_bytes
        self._entries: OrderedDict[str, CacheEntry] = OrderedDict()
        self._bytes = 0
        self._hits = 0
        self._misses = 0
        self._stale = 0
        self._evictions = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, path: object) -> bool:
        return path in self._entries

    def get(self, path: str, identity: Identity) -> CacheEntry | None:
        """The entry for `path` if it was read from exactly this file version, and not racy."""
        entry = self._entries.get(path)
        if entry is None:
            self._misses += 1
            return None
        if entry.identity != identity or entry.racy:
            self._stale += 1
            return None
        self._entries.move_to_end(path)
        self._hits += 1
        return entry

    def get_any(self, path: str) -> CacheEntry | None:
        """The last content cached for `path`, however old (the fallback when the disk fails)."""
        return self._entries.get(path)

    def put(
        self, path: str, data: bytes, identity: Identity, *, racy: bool = False
    ) -> CacheEntry | None:
        """Cache `data` as the content of `path` at `identity`; None if it is too large."""
        size = len(data)
        if size > self.max_entry_bytes or size > self.max_bytes or self.max_entries == 0:
            self.invalidate(path)
            return None
        old = self._entries.pop(path, None)
        if old is not None:
            self._bytes -= old.cost
        entry = CacheEntry(path, data, identity, racy, None, size)
        self._entries[path] = entry
        self._bytes += size
        self._evict_to(self.max_bytes, self.max_entries)
        return entry

    def keep_rendered(self, entry: CacheEntry, encoding: str, content: str) -> None:
        """Keep `content` (the entry rendered in `encoding`) with the entry, if it fits."""
        if self._entries.get(entry.path) is not entry:
            return  # replaced or evicted meanwhile
        extra = sys.getsizeof(content)
        if entry.cost + extra > self.max_entry_bytes:
            return
        if entry.rendered is not None:
            self._bytes -= entry.cost - len(entry.data)
            entry.cost = len(entry.data)
        entry.rendered = (encoding, content)
        entry.cost += extra
        self._bytes += extra
        self._evict_to(self.max_bytes, self.max_entries)

    def invalidate(self, path: str) -> bool:
        entry = self._entries.pop(path, None)
        if entry is None:
            return False
        self._bytes -= entry.cost
        return True

    def invalidate_under(self, folder: str) -> int:
        """Drop every entry at or below `folder`; returns how many."""
        prefix = folder.rstrip(os.sep) + os.sep
        doomed = [p for p in self._entries if p == folder or p.startswith(prefix)]
        for p in doomed:
            self.invalidate(p)
        return len(doomed)

    def resize(self, fraction: float) -> int:
        """Set the byte budget to `fraction` of the configured one (1.0 restores it).

        Returns the bytes freed by evicting down to the new budget.
        """
        if not 0.0 <= fraction <= 1.0:
            raise InvalidParams(f"fraction must be within [0, 1], got {fraction}")
        before = self._bytes
        self.max_bytes = int(self.base_max_bytes * fraction)
        self._evict_to(self.max_bytes, self.max_entries)
        return before - self._bytes

    def trim(self, fraction: float) -> int:
        """Drop at least `fraction` of the cached bytes, least recently used first."""
        if not 0.0 <= fraction <= 1.0:
            raise InvalidParams(f"fraction must be within [0, 1], got {fraction}")
        before = self._bytes
        self._evict_to(int(before * (1.0 - fraction)), self.max_entries)
        return before - self._bytes

    def clear(self) -> int:
        """Drop everything; returns the bytes freed."""
        freed = self._bytes
        self._evictions += len(self._entries)
        self._entries.clear()
        self._bytes = 0
        return freed

    def _evict_to(self, max_bytes: int, max_entries: int) -> None:
        entries = self._entries
        while entries and (self._bytes > max_bytes or len(entries) > max_entries):
            _, entry = entries.popitem(last=False)
            self._bytes -= entry.cost
            self._evictions += 1

    def statistics(self) -> CacheStats:
        return CacheStats(
            hits=self._hits,
            misses=self._misses,
            stale_hits=self._stale,
            evictions=self._evictions,
            bytes=self._bytes,
            entries=len(self._entries),
            max_bytes=self.max_bytes,
            max_entries=self.max_entries,
            base_max_bytes=self.base_max_bytes,
        )


__all__ = ["CacheEntry", "CacheStats", "FileCache", "Identity", "identity_of"]
