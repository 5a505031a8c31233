"""Keyed watches kept on disk, so that one re-sent after a restart reports what changed meanwhile.

Theory of operation: a watch made with an `idempotencyKey` is persisted in the state
directory's private `watches/` folder as two files named by a digest of its key:

- `<digest>.json`, the base: the key, the watch id, the confined roots, `recursive`, the
  last `fs/didChange` seq and the snapshot (path -> stamp, as `fs.snapshot` takes them);
  written whole and atomically (`write_private_file`) after every full scan: the first one,
  each recovery's rescan, and a compaction.
- `<digest>.log`, one JSON line per changed path `[seq, path, stamp or null]`, appended after
  each live batch and before its notification is sent, so that the files always hold at
  least what the client was told.

`load` replays the log over the base: the snapshot as the server last knew it, which a
re-sent `fs/watch` diffs against a fresh scan (`WatcherRecovery.watch(baseline=...)`): every
path added, modified or deleted while nobody watched is reported. Cost, for a huge tree: the
base is O(entries) (about 100 bytes an entry on disk; 100,000 entries, the per-connection
quota, about 11 MB: written in 80-140 ms and read back in 0.5-0.7 s, most of it JSON
parsing, at a load average of 9 on two cores), written only after full scans and read only
when a watch comes back (in a worker thread); a live change
costs one appended line; the log is folded into the base once it has as many lines as the
base has entries (at least 1,000), so the files stay within twice the base. At most
`max_watches` keyed watches are kept (256): saving one more removes the least recently
written. `forget` removes a watch's files (`fs/unwatch`).

Invariants: the files are the server user's alone (0600 in a 0700 folder); a torn last log
line (a kill mid-append) is ignored; a base that cannot be read is treated as absent.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from lapce_bridge.fs.snapshot import Change, Snapshot
from lapce_bridge.private import (
    NotPrivate,
    open_private_dir,
    open_private_file,
    write_private_file,
)

log = logging.getLogger("lapce_bridge.fs.watch")

MIN_LOG_LINES = 1000


@dataclass(slots=True)
class Persisted:
    """One keyed watch as it was last written."""

    key: str
    watch_id: str
    roots: list[str]
    recursive: bool
    seq: int = 0
    snapshot: Snapshot = field(default_factory=dict)


class WatchStore:
    def __init__(self, folder: Path, *, max_watches: int = 256) -> None:
        self.folder = Path(folder)
        self.max_watches = max_watches
        self._fd: int | None = None
        self._log_lines: dict[str, int] = {}

    def _dir(self) -> int:
        if self._fd is None:
            self._fd = open_private_dir(self.folder)
        return self._fd

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    @staticmethod
    def name(key: str) -> str:
        return hashlib.blake2b(key.encode(), digest_size=16).hexdigest()

    def load(self, key: str) -> Persisted | None:
        """The watch saved under `key` with its log replayed, or None."""
        name = self.name(key)
        try:
            base = orjson.loads(self._read(f"{name}.json"))
            persisted = Persisted(
                key=base["key"],
                watch_id=base["watchId"],
                roots=list(base["roots"]),
                recursive=bool(base["recursive"]),
                seq=int(base["seq"]),
                # JSON gives lists; a stamp is compared as a tuple (5 fields, as written).
                snapshot={p: tuple(s) for p, s in base["snapshot"].items()},
            )
        except FileNotFoundError:
            return None
        except (OSError, NotPrivate, ValueError, KeyError, TypeError):
            log.warning("the saved watch for key %r cannot be read; starting it afresh", key)
            return None
        if persisted.key != key:
            return None  # a digest collision: never another key's watch
        lines = 0
        with contextlib.suppress(FileNotFoundError):
            for line in self._read(f"{name}.log").splitlines():
                try:
                    seq, path, stamp = orjson.loads(line)
                except (ValueError, TypeError):
                    break  # a torn last line: the process died mid-append
                lines += 1
                persisted.seq = max(persisted.seq, int(seq))
                if stamp is None:
                    persisted.snapshot.pop(path, None)
                else:
                    persisted.snapshot[path] = tuple(stamp)
        self._log_lines[name] = lines
        return persisted

    def save(self, persisted: Persisted) -> None:
        """Write the whole watch (after a full scan); the log starts empty again."""
        name = self.name(persisted.key)
        body = orjson.dumps(
            {
                "key": persisted.key,
                "watchId": persisted.watch_id,
                "roots": persisted.roots,
                "recursive": persisted.recursive,
                "seq": persisted.seq,
                "snapshot": persisted.snapshot,
            }
        )
        fd = self._dir()
        write_private_file(fd, f"{name}.json", body)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"{name}.log", dir_fd=fd)
        self._log_lines[name] = 0
        self._limit(fd, name)

    def append(self, persisted: Persisted, changes: list[Change], snapshot: Snapshot) -> None:
        """Log what a live batch changed (each path's new stamp, or null when gone); past
        the log's bound the whole watch is written instead."""
        name = self.name(persisted.key)
        lines = self._log_lines.get(name, 0) + len(changes)
        if lines > max(MIN_LOG_LINES, len(snapshot)):
            persisted.snapshot = snapshot
            self.save(persisted)
            return
        body = b"".join(
            orjson.dumps([persisted.seq, path, snapshot.get(path)]) + b"\n" for path, _ in changes
        )
        fd = self._dir()
        out = open_private_file(f"{name}.log", os.O_WRONLY | os.O_APPEND, dir_fd=fd, create=True)
        try:
            os.write(out, body)
        finally:
            os.close(out)
        self._log_lines[name] = lines

    def forget(self, key: str) -> None:
        name = self.name(key)
        fd = self._dir()
        for suffix in (".json", ".log"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name + suffix, dir_fd=fd)
        self._log_lines.pop(name, None)

    def _read(self, name: str) -> bytes:
        fd = open_private_file(name, os.O_RDONLY, dir_fd=self._dir())
        with os.fdopen(fd, "rb") as f:
            return f.read()

    def _limit(self, fd: int, keep: str) -> None:
        """At most `max_watches` saved: the least recently written go first."""
        bases = [n for n in os.listdir(fd) if n.endswith(".json")]
        if len(bases) <= self.max_watches:
            return
        written = sorted(
            bases, key=lambda n: os.stat(n, dir_fd=fd, follow_symlinks=False).st_mtime_ns
        )
        for old in written[: len(bases) - self.max_watches]:
            if old[:-5] == keep:
                continue
            for suffix in (".json", ".log"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(old[:-5] + suffix, dir_fd=fd)


__all__ = ["Persisted", "WatchStore"]
