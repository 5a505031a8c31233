"""The idempotency journal: a request with an `idempotencyKey` runs at most once.

Theory of operation: each key has a row `(method, state, ok, payload)` in memory, and every
change to a row is first appended to a log on disk. Before a keyed request's handler runs, a
`running` record is written; when it ends, a `done` record with the outcome: `ok` and the
result as JSON, or not ok and the JSON-RPC error object. A repeat of the key is answered
from the row (`done`), joins the execution still in progress (that part lives in
`ipc.idempotency`, in memory), or, when the row says `running` but this process is not
running it, gets `OutcomeUnknown`: the server died while it ran, so whether its effect
happened is unknown, and running it again could do it twice. Opening the journal turns every
`running` row left by a previous process into `interrupted` for that reason.

On disk: the journal is a private folder of logs, one per process that wrote to it, named by
when it was opened (`<ns>-<pid>.log`, read oldest first, the last record of a key wins), each
held under an exclusive `flock` by its writer for as long as it runs. A record is one
`pwrite(2)` of a CRC-checked frame: `crc32, length | kind, ok, key length, method length |
key, method, payload`, where a `done` record carries the whole row, so it stands alone.
Reading a log stops at the first record that is short or fails its check (a write cut short
by a crash or a full disk), which keeps a prefix of what was written, never a torn row.

Why not SQLite (which this journal was): each keyed command cost two SQLite commits, about
60-80 us of CPU and a dozen file-lock calls on the request path; a record here is one
system call. A SQLite journal an earlier version left beside this one (`<name>.sqlite3`) is
taken over at open: its rows are written into our log and it is removed.

Durability: a record written survives the process being killed (it is in the kernel's page
cache), which is the failure this guards against; nothing is fsynced (a power loss may drop
the last records, never corrupt the ones before). Requests without a key never touch it.

Several processes: a server restarting while the old one drains (its keyed commands still
finishing) opens the journal beside it. Each writes only its own log; a log whose writer
still holds its lock is read as it stood when opened, and read on from there when a key it
holds is looked up while not `done` (so the old server's late outcome is found). A log whose
writer is gone is adopted: its rows are ours, and pruning rewrites them into our own log.

Bounds: at most `max_entries` finished rows and `max_bytes` of stored outcomes. Past either,
the rows are rewritten into a new log of ours, keeping the newest finished ones up to half of
each bound (so a rewrite is paid once per half-bound of new outcomes, not on every finish)
and every row not finished; the old logs are then removed. Rows still running are never
pruned, nor are rows of a log whose writer still runs (that process prunes its own).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import struct
import time
import zlib
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from lapce_bridge.core.errors import (
    BridgeError,
    Classification,
    ErrorCategory,
    ErrorSeverity,
    ResourceExhausted,
)
from lapce_bridge.private import create_private_file, open_private_dir, open_private_file

logger = logging.getLogger("lapce_bridge.ipc")

JOURNAL_FILE = "idempotency.journal"
MAX_KEY_LENGTH = 256


class OutcomeUnknown(BridgeError):
    """The request was running when the server stopped; whether it took effect is unknown."""

    code = -32603
    default = Classification(ErrorCategory.NETWORK, ErrorSeverity.CRITICAL, False, False)


class EntryState(StrEnum):
    RUNNING = "running"
    DONE = "done"
    INTERRUPTED = "interrupted"


@dataclass(frozen=True, slots=True)
class Entry:
    key: str
    method: str
    state: EntryState
    ok: bool
    payload: bytes  # JSON: the result when ok, else the error object


@dataclass(frozen=True, slots=True)
class JournalStats:
    entries: int
    stored_bytes: int
    interrupted_at_open: int
    pruned: int
    path: str


# -- the record format ----------------------------------------------------------------------
_FRAME = struct.Struct("<II")  # crc32 of the body, length of the body
_BODY = struct.Struct("<BBHH")  # kind, ok, key length, method length; then key, method, payload
_BEGIN, _DONE, _FORGET, _INTERRUPTED = 1, 2, 3, 4
_STATE = {_BEGIN: EntryState.RUNNING, _DONE: EntryState.DONE, _INTERRUPTED: EntryState.INTERRUPTED}
_LOG_SUFFIX = ".log"


def _record(kind: int, key: str, method: str, ok: bool = False, payload: bytes = b"") -> bytes:
    k = key.encode()
    m = method.encode()
    body = _BODY.pack(kind, ok, len(k), len(m)) + k + m + payload
    return _FRAME.pack(zlib.crc32(body), len(body)) + body


@dataclass(slots=True)
class _Row:
    method: str
    state: EntryState
    ok: bool = False
    log: _Log | None = None  # where the payload of a done row lies (None: in `payload`)
    offset: int = 0
    length: int = 0
    payload: bytes = b""


class _Log:
    """One process's log in the journal folder: ours (we append), adopted (its writer is
    gone) or live (another process appends; we read what it wrote so far)."""

    __slots__ = ("fd", "live", "name", "size")

    def __init__(self, name: str, fd: int, size: int, live: bool) -> None:
        self.name = name
        self.fd = fd
        self.size = size  # ours: where the next record goes; another's: how far we read
        self.live = live


def _locked(fd: int) -> bool:
    """Take the log's lock; False when another process holds it (its writer runs)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


