"""What every connection of one server shares, as uvicorn hands each protocol a `ServerState`.

Theory of operation: `BridgeServer` builds one `ServerState` and gives it to each
`Connection` it accepts; a connection's dispatcher reads the method table, the clock, the
timeouts, the limits and the idempotency table from it, and reports to its observers and
counters. Nothing here knows the server or the connection classes (a connection is seen
through `Peer`), so the import graph runs one way: server -> connection -> dispatch -> state.

While `opening` is set (a server answers `ping` before its services are open), every message
but those `served_while_opening`, and every message after one that waits, wait for it on
their connection, in the order they came; a service that opens before the others adds its
methods to `served_while_opening` (`serving_changed`), and what waits for them goes then.

Invariants: the method table's keys are the only names an operation has (timeouts, health
targets, metrics, logs, alerts); `shutting_down` only ever goes from False to True; a peer is
in `connections` from its first byte until it is gone, and its counts then move into the
closed totals, so no request is counted twice or lost from the statistics.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from lapce_bridge.core.clock import Clock
from lapce_bridge.core.timeouts import TimeoutManager
from lapce_bridge.ipc.framing import DEFAULT_MAX_MESSAGE_BYTES
from lapce_bridge.ipc.idempotency import Idempotency
from lapce_bridge.rpc import Method, Observe


def default_max_silent() -> int:
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (ImportError, ValueError, OSError):  # pragma: no cover - not POSIX
        soft = 1024
    if soft == getattr(resource, "RLIM_INFINITY", -1) or soft <= 0:
        soft = 1 << 16
    return max(64, min(soft // 4, 16384))


@dataclass(frozen=True, slots=True)
class Limits:
    """Per-connection bounds (each one a defence: see the connection's docstring)."""

    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    frame_timeout: float = 30.0  # a frame that stops arriving this long closes the connection
    write_buffer_high: int = 256 * 1024  # above it, the client's next requests wait unread
    write_buffer_limit: int = 64 * 1024 * 1024  # above it, a client that reads nothing goes
    # Before a TCP client has authenticated it may send one small message, within seconds.
    auth_timeout: float = 5.0
    unauthenticated_max_message_bytes: int = 64 * 1024
    # Connections that have sent nothing yet: past this many, the oldest is closed (idle
    # sockets would otherwise hold descriptors until none is left for real clients). A
    # quarter of the descriptors this process may open, so 1,000 clients connecting at
    # once are all served.
    max_silent: int = field(default_factory=lambda: default_max_silent())
    max_inflight: int = 1024  # requests in flight on one connection (-32005 past it)
    max_batch: int = 1000  # requests in one batch (-32600 past it)
    batch_slice: int = 64  # batch members handled before other clients get a turn


@dataclass(slots=True)
class Counters:
    """What the server counts across connections (read by `statistics()`)."""

    accepted: int = 0
    requests_closed: int = 0  # requests of connections already gone
    dropped_closed: int = 0
    slow_disconnects: int = 0
    stalled_frames: int = 0
    auth_failures: int = 0
    frame_errors: int = 0
    invalid_messages: int = 0
    auth_timeouts: int = 0
    idle_closed: int = 0


class Peer(Protocol):
    """What the server sees of one connection."""

    @property
    def id(self) -> int: ...

    @property
    def label(self) -> str: ...

    @property
    def requests(self) -> int: ...

    @property
    def dropped(self) -> int: ...

    @property
    def inflight(self) -> int: ...

    @property
    def last_data(self) -> float: ...

    @property
    def closed(self) -> asyncio.Future[None]: ...

    def write_frame(self, frame: bytes) -> None: ...

    def inflight_tasks(self) -> list[asyncio.Future[Any]]: ...

    def close(self) -> None: ...

    def abort(self) -> None: ...


class ServerState:
    def __init__(
        self,
        *,
        clock: Clock,
        methods: dict[str, Method],
        timeouts: TimeoutManager,
        observe: Observe,
        admit: Callable[[str], None],
        idempotency: Idempotency,
        limits: Limits,
        token: str | None = None,
        on_stdio_closed: Callable[[str], None] | None = None,
        on_error: Callable[[str, BaseException], None] | None = None,
    ) -> None:
        self.clock = clock
        self.methods = methods
        self.timeouts = timeouts
        self.observe = observe
        self.admit = admit
        self.idempotency = idempotency
        self.limits = limits
        self.token = token
        self.counters = Counters()
        self.connections: dict[int, Peer] = {}
        self.silent: dict[int, Peer] = {}  # in connection order, oldest first
        self.shutting_down = False
        # Set while the app's services are still opening (the table lacks their methods):
        # what needs them waits for it, in order (`Dispatcher`); None once the table is whole.
        self.opening: asyncio.Future[None] | None = None
        self.served_while_opening: frozenset[str | None] = frozenset()
        # Resolved (and replaced) each time methods join while opening: a service open
        # before the others; what waits at the head of a connection for them may go.
        self.serving_changed: asyncio.Future[None] | None = None
        self._on_stdio_closed = on_stdio_closed
        self._on_error = on_error
        self.auth_failure_streak = 0  # failed authentications since the last success

    def record_error(self, operation: str, error: BaseException) -> None:
        """Report one error answer (the caller's fault or the server's) to the observer."""
        if self._on_error is not None:
            self._on_error(operation, error)

    def auth_delay(self) -> float:
        """How long a failed authentication waits before its answer: doubling with each
        failure in a row (from 50 ms, at most 2 s), so guessing a token is slow."""
        streak = min(self.auth_failure_streak, 16)
        return 0.0 if streak == 0 else min(2.0, 0.05 * 2 ** (streak - 1))

    def register(self, peer: Peer) -> bool:
        """Admit a new connection; False (and the caller closes it) while shutting down."""
        if self.shutting_down:
            return False
        self.connections[peer.id] = peer
        self.silent[peer.id] = peer
        if len(self.silent) > self.limits.max_silent:
            oldest = self.silent.pop(next(iter(self.silent)))
            self.counters.idle_closed += 1
            oldest.close()
        return True

    def heard(self, peer: Peer) -> None:
        """`peer` has sent its first bytes: no longer a candidate for the idle limit."""
        self.silent.pop(peer.id, None)

    def unregister(self, peer: Peer) -> None:
        self.silent.pop(peer.id, None)
        if self.connections.pop(peer.id, None) is not None:
            self.counters.requests_closed += peer.requests
            self.counters.dropped_closed += peer.dropped
        if peer.label == "stdio" and self._on_stdio_closed is not None:
            self._on_stdio_closed("stdin closed")


__all__ = ["Counters", "Limits", "Peer", "ServerState"]
