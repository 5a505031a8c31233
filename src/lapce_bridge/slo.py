"""Service-level objectives of the specification (11.1), kept in SQLite so they survive restarts.

The objectives, each over its own window:

    objective       target                         window   counted from
    availability    >= 99.9 % of calls succeed     30 days  every call; only server faults fail
    error rate      <= 0.1 % of calls fail         24 h     the same calls
    latency         p99 < 100 ms                   1 h      calls of server-bound operations
    recovery time   < 5 s per incident             30 days  incidents (core.incidents)
    data loss       0 items lost                   30 days  items reported lost

"p99 < 100 ms" holds exactly when at most 1 % of the calls took longer (a count, no quantile
estimate). Operations whose duration is a user's command (`terminal/execute`,
`terminal/wait`: `sleep 10` takes 10 s by design) are not server-bound and are left out of it.
Burn rates are the error rate over 1 h, 6 h and 24 h divided by the error budget (0.1 %), the
multi-window signals an SRE pages on; the budget remaining is that of the 30-day window.

Storage: one row of counts per wall-clock minute (calls, failures, latency calls, slower
calls, lost items), incidents with their wall-clock start and end, and a `meta` row saying
whether a server is running with this file and when it last wrote (its heartbeat). Counts are
kept in memory for the current minutes and added to their rows every `flush_every` seconds
(in a worker thread) and at close; a report adds what is not yet written to the window sums
read at the last flush, so `record` stays a few attribute updates on the request path. Rows
older than the longest window (plus a day) are deleted as they age out.

Opening a file whose `meta` says "running" means the previous server died without closing:
`open()` returns that outage (from its last heartbeat to now), which the app records as a
`server_restart` incident. Times are wall-clock (`wall`, injectable) because they must mean
the same thing to the next process; durations inside one process come from its monotonic
clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lapce_bridge.core.incidents import Incident

log = logging.getLogger("lapce_bridge.slo")

SLO_FILE = "slo.sqlite3"
MINUTE = 60.0
HOUR = 60
DAY = 24 * HOUR
WINDOWS = {"1h": HOUR, "6h": 6 * HOUR, "24h": DAY, "30d": 30 * DAY}  # in minutes
RETENTION_MINUTES = 31 * DAY
AVAILABILITY_TARGET = 0.999
ERROR_RATE_TARGET = 0.001
LATENCY_TARGET_S = 0.100
LATENCY_QUANTILE = 0.99
RECOVERY_TARGET_S = 5.0
# Operations timing a user's command, not the server: left out of the latency objective.
NOT_SERVER_BOUND = frozenset({"terminal/execute", "terminal/wait", "terminal.execute"})

_SCHEMA = """
CREATE TABLE IF NOT EXISTS minutes (
    minute INTEGER PRIMARY KEY,
    calls INTEGER NOT NULL, failures INTEGER NOT NULL,
    latency_calls INTEGER NOT NULL, slow INTEGER NOT NULL, lost INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS incidents (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL, subject TEXT NOT NULL, started REAL NOT NULL, ended REAL NOT NULL,
    recovered INTEGER NOT NULL, detail TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS incidents_ended ON incidents (ended);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
_COUNTS = 5  # calls, failures, latency_calls, slow, lost


@dataclass(frozen=True, slots=True)
class Outage:
    """The time a previous server was gone: from its last heartbeat to this start."""

    started: float  # wall clock
    ended: float


@dataclass(frozen=True, slots=True)
class Sums:
    calls: int = 0
    failures: int = 0
    latency_calls: int = 0
    slow: int = 0
    lost: int = 0

    def __add__(self, other: Sums) -> Sums:
        return Sums(
            self.calls + other.calls,
            self.failures + other.failures,
            self.latency_calls + other.latency_calls,
            self.slow + other.slow,
            self.lost + other.lost,
        )


# The minute the sums were read at, the window sums, the incidents' (count, slower, worst).
_Read = tuple[int, dict[str, "Sums"], tuple[int, int, float]]


class SloStore:
    def __init__(
        self,
        path: Path | None,
        *,
        wall: Callable[[], float] = time.time,
        flush_every: float = 10.0,
    ) -> None:
        self.path = path
        self._wall = wall
        self.flush_every = flush_every
        self._db: sqlite3.Connection | None = None
        self._lock = threading.Lock()  # the connection is used from the flush thread too
        self._minute = -1
        self._current = [0] * _COUNTS
        self._pending: dict[int, list[int]] = {}  # minutes not yet written
        self._writing: dict[int, list[int]] = {}  # minutes a flush is writing now
        self._pending_incidents: list[tuple[Any, ...]] = []
        self._sums: dict[str, Sums] = {name: Sums() for name in WINDOWS}
        self._sums_minute = -1
        self._incident_stats: tuple[int, int, float] = (0, 0, 0.0)  # count, slower, worst
        self._since: float | None = None

    # -- life cycle -----------------------------------------------------------------------
    def open(self) -> Outage | None:
        """Open (or create) the store; returns the previous server's outage if it died."""
        target = ":memory:" if self.path is None else str(self.path)
        db = sqlite3.connect(target, check_same_thread=False, isolation_level=None)
        if self.path is not None:
            with contextlib.suppress(OSError):
                self.path.chmod(0o600)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA busy_timeout=2000")
        db.executescript(_SCHEMA)
        self._db = db
        now = self._wall()
        meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
        outage = None
        if meta.get("state") == "running" and "heartbeat" in meta:
            outage = Outage(min(float(meta["heartbeat"]), now), now)
        self._since = float(meta["since"]) if "since" in meta else now
        self._set_meta(state="running", heartbeat=repr(now), since=repr(self._since))
        self._apply(self._read_sums(int(now // MINUTE)))
        return outage

    def close(self) -> None:
        if self._db is None:
            return
        self.flush()
        self._set_meta(state="stopped", heartbeat=repr(self._wall()))
        with self._lock:
            self._db.close()
        self._db = None

    def _set_meta(self, **values: str) -> None:
        assert self._db is not None
        with self._lock:
            self._db.executemany(
                "INSERT INTO meta (key, value) VALUES (?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                values.items(),
            )

    # -- recording (the request path) -----------------------------------------------------
    def record(self, operation: str, seconds: float, ok: bool) -> None:
        minute = int(self._wall() // MINUTE)
        if minute != self._minute:
            self._next_minute(minute)
        counts = self._current
        counts[0] += 1
        if not ok:
            counts[1] += 1
        if operation not in NOT_SERVER_BOUND:
            counts[2] += 1
            if seconds > LATENCY_TARGET_S:
                counts[3] += 1

    def record_loss(self, items: int) -> None:
        """Items of data lost (messages dropped, output lost unannounced): the target is 0."""
        if items <= 0:
            return
        minute = int(self._wall() // MINUTE)
        if minute != self._minute:
            self._next_minute(minute)
        self._current[4] += items

    def _next_minute(self, minute: int) -> None:
        if self._minute >= 0 and any(self._current):
            self._pending[self._minute] = self._current
        self._minute = minute
        self._current = list(self._pending.pop(minute, [0] * _COUNTS))

    def record_incident(self, incident: Incident, clock_now: float) -> None:
        """An ended incident; its clock times are turned to wall-clock ones here."""
        if incident.ended is None:
            return
        offset = self._wall() - clock_now
        self._pending_incidents.append(
            (
                incident.kind,
                incident.subject,
                incident.started + offset,
                incident.ended + offset,
                int(bool(incident.recovered)),
                incident.detail,
            )
        )

    def record_outage(self, outage: Outage, detail: str) -> None:
        self._pending_incidents.append(
            ("server_restart", "server", outage.started, outage.ended, 1, detail)
        )

    # -- writing --------------------------------------------------------------------------
    def _take(self) -> tuple[dict[int, list[int]], list[tuple[Any, ...]]]:
        """What to write now (on the loop: records never race the swap)."""
        if self._minute >= 0 and any(self._current):
            self._pending[self._minute] = self._current
            self._current = [0] * _COUNTS
        rows, self._pending = self._pending, {}
        incidents, self._pending_incidents = self._pending_incidents, []
        self._writing = rows
        return rows, incidents

    def _write(
        self, rows: dict[int, list[int]], incidents: Iterable[tuple[Any, ...]], now: float
    ) -> _Read:
        """Add counts to their rows, store incidents, prune, re-read the window sums."""
        assert self._db is not None
        minute = int(now // MINUTE)
        with self._lock:
            db = self._db
            db.execute("BEGIN")
            try:
                db.executemany(
                    "INSERT INTO minutes VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(minute) DO UPDATE "
                    "SET calls = calls + excluded.calls, failures = failures + excluded.failures, "
                    "latency_calls = latency_calls + excluded.latency_calls, "
                    "slow = slow + excluded.slow, lost = lost + excluded.lost",
                    [(m, *counts) for m, counts in rows.items()],
                )
                db.executemany(
                    "INSERT INTO incidents (kind, subject, started, ended, recovered, detail) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    incidents,
                )
                db.execute("DELETE FROM minutes WHERE minute < ?", (minute - RETENTION_MINUTES,))
                db.execute(
                    "DELETE FROM incidents WHERE ended < ?", (now - RETENTION_MINUTES * MINUTE,)
                )
                db.execute(
                    "INSERT INTO meta (key, value) VALUES ('heartbeat', ?) "
                    "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                    (repr(now),),
                )
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        return self._read_sums(minute)

    def _read_sums(self, minute: int) -> _Read:
        assert self._db is not None
        sums: dict[str, Sums] = {}
        with self._lock:
            for name, length in WINDOWS.items():
                row = self._db.execute(
                    "SELECT COALESCE(SUM(calls), 0), COALESCE(SUM(failures), 0), "
                    "COALESCE(SUM(latency_calls), 0), COALESCE(SUM(slow), 0), "
                    "COALESCE(SUM(lost), 0) FROM minutes WHERE minute > ?",
                    (minute - length,),
                ).fetchone()
                sums[name] = Sums(*row)
            since = minute * MINUTE - WINDOWS["30d"] * MINUTE
            count, slower, worst = self._db.execute(
                "SELECT COUNT(*), COALESCE(SUM(ended - started > ?), 0), "
                "COALESCE(MAX(ended - started), 0) FROM incidents WHERE ended > ?",
                (RECOVERY_TARGET_S, since),
            ).fetchone()
        return minute, sums, (int(count), int(slower), float(worst))

    def _apply(self, read: _Read) -> None:
        """Adopt the sums a write read back; on the loop, with the written counts dropped, so
        a report never counts a minute twice."""
        self._sums_minute, self._sums, self._incident_stats = read
        self._writing = {}

    def flush(self) -> None:
        """Write what is pending now (blocking; `close` and tests use it)."""
        if self._db is None:
            return
        rows, incidents = self._take()
        try:
            self._apply(self._write(rows, incidents, self._wall()))
        finally:
            self._writing = {}

    async def flush_async(self) -> None:
        """Write what is pending in a worker thread, so the loop never waits on the disk."""
        if self._db is None:
            return
        rows, incidents = self._take()
        applied = False
        try:
            self._apply(await asyncio.to_thread(self._write, rows, incidents, self._wall()))
            applied = True
        finally:
            self._writing = {}
            if not applied:  # cancelled while the thread writes: read the sums again later
                self._sums_minute = -1

    async def run(self, sleep: Callable[[float], Any]) -> None:
        """Flush every `flush_every` seconds until cancelled (`sleep` is the app clock's)."""
        while True:
            await sleep(self.flush_every)
            try:
                await self.flush_async()
            except sqlite3.Error as exc:  # a full disk must not end the server
                log.warning("SLO store write failed: %s", exc)

    # -- reading --------------------------------------------------------------------------
    def window(self, name: str) -> Sums:
        """Counts over a window: what was read at the last flush plus what is not written."""
        length = WINDOWS[name]
        now_minute = int(self._wall() // MINUTE)
        if now_minute != self._sums_minute and self._db is not None and not self._writing:
            # The windows slid since the last read (a quiet server flushes nothing new).
            self._apply(self._read_sums(now_minute))
        total = self._sums[name]
        unwritten = [*self._writing.items(), *self._pending.items()]
        if self._minute >= 0:
            unwritten.append((self._minute, self._current))
        for minute, counts in unwritten:
            if minute > now_minute - length:
                total = total + Sums(*counts)
        return total

    def report(self) -> dict[str, Any]:
        """The `slos` member of `health/get`."""
        budget = 1.0 - AVAILABILITY_TARGET
        month, day = self.window("30d"), self.window("24h")
        hour, six = self.window("1h"), self.window("6h")

        def rate(s: Sums) -> float:
            return s.failures / s.calls if s.calls else 0.0

        def burn(s: Sums) -> float:
            return rate(s) / budget

        availability = 1.0 - rate(month)
        slow_share = hour.slow / hour.latency_calls if hour.latency_calls else 0.0
        count, slower, worst = self._incident_stats
        pending = [i for i in self._pending_incidents if i[3] - i[2] > RECOVERY_TARGET_S]
        count += len(self._pending_incidents)
        slower += len(pending)
        worst = max([worst, *(i[3] - i[2] for i in self._pending_incidents)])
        return {
            "since": self._since,
            "availability": {
                "target": AVAILABILITY_TARGET,
                "window": "30d",
                "value": availability,
                "calls": month.calls,
                "failures": month.failures,
                "budgetRemaining": max(0.0, 1.0 - burn(month)),
                "burnRate1h": burn(hour),
                "burnRate6h": burn(six),
                "burnRate24h": burn(day),
                "met": availability >= AVAILABILITY_TARGET,
            },
            "errorRate": {
                "target": ERROR_RATE_TARGET,
                "window": "24h",
                "value": rate(day),
                "calls": day.calls,
                "failures": day.failures,
                "met": rate(day) <= ERROR_RATE_TARGET,
            },
            "latencyP99": {
                "targetMs": LATENCY_TARGET_S * 1000.0,
                "window": "1h",
                "calls": hour.latency_calls,
                "slower": hour.slow,
                "met": slow_share <= 1.0 - LATENCY_QUANTILE,
            },
            "recoveryTime": {
                "targetMs": RECOVERY_TARGET_S * 1000.0,
                "window": "30d",
                "incidents": count,
                "slower": slower,
                "worstMs": worst * 1000.0,
                "met": slower == 0,
            },
            "dataLoss": {
                "target": 0,
                "window": "30d",
                "items": month.lost,
                "met": month.lost == 0,
            },
        }


__all__ = ["SLO_FILE", "Outage", "SloStore", "Sums"]