class IdempotencyJournal:
    def __init__(
        self,
        path: Path | None,
        *,
        max_entries: int = 4096,
        max_bytes: int = 64 * 1024 * 1024,
    ) -> None:
        if max_entries < 1 or max_bytes < 1:
            raise ValueError("journal bounds must be positive")
        self.path = path
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._rows: dict[str, _Row] = {}  # oldest first: the order pruning follows
        self._dir: int | None = None
        self._own: _Log | None = None
        self._others: list[_Log] = []  # adopted and live logs, oldest first
        self._open = False
        self._finished = 0
        self._bytes = 0
        self._interrupted = 0
        self._pruned = 0
        # Past these, prune: the bounds, or more while rows we may not prune (a live writer's)
        # keep us above them, so that pruning is not tried again on every finish.
        self._prune_at = (max_entries, max_bytes)

    # -- lifecycle ------------------------------------------------------------------------
    def open(self) -> IdempotencyJournal:
        if self.path is None:
            self._open = True
            return self
        try:
            self._dir = open_private_dir(self.path, create=True)  # 0700, ours, no symlink
            names = sorted(
                n for n in os.listdir(self._dir) if n.endswith(_LOG_SUFFIX) and n[0].isdigit()
            )
            for name in names:
                fd = open_private_file(name, os.O_RDONLY, dir_fd=self._dir)
                log = _Log(name, fd, 0, live=not _locked(fd))
                self._others.append(log)
                self._read(log)
            self._own = self._new_log()
            self._import_legacy(self.path.with_suffix(".sqlite3"))
        except (OSError, BridgeError) as exc:
            self.close()
            raise ResourceExhausted(
                f"cannot open the idempotency journal {self.path}: {exc}"
            ) from exc
        for row in self._rows.values():
            if row.state is EntryState.RUNNING:  # its process is gone, or draining
                row.state = EntryState.INTERRUPTED
                self._interrupted += 1
        self._open = True
        return self

    def _import_legacy(self, legacy: Path) -> None:
        """Take over the SQLite journal an earlier version kept beside this one: its rows
        are written into our log (rows of the logs are newer and win), then it is removed."""
        if legacy == self.path or not legacy.is_file():
            return
        import sqlite3  # only on the first start after an upgrade

        try:
            db = sqlite3.connect(f"file:{legacy}?mode=ro", uri=True)
            try:
                rows = db.execute(
                    "SELECT key, method, state, ok, payload FROM entries ORDER BY seq"
                ).fetchall()
            finally:
                db.close()
        except sqlite3.Error as exc:  # unreadable: left as it is, and not a reason to stop
            logger.warning("cannot take over the earlier idempotency journal %s: %s", legacy, exc)
            return
        for key, method, state, ok, payload in rows:
            if key in self._rows:
                continue
            if state == EntryState.DONE:
                end = self._append(_record(_DONE, key, method, bool(ok), bytes(payload)))
                row = self._rows[key] = _Row(method, EntryState.DONE)
                self._done(row, bool(ok), self._own, end, len(payload), bytes(payload))
            else:
                self._append(_record(_BEGIN, key, method))
                self._rows[key] = _Row(method, EntryState.RUNNING)
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"{legacy}{suffix}")

    def close(self) -> None:
        own, self._own = self._own, None
        if own is not None:
            if own.size == 0 and self._dir is not None:
                self._remove(own)  # nothing written: leave no trace
            else:
                with contextlib.suppress(OSError):
                    os.close(own.fd)
        for log in self._others:
            with contextlib.suppress(OSError):
                os.close(log.fd)
        self._others = []
        if self._dir is not None:
            with contextlib.suppress(OSError):
                os.close(self._dir)
            self._dir = None
        self._open = False
        self._rows.clear()
        self._finished = self._bytes = 0

    def __enter__(self) -> IdempotencyJournal:
        return self.open() if not self._open else self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- entries --------------------------------------------------------------------------
    def get(self, key: str) -> Entry | None:
        self._check_open()
        row = self._rows.get(key)
        log = row.log if row is not None and row.state is not EntryState.DONE else None
        if log is not None and log.live:  # its writer may have finished it since we read
            self._read(log)
            row = self._rows.get(key)
        if row is None:
            return None
        payload = row.payload
        if row.state is EntryState.DONE and row.log is not None:
            try:
                payload = os.pread(row.log.fd, row.length, row.offset)
            except OSError as exc:
                raise ResourceExhausted(f"idempotency journal read failed: {exc}") from exc
        return Entry(key, row.method, row.state, row.ok, payload)

    def begin(self, key: str, method: str) -> None:
        """Record a `running` row before the handler starts (a crash then reads as unknown).
        A row a dead server left running is begun again when its work outlived that server
        (`Idempotency.elsewhere`); a finished row never is."""
        self._check_open()
        row = self._rows.get(key)
        if row is not None and row.state is EntryState.DONE:
            return
        self._append(_record(_BEGIN, key, method))
        if row is None:
            self._rows[key] = _Row(method, EntryState.RUNNING)
        else:
            row.method, row.state, row.log = method, EntryState.RUNNING, None

    def forget(self, key: str) -> None:
        """Drop a key whose request was refused without effect: a retry may run it."""
        self._check_open()
        row = self._rows.get(key)
        if row is None:
            return
        self._append(_record(_FORGET, key, row.method))
        self._drop(key)

    def finish(self, key: str, ok: bool, payload: bytes) -> None:
        self._check_open()
        row = self._rows.get(key)
        method = row.method if row is not None else ""
        offset = self._append(_record(_DONE, key, method, ok, payload))
        if row is None:
            row = self._rows[key] = _Row(method, EntryState.DONE)
        elif row.state is EntryState.DONE:
            self._finished -= 1
            self._bytes -= row.length
        self._done(row, ok, self._own, offset, len(payload), payload)
        if self._finished > self._prune_at[0] or self._bytes > self._prune_at[1]:
            try:
                self._prune()
            except ResourceExhausted:  # the outcome is recorded; the bound waits a while
                logger.warning("idempotency journal: pruning failed", exc_info=True)
            self._prune_at = (
                max(self.max_entries, self._finished + self.max_entries // 2),
                max(self.max_bytes, self._bytes + self.max_bytes // 2),
            )

    def statistics(self) -> JournalStats:
        return JournalStats(
            len(self._rows),
            self._bytes,
            self._interrupted,
            self._pruned,
            ":memory:" if self.path is None else str(self.path),
        )

    # -- rows -----------------------------------------------------------------------------
    def _done(
        self, row: _Row, ok: bool, log: _Log | None, end: int, length: int, payload: bytes
    ) -> None:
        """Make `row` done; its payload is the `length` bytes before `end` in `log`."""
        row.state, row.ok, row.length = EntryState.DONE, ok, length
        if log is None:
            row.log, row.payload = None, payload
        else:
            row.log, row.offset, row.payload = log, end - length, b""
        self._finished += 1
        self._bytes += length

    def _drop(self, key: str) -> None:
        row = self._rows.pop(key)
        if row.state is EntryState.DONE:
            self._finished -= 1
            self._bytes -= row.length

    # -- the logs -------------------------------------------------------------------------
    def _check_open(self) -> None:
        if not self._open:
            self.open()

    def _new_log(self) -> _Log:
        """A new, empty log of ours, locked before its name makes it a log (so no other
        process can take it for a dead writer's)."""
        assert self._dir is not None
        name = f"{time.time_ns():020d}-{os.getpid()}{_LOG_SUFFIX}"
        draft = f".{name}.new"
        fd = create_private_file(draft, os.O_RDWR, dir_fd=self._dir)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.rename(draft, name, src_dir_fd=self._dir, dst_dir_fd=self._dir)
        except OSError:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(draft, dir_fd=self._dir)
            raise
        return _Log(name, fd, 0, live=False)

    def _append(self, record: bytes) -> int:
        """Write `record` at the end of our log; the offset just after it. In memory: 0."""
        own = self._own
        if own is None:
            return 0
        try:
            written = os.pwrite(own.fd, record, own.size)
        except OSError as exc:
            raise ResourceExhausted(f"idempotency journal write failed: {exc}") from exc
        if written != len(record):  # a full disk: the torn bytes are overwritten next time
            with contextlib.suppress(OSError):
                os.ftruncate(own.fd, own.size)
            raise ResourceExhausted("idempotency journal write failed: the disk is full")
        own.size += written
        return own.size

    def _read(self, log: _Log) -> None:
        """Apply `log`'s records from where we last stopped reading it."""
        chunks = []
        offset = log.size
        while True:
            chunk = os.pread(log.fd, 1 << 20, offset)
            if not chunk:
                break
            chunks.append(chunk)
            offset += len(chunk)
        data = b"".join(chunks)
        at = 0
        while at + _FRAME.size <= len(data):
            crc, length = _FRAME.unpack_from(data, at)
            start = at + _FRAME.size
            end = start + length
            if length < _BODY.size or end > len(data) or zlib.crc32(data[start:end]) != crc:
                break  # cut short (a crash, a full disk) or not written yet: stop here
            kind, ok, klen, mlen = _BODY.unpack_from(data, start)
            k0 = start + _BODY.size
            key = data[k0 : k0 + klen].decode(errors="replace")
            method = data[k0 + klen : k0 + klen + mlen].decode(errors="replace")
            self._apply(kind, key, method, bool(ok), log, log.size + end, end - k0 - klen - mlen)
            at = end
        log.size += at

    def _apply(
        self, kind: int, key: str, method: str, ok: bool, log: _Log, end: int, length: int
    ) -> None:
        row = self._rows.get(key)
        if kind == _FORGET:
            if row is not None:
                self._drop(key)
            return
        state = _STATE.get(kind)
        if state is None:
            return  # a kind a newer version writes: not ours to read
        if row is None:
            row = self._rows[key] = _Row(method, state)
        elif row.state is EntryState.DONE:
            self._finished -= 1
            self._bytes -= row.length
        row.method = method or row.method
        if state is EntryState.DONE:
            self._done(row, ok, log, end, length, b"")
        else:
            row.state, row.log = state, log

    def _prune(self) -> None:
        """Rewrite the rows we keep into a new log of ours and remove the logs they were in."""
        for log in self._others:  # a writer that has gone since: its log is ours now
            if log.live and _locked(log.fd):
                self._read(log)
                log.live = False
        keep_entries, keep_bytes = self.max_entries // 2, self.max_bytes // 2
        kept = set()
        for key, row in reversed(self._rows.items()):
            if row.state is not EntryState.DONE or (row.log is not None and row.log.live):
                kept.add(key)
            elif keep_entries > 0 and row.length <= keep_bytes:
                kept.add(key)
                keep_entries -= 1
                keep_bytes -= row.length
            else:
                keep_entries = 0  # older rows go, even a small one after a large one
        if self._own is None:  # in memory
            for key in [k for k in self._rows if k not in kept]:
                self._drop(key)
                self._pruned += 1
            return
        old = [self._own, *(log for log in self._others if not log.live)]
        new = self._new_log()
        records = []
        placed: list[tuple[_Row, int, int]] = []
        size = 0
        try:
            for key, row in self._rows.items():
                if key not in kept or (row.log is not None and row.log.live):
                    continue
                if row.state is EntryState.DONE:
                    payload = row.payload
                    if row.log is not None:
                        payload = os.pread(row.log.fd, row.length, row.offset)
                    record = _record(_DONE, key, row.method, row.ok, payload)
                    placed.append((row, size + len(record), row.length))
                else:
                    record = _record(_BEGIN, key, row.method)
                    if row.state is EntryState.INTERRUPTED:
                        record = _record(_INTERRUPTED, key, row.method)
                records.append(record)
                size += len(record)
            data = b"".join(records)
            if data and os.pwrite(new.fd, data, 0) != len(data):
                raise OSError("short write (the disk is full?)")
        except OSError as exc:
            self._remove(new)
            raise ResourceExhausted(f"idempotency journal rewrite failed: {exc}") from exc
        new.size = size
        for key in [k for k in self._rows if k not in kept]:
            self._drop(key)
            self._pruned += 1
        for row, end, length in placed:
            row.log, row.offset = new, end - length
        for row in self._rows.values():
            if row.state is not EntryState.DONE and (row.log is None or not row.log.live):
                row.log = None
        for log in old:
            self._remove(log)
        self._own = new
        self._others = [log for log in self._others if log.live]

    def _remove(self, log: _Log) -> None:
        with contextlib.suppress(OSError):
            os.unlink(log.name, dir_fd=self._dir)
        with contextlib.suppress(OSError):
            os.close(log.fd)


def read_keys(path: Path) -> set[str]:
    """The keys a journal folder holds, read without writing to it (for inspection)."""
    journal = IdempotencyJournal(None)
    journal.open()
    for name in sorted(os.listdir(path)):
        if name.endswith(_LOG_SUFFIX):
            fd = os.open(path / name, os.O_RDONLY)
            try:
                journal._read(_Log(name, fd, 0, live=True))
            finally:
                os.close(fd)
    return set(journal._rows)


__all__ = [
    "JOURNAL_FILE",
    "MAX_KEY_LENGTH",
    "Entry",
    "EntryState",
    "IdempotencyJournal",
    "JournalStats",
    "OutcomeUnknown",
    "read_keys",
]
