"""The idempotency journal: a request with an `idempotencyKey` runs at most once.

Theory of operation: a bounded SQLite table `(key, method, state, ok, payload, seq)`. Before a
keyed request's handler runs, a `running` row is committed; when it ends, the row becomes
`done` with the outcome: `ok` and the result as JSON, or not ok and the JSON-RPC error
object. A repeat of the key is answered from the row (`done`), joins the execution still in
progress (that part lives in `ipc.idempotency`, in memory), or, when the row says `running`
but this process is not running it, gets `OutcomeUnknown`: the server died while it ran, so
whether its effect happened is unknown, and running it again could do it twice. Opening the
journal turns every `running` row left by a previous process into `interrupted` for that
reason.

Durability: WAL with synchronous=NORMAL; a commit survives the process being killed (the WAL
is in the kernel's page cache), which is the failure this guards against. Requests without a
key never touch the journal.

Bounds: at most `max_entries` finished rows and `max_bytes` of stored outcomes; the oldest
finished rows are pruned first. Rows still running are never pruned.
"""

from __future__ import annotations

import contextlib
import sqlite3
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
from lapce_bridge.private import private_file

JOURNAL_FILE = "idempotency.sqlite3"
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


_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL UNIQUE,
    method TEXT NOT NULL,
    state TEXT NOT NULL,
    ok INTEGER NOT NULL DEFAULT 0,
    payload BLOB NOT NULL DEFAULT x''
)
"""


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
        self._db: sqlite3.Connection | None = None
        self._finished = 0
        self._bytes = 0
        self._interrupted = 0
        self._pruned = 0

    # -- lifecycle ------------------------------------------------------------------------
    def open(self) -> IdempotencyJournal:
        target = ":memory:" if self.path is None else str(self.path)
        try:
            if self.path is not None:
                private_file(self.path)  # 0600 in a private folder, before SQLite opens it
            db = sqlite3.connect(target, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute(_SCHEMA)
            cur = db.execute(
                "UPDATE entries SET state = ? WHERE state = ?", ("interrupted", "running")
            )
            self._interrupted = cur.rowcount
            row = db.execute(
                "SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0) FROM entries"
            ).fetchone()
        except sqlite3.Error as exc:
            raise ResourceExhausted(f"cannot open the idempotency journal {target}: {exc}") from exc
        self._finished, self._bytes = int(row[0]), int(row[1])
        self._db = db
        return self

    def close(self) -> None:
        if self._db is not None:
            with contextlib.suppress(sqlite3.Error):
                self._db.close()
            self._db = None

    def __enter__(self) -> IdempotencyJournal:
        return self.open() if self._db is None else self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- entries --------------------------------------------------------------------------
    def get(self, key: str) -> Entry | None:
        row = (
            self._conn()
            .execute("SELECT method, state, ok, payload FROM entries WHERE key = ?", (key,))
            .fetchone()
        )
        if row is None:
            return None
        return Entry(key, row[0], EntryState(row[1]), bool(row[2]), bytes(row[3]))

    def begin(self, key: str, method: str) -> None:
        """Commit a `running` row before the handler starts (a crash then reads as unknown)."""
        try:
            self._conn().execute(
                # A row a dead server left running is begun again when its work outlived
                # that server (`Idempotency.elsewhere`); a finished row never is.
                "INSERT INTO entries (key, method, state) VALUES (?, ?, 'running') "
                "ON CONFLICT(key) DO UPDATE SET method = excluded.method, state = 'running' "
                "WHERE entries.state != 'done'",
                (key, method),
            )
        except sqlite3.Error as exc:
            raise ResourceExhausted(f"idempotency journal write failed: {exc}") from exc

    def forget(self, key: str) -> None:
        """Drop a key whose request was refused without effect: a retry may run it."""
        try:
            self._conn().execute("DELETE FROM entries WHERE key = ?", (key,))
        except sqlite3.Error as exc:
            raise ResourceExhausted(f"idempotency journal write failed: {exc}") from exc

    def finish(self, key: str, ok: bool, payload: bytes) -> None:
        try:
            self._conn().execute(
                "UPDATE entries SET state = 'done', ok = ?, payload = ? WHERE key = ?",
                (int(ok), payload, key),
            )
        except sqlite3.Error as exc:
            raise ResourceExhausted(f"idempotency journal write failed: {exc}") from exc
        self._finished += 1
        self._bytes += len(payload)
        if self._finished > self.max_entries or self._bytes > self.max_bytes:
            self._prune()

    def _prune(self) -> None:
        db = self._conn()
        # Drop a tenth beyond the bound at once so pruning is not paid on every finish.
        excess = max(self._finished - self.max_entries, 0) + self.max_entries // 10 + 1
        while True:
            rows = db.execute(
                "SELECT seq, LENGTH(payload) FROM entries WHERE state != 'running' "
                "ORDER BY seq LIMIT ?",
                (excess,),
            ).fetchall()
            if not rows:
                return
            db.execute("DELETE FROM entries WHERE seq <= ? AND state != 'running'", (rows[-1][0],))
            self._pruned += len(rows)
            self._finished -= len(rows)
            self._bytes -= sum(int(r[1]) for r in rows)
            if self._bytes <= self.max_bytes:
                return

    def statistics(self) -> JournalStats:
        return JournalStats(
            self._finished,
            self._bytes,
            self._interrupted,
            self._pruned,
            ":memory:" if self.path is None else str(self.path),
        )

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            self.open()
        assert self._db is not None
        return self._db


__all__ = [
    "JOURNAL_FILE",
    "MAX_KEY_LENGTH",
    "Entry",
    "EntryState",
    "IdempotencyJournal",
    "JournalStats",
    "OutcomeUnknown",
]
