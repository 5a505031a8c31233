"""Who owns which terminal: names, each connection's default, quotas, orphans. Pure bookkeeping.

Theory of operation: the terminal service asks this object before it opens or closes a
terminal and does the I/O itself (decide, then do). Rules:

- A terminal is owned by the connection that created it (`None`: created by the server itself,
  or an orphan whose creator left). Any connection may address any terminal by id or by name;
  ownership decides only quotas, defaults and what happens when the owner leaves.
- Each connection has its own default terminal (`terminal/execute` without `terminalId`), so
  one client's `cd` never moves another's relative paths. A connection that names its session
  gets the default that session had back, while it still exists.
- Names are unique among open terminals and never look like a generated id (`t12`), so
  `terminalId` can carry either.
- Quotas: a connection may own at most `per_connection` terminals (the server-wide maximum is
  the service's). When a connection closes, its unnamed terminals that were not asked to be
  kept are reaped `grace` seconds later (unless a connection resumes the session first); named
  or kept ones become orphans, which the service may evict, oldest first, when the server-wide
  maximum is reached: a client that fills the server and leaves locks nobody out. A
  connection that runs something in an orphan (a client back after a reconnect, using the ids
  it knew) adopts it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from lapce_bridge.core.errors import (
    Classification,
    ErrorCategory,
    ErrorSeverity,
    Fault,
    InvalidParams,
    ResourceExhausted,
)

__all__ = ["Owned", "Ownership"]

GENERATED_ID = re.compile(r"t\d+")
_MAX_NAME = 128
# The caller's to fix (close a terminal): does not count against the server's health.
_QUOTA = Classification(ErrorCategory.RESOURCE, ErrorSeverity.WARNING, False, True, Fault.CALLER)


@dataclass(slots=True)
class Owned:
    terminal_id: str
    owner: int | None  # connection id; None for an orphan or a server-made terminal
    name: str | None
    keep: bool
    session: str | None  # the owner's session name, when it gave one
    reap_at: float | None = None  # set when the owner left and nobody kept it


@dataclass(slots=True)
class _Connection:
    session: str | None = None
    default: str | None = None
    owned: set[str] = field(default_factory=set)


class Ownership:
    def __init__(self, *, per_connection: int = 32, grace: float = 30.0) -> None:
        self.per_connection = per_connection
        self.grace = grace
        self.terminals: dict[str, Owned] = {}
        self._names: dict[str, str] = {}
        self._connections: dict[int, _Connection] = {}
        self._sessions: dict[str, str] = {}  # session -> its default terminal id

    # -- connections ----------------------------------------------------------------------
    def known(self, conn: int) -> bool:
        return conn in self._connections

    def connect(self, conn: int, session: str | None = None) -> None:
        """Register a connection; a named session takes back what it left behind."""
        entry = self._connections.setdefault(conn, _Connection())
        if session is None or entry.session == session:
            return
        entry.session = session
        for owned in self.terminals.values():
            if owned.session == session and owned.owner is None:
                owned.owner, owned.reap_at = conn, None
                entry.owned.add(owned.terminal_id)
        default = self._sessions.get(session)
        if default in self.terminals and entry.default is None:
            entry.default = default

    def disconnect(self, conn: int, now: float) -> list[str]:
        """The connection closed: what it owned is orphaned; returns the ids now due for
        reaping at `now + grace` (unnamed, not kept)."""
        entry = self._connections.pop(conn, None)
        if entry is None:
            return []
        doomed = []
        for terminal_id in entry.owned:
            owned = self.terminals.get(terminal_id)
            if owned is None:
                continue
            owned.owner = None
            if owned.name is None and not owned.keep:
                owned.reap_at = now + self.grace
                doomed.append(terminal_id)
        return doomed

    def due(self, now: float) -> list[str]:
        """Orphans whose grace has run out: the service closes them."""
        terminals = self.terminals.values()
        return [t.terminal_id for t in terminals if t.reap_at is not None and t.reap_at <= now]

    # -- terminals ------------------------------------------------------------------------
    def check_name(self, name: str) -> None:
        if not name or len(name) > _MAX_NAME or not name.isprintable():
            raise InvalidParams(
                f"parameter 'name' must be 1 to {_MAX_NAME} printable characters, not {name!r}"
            )
        if GENERATED_ID.fullmatch(name):
            raise InvalidParams(f"name {name!r} looks like a terminal id (t<number>)")
        if name in self._names:
            raise InvalidParams(
                f"a terminal named {name!r} is already open ({self._names[name]})",
                data={"terminalId": self._names[name]},
            )

    def admit(self, conn: int | None) -> None:
        """Raise unless `conn` may open one more terminal."""
        if conn is None:
            return
        entry = self._connections.get(conn)
        owned = len(entry.owned) if entry is not None else 0
        if owned >= self.per_connection:
            raise ResourceExhausted(
                f"this connection already has {owned} terminals open (at most "
                f"{self.per_connection} each): close one with terminal/close",
                classification=_QUOTA,
            )

    def add(
        self, terminal_id: str, conn: int | None, *, name: str | None = None, keep: bool = False
    ) -> Owned:
        entry = self._connections.get(conn) if conn is not None else None
        owned = Owned(terminal_id, conn, name, keep, entry.session if entry is not None else None)
        self.terminals[terminal_id] = owned
        if name is not None:
            self._names[name] = terminal_id
        if entry is not None:
            entry.owned.add(terminal_id)
        return owned

    def remove(self, terminal_id: str) -> None:
        owned = self.terminals.pop(terminal_id, None)
        if owned is None:
            return
        if owned.name is not None:
            self._names.pop(owned.name, None)
        if owned.owner is not None:
            entry = self._connections.get(owned.owner)
            if entry is not None:
                entry.owned.discard(terminal_id)
                if entry.default == terminal_id:
                    entry.default = None
        if owned.session is not None and self._sessions.get(owned.session) == terminal_id:
            del self._sessions[owned.session]

    def adopt(self, terminal_id: str, conn: int) -> bool:
        """A connection used an orphan (a client back after a reconnect, by id): it is that
        connection's now and no longer reaped, quota permitting."""
        owned = self.terminals.get(terminal_id)
        entry = self._connections.get(conn)
        if owned is None or owned.owner is not None or entry is None:
            return False
        if len(entry.owned) >= self.per_connection:
            return False
        owned.owner, owned.reap_at, owned.session = conn, None, entry.session
        entry.owned.add(terminal_id)
        return True

    def resolve(self, key: str) -> str | None:
        """A terminal id from an id or a name."""
        if key in self.terminals:
            return key
        return self._names.get(key)

    def default(self, conn: int) -> str | None:
        entry = self._connections.get(conn)
        return entry.default if entry is not None else None

    def set_default(self, conn: int, terminal_id: str) -> None:
        entry = self._connections.setdefault(conn, _Connection())
        entry.default = terminal_id
        if entry.session is not None:
            self._sessions[entry.session] = terminal_id

    def session_default(self, session: str) -> str | None:
        """The default terminal a session left behind (what its next connection gets)."""
        return self._sessions.get(session)

    def restore_session_default(self, session: str, terminal_id: str) -> None:
        """A terminal recreated under its old id was its session's default: it is again."""
        if terminal_id in self.terminals:
            self._sessions[session] = terminal_id

    def orphans(self) -> list[str]:
        """Terminals nobody owns: what may make room at the server-wide maximum."""
        return [t.terminal_id for t in self.terminals.values() if t.owner is None]

    def describe(self, terminal_id: str) -> Owned | None:
        return self.terminals.get(terminal_id)
