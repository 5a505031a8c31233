"""Incidents: every recovery, with a start, an end and a duration.

Theory of operation: a recovery (a shell restarted, a watcher re-established, a server
restarted after a crash, a read served from the cache while the disk failed) is an incident.
A component either reports a recovery it timed itself, whole (`record(kind, subject, started,
ended, recovered)`, as the terminal and the watcher do through their `*.recover` operations),
or opens an incident when trouble starts and closes it when it ends (`open`, then `close`).
Each change is published on the bus: `IncidentStarted` when one opens, `IncidentEnded` when it
ends (a recorded one publishes only its end), so logs, the SLO store and the health report
each learn of it once.

Invariants: an incident's `ended` is never before its `started` (a negative duration from a
clock read in the wrong order is clamped to 0); closing an unknown or already closed id
changes nothing and returns None; the recent list keeps the last `keep` ended incidents, and
the open ones are kept until closed (at most `max_open`: past that the oldest is closed as
abandoned, so a component that never closes cannot grow memory).
"""

from __future__ import annotations

import itertools
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lapce_bridge.core.clock import Clock
    from lapce_bridge.core.events import EventBus

# The operations whose observation is a whole recovery: name -> incident kind.
RECOVERY_OPERATIONS = {
    "terminal/recover": "terminal",
    "fs/watch/recover": "watcher",
}


@dataclass(frozen=True, slots=True)
class Incident:
    id: int
    kind: str  # terminal, watcher, server_restart, cache_fallback, ...
    subject: str  # what recovered: an operation, a terminal id, a watch id
    started: float  # on the clock that recorded it
    ended: float | None
    recovered: bool | None  # None while open
    detail: str

    @property
    def duration(self) -> float | None:
        return None if self.ended is None else self.ended - self.started

    def to_wire(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "subject": self.subject,
            "started": self.started,
            "ended": self.ended,
            "durationMs": None if self.duration is None else self.duration * 1000.0,
            "recovered": self.recovered,
            "detail": self.detail,
        }


@dataclass(frozen=True, slots=True)
class IncidentStarted:
    incident: Incident


@dataclass(frozen=True, slots=True)
class IncidentEnded:
    incident: Incident


class IncidentLog:
    def __init__(
        self,
        *,
        clock: Clock,
        bus: EventBus | None = None,
        keep: int = 100,
        max_open: int = 1000,
    ) -> None:
        self._clock = clock
        self._bus = bus
        self._ids = itertools.count(1)
        self._open: OrderedDict[int, Incident] = OrderedDict()
        self._recent: deque[Incident] = deque(maxlen=keep)
        self.max_open = max_open
        self.total = 0

    def open(self, kind: str, subject: str, detail: str = "") -> int:
        """An incident starting now; returns its id for `close`."""
        incident = Incident(next(self._ids), kind, subject, self._clock.now(), None, None, detail)
        self._open[incident.id] = incident
        self.total += 1
        if self._bus is not None:
            self._bus.publish(IncidentStarted(incident))
        while len(self._open) > self.max_open:
            oldest = next(iter(self._open))
            self.close(oldest, recovered=False, detail="abandoned: too many open incidents")
        return incident.id

    def close(self, incident_id: int, *, recovered: bool, detail: str = "") -> Incident | None:
        found = self._open.pop(incident_id, None)
        if found is None:
            return None
        ended = max(found.started, self._clock.now())
        incident = Incident(
            found.id,
            found.kind,
            found.subject,
            found.started,
            ended,
            recovered,
            detail or found.detail,
        )
        return self._end(incident)

    def record(
        self,
        kind: str,
        subject: str,
        *,
        started: float,
        ended: float,
        recovered: bool,
        detail: str = "",
    ) -> Incident:
        """A recovery timed by its component, reported whole when it is over."""
        incident = Incident(
            next(self._ids), kind, subject, started, max(started, ended), recovered, detail
        )
        self.total += 1
        return self._end(incident)

    def _end(self, incident: Incident) -> Incident:
        self._recent.append(incident)
        if self._bus is not None:
            self._bus.publish(IncidentEnded(incident))
        return incident

    def open_incidents(self) -> list[Incident]:
        return list(self._open.values())

    def recent(self, n: int | None = None) -> list[Incident]:
        """Ended incidents, newest last (the last `n` of them)."""
        items = list(self._recent)
        return items if n is None else items[-n:] if n > 0 else []


__all__ = [
    "RECOVERY_OPERATIONS",
    "Incident",
    "IncidentEnded",
    "IncidentLog",
    "IncidentStarted",
]
