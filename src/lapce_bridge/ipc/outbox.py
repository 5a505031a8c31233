"""The client's outbox: requests not yet answered, in order, bounded, optionally on disk.

Theory of operation: every request sent with recovery is an `OutboxEntry` from the moment it
is accepted until its answer arrives: while the connection is up it is on the wire, while it
is down it waits here. Entries keep their order (`seq`) and their `idempotencyKey`, so after
a reconnect they are sent again, in order, and the server's journal turns a repeat of one it
already ran into its first answer: delivered at least once, executed at most once.

Bounds: at most `limit` entries; `put` beyond that raises `ResourceExhausted` (the caller
learns at once; nothing already accepted is dropped). With `path`, entries are also kept in
SQLite (committed before `put` returns) and removed when answered, so a client that restarts
finds what it had not delivered (`recovered()`), to be sent before anything new.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from lapce_bridge.core.errors import ResourceExhausted
from lapce_bridge.private import private_file


@dataclass(eq=False, slots=True)
class OutboxEntry:
    seq: int
    key: str
    method: str
    params: dict[str, Any]
    future: asyncio.Future[Any] | None = None
    enqueued_at: float = 0.0
    generation: int | None = None  # the breaker generation it voted with; None once voted
    attempts: int = 0
    recovered: bool = False
    sent_id: int | None = field(default=None)


class Outbox:
    def __init__(self, limit: int = 1000, path: Path | None = None) -> None:
        if limit < 1:
            raise ValueError("the outbox limit must be at least 1")
        self.limit = limit
        self.path = path
        self._entries: dict[int, OutboxEntry] = {}
        self._seq = itertools.count(1)
        self._db: sqlite3.Connection | None = None
        self._recovered: list[OutboxEntry] = []
        if path is not None:
            self._open(path)

    def _open(self, path: Path) -> None:
        private_file(path)  # 0600 in a private folder, before SQLite opens it
        db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute(
            "CREATE TABLE IF NOT EXISTS outbox (seq INTEGER PRIMARY KEY, key TEXT NOT NULL, "
            "method TEXT NOT NULL, params BLOB NOT NULL)"
        )
        rows = db.execute("SELECT seq, key, method, params FROM outbox ORDER BY seq").fetchall()
        self._db = db
        top = 0
        for seq, key, method, params in rows:
            entry = OutboxEntry(int(seq), key, method, orjson.loads(params), recovered=True)
            self._entries[entry.seq] = entry
            self._recovered.append(entry)
            top = max(top, entry.seq)
        self._seq = itertools.count(top + 1)

    def put(
        self, method: str, params: dict[str, Any], key: str, *, now: float = 0.0
    ) -> OutboxEntry:
        if len(self._entries) >= self.limit:
            raise ResourceExhausted(
                f"the outbox is full ({self.limit} requests wait for the server)",
                data={"outboxLimit": self.limit},
            )
        entry = OutboxEntry(next(self._seq), key, method, params, enqueued_at=now)
        if self._db is not None:
            try:
                self._db.execute(
                    "INSERT INTO outbox (seq, key, method, params) VALUES (?, ?, ?, ?)",
                    (entry.seq, key, method, orjson.dumps(params)),
                )
            except sqlite3.Error as exc:
                raise ResourceExhausted(f"cannot persist the outbox: {exc}") from exc
        self._entries[entry.seq] = entry
        return entry

    def done(self, entry: OutboxEntry) -> None:
        if self._entries.pop(entry.seq, None) is not None and self._db is not None:
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("DELETE FROM outbox WHERE seq = ?", (entry.seq,))

    def pending(self) -> list[OutboxEntry]:
        """Every unanswered entry, oldest first."""
        return sorted(self._entries.values(), key=lambda e: e.seq)

    def recovered(self) -> list[OutboxEntry]:
        """Entries a previous run of this client left undelivered (durable outbox only)."""
        return list(self._recovered)

    def __len__(self) -> int:
        return len(self._entries)

    def close(self) -> None:
        if self._db is not None:
            with contextlib.suppress(sqlite3.Error):
                self._db.close()
            self._db = None


__all__ = ["Outbox", "OutboxEntry"]
