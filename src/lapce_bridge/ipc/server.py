"""The JSON-RPC server: listeners, the method table, broadcast, graceful shutdown.

Theory of operation: `BridgeServer` owns the listeners (Unix socket, TCP with a token, or
stdio) and the `ServerState` its connections (`ipc.connection`) share: the method table
(the built-in `initialize`, `shutdown`, `exit`, `ping` and the app's), the idempotency table,
the limits and the counters.
Life cycle, as uvicorn draws it: start listening; serve until `request_shutdown()` (a
`shutdown` request, SIGTERM/SIGINT, stdin closing on stdio); then `aclose()`: stop accepting
and remove the socket file, let in-flight work finish within `shutdown_grace` seconds on the
clock (a second signal cuts the wait), cancel what is left (callers get -32002 "shutting
down"; keyed requests stay `running` in the journal, so their retry reads "outcome unknown"),
flush and close every connection, close the journal. The app's services are closed by whoever
opened them (the serve command), after the server.

Invariants: no connection's fault reaches another connection or the listener; the socket
file removed is always the one this server bound; a TCP listener always has a token and
refuses non-loopback addresses unless allowed explicitly.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import itertools
import logging
import socket
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, BinaryIO, Protocol, cast

from lapce_bridge import __version__
from lapce_bridge.core.clock import Clock
from lapce_bridge.core.errors import InvalidParams, PermissionDenied
from lapce_bridge.core.timeouts import TimeoutManager
from lapce_bridge.ipc import jsonrpc
from lapce_bridge.ipc.connection import CANCEL, Connection
from lapce_bridge.ipc.framing import DEFAULT_MAX_MESSAGE_BYTES, encode
from lapce_bridge.ipc.idempotency import Elsewhere, Idempotency
from lapce_bridge.ipc.journal import IdempotencyJournal
from lapce_bridge.ipc.paths import LISTEN_BACKLOG, bind_unix_socket, file_identity, remove_socket
from lapce_bridge.ipc.state import Limits, Peer, ServerState
from lapce_bridge.rpc import Broadcast, CallContext, Method, Params, method

log = logging.getLogger("lapce_bridge.ipc")

PROTOCOL_VERSION = 1
SERVER_NAME = "lapce-bridge"
_PONG = {"pong": True}
IDLE_CONNECTION_S = 60.0  # a connection this quiet is closed under high memory pressure


class ServerApp(Protocol):
    """What the server needs from the composition root (`lapce_bridge.app.App`)."""

    @property
    def clock(self) -> Clock: ...

    @property
    def timeouts(self) -> TimeoutManager: ...

    @property
    def methods(self) -> Mapping[str, Method]: ...

    def observe(self, op: str, seconds: float, ok: bool) -> None: ...

    def record_error(self, op: str, error: BaseException) -> None: ...

    def features(self) -> dict[str, bool]: ...

    def admit(self, operation: str) -> None: ...

    def add_broadcast_sink(self, sink: Broadcast) -> Callable[[], None]: ...

    def add_counter_source(self, source: Callable[[], Mapping[str, int]]) -> Callable[[], None]: ...


@dataclass(frozen=True, slots=True)
class ServerStats:
    connections: int
    accepted: int
    requests: int
    inflight: int
    idempotent_running: int
    idempotent_replayed: int
    dropped_messages: int
    slow_disconnects: int
    stalled_frames: int
    auth_failures: int
    frame_errors: int
    invalid_messages: int
    auth_timeouts: int
    idle_closed: int

    def counters(self) -> dict[str, int]:
        """These figures as `metrics/get` counters (`ipc.<name>`)."""
        return {f"ipc.{_camel(f.name)}": getattr(self, f.name) for f in fields(self)}


class BridgeServer:
    def __init__(
        self,
        app: ServerApp,
        *,
        clock: Clock | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        frame_timeout: float = 30.0,
        write_buffer_high: int = 256 * 1024,
        write_buffer_limit: int = 64 * 1024 * 1024,
        shutdown_grace: float = 10.0,
        token: str | None = None,
        journal: IdempotencyJournal | None = None,
        limits: Limits | None = None,
    ) -> None:
        self.app = app
        self.clock = clock if clock is not None else app.clock
        self.shutdown_grace = shutdown_grace
        self.journal = (journal or IdempotencyJournal(None)).open()
        # Keyed work that outlives this server (terminal commands in the terminal host).
        elsewhere = cast(Elsewhere, app) if hasattr(app, "outlives") else None
        self.idempotency = Idempotency(self.journal, elsewhere)
        builtins = self._builtins()
        self._builtin_names = frozenset(builtins)
        self._promised: frozenset[str] = frozenset()  # what `initialize` lists while opening
        self.state = ServerState(
            clock=self.clock,
            methods={**app.methods, **builtins},
            timeouts=app.timeouts,
            observe=app.observe,
            admit=app.admit,
            idempotency=self.idempotency,
            limits=limits
            or Limits(
                max_message_bytes=max_message_bytes,
                frame_timeout=frame_timeout,
                write_buffer_high=write_buffer_high,
                write_buffer_limit=write_buffer_limit,
            ),
            token=token,
            on_stdio_closed=self.request_shutdown,
            on_error=app.record_error,
        )
        self.socket_path: Path | None = None
        self._socket_identity: tuple[int, int] | None = None
        self._listeners: list[asyncio.AbstractServer] = []
        self._ids = itertools.count(1)
        self._stop = asyncio.Event()
        self._force = asyncio.Event()
        self._closed = False
        self._unsubscribe = app.add_broadcast_sink(self.broadcast)
        self._uncount = app.add_counter_source(lambda: self.statistics().counters())
        self._unrelieve = _register_relief(app, self)
        self.reaped_connections = 0

    # -- built-in methods -----------------------------------------------------------------
    def _builtins(self) -> dict[str, Method]:
        def initialize(params: Params, ctx: CallContext) -> dict[str, Any]:
            session = params.get("session") if isinstance(params, dict) else None
            if session is not None:
                # A client that names its session gets its default terminal back on reconnect.
                if not isinstance(session, str) or not 0 < len(session) <= 128:
                    raise InvalidParams("parameter 'session' must be a string of 1 to 128 chars")
                name_session = getattr(ctx, "name_session", None)
                if name_session is not None:
                    name_session(session)
            return {
                "serverInfo": {"name": SERVER_NAME, "version": __version__},
                "protocolVersion": PROTOCOL_VERSION,
                "capabilities": {
                    "methods": sorted({*self.state.methods, *self._promised}),
                    "batches": True,
                    "cancelRequest": ["id", "idempotencyKey"],
                    "idempotency": True,
                    "maxMessageBytes": self.state.limits.max_message_bytes,
                },
                "features": self.app.features(),
            }

        def shutdown(params: Params, ctx: CallContext) -> None:
            # After this answer is written: the reply goes out before the drain starts.
            asyncio.get_running_loop().call_soon(self.request_shutdown, "shutdown request")

        def ping(params: Params, ctx: CallContext) -> dict[str, bool]:
            return _PONG

        return {
            "initialize": method(initialize),
            "shutdown": method(shutdown),
            "exit": method(shutdown),
            "ping": method(ping),
        }

    # -- services opening after the listener ---------------------------------------------------
    def hold_until_open(self, names: Iterable[str] | None = None) -> None:
        """The app is not open yet: answer `ping`, `shutdown` and `exit` (they need nothing
        of it), and let everything else wait for `opened()` (`health/get` reports what
        opening restores, the SLOs, incidents). `initialize` lists the methods: it is answered
        at once when `names` says every method the app will serve, else it waits too."""
        if self.state.opening is None:
            early = {"ping", "shutdown", "exit"}
            if names is not None:
                self._promised = frozenset(names)
                early.add("initialize")
            self.state.served_while_opening = frozenset(early)
            loop = asyncio.get_running_loop()
            self.state.opening = loop.create_future()
            self.state.serving_changed = loop.create_future()

    def serve_early(self, methods: Mapping[str, Method]) -> None:
        """A service of the app is open before the others: its methods are served from now
        (a request for one waits only behind what this connection sent before it)."""
        if self.state.opening is None:
            return  # all open already: `opened()` added them
        for name, entry in methods.items():
            if name not in self._builtin_names:
                self.state.methods[name] = entry
        self.state.served_while_opening = self.state.served_while_opening | methods.keys()
        self._serving_changed()

    def _serving_changed(self) -> None:
        """Wake what waits for methods to join (`Dispatcher`), once for each change."""
        changed = self.state.serving_changed
        self.state.serving_changed = (
            asyncio.get_running_loop().create_future() if self.state.opening is not None else None
        )
        if changed is not None and not changed.done():
            changed.set_result(None)

    def opened(self, error: BaseException | None = None) -> None:
        """The services are open: their methods join the table and what waited runs. With
        `error` they failed: the server shuts down, and what waited is answered so."""
        opening, self.state.opening = self.state.opening, None
        self._promised = frozenset()  # the table itself is complete from here on
        if error is None:
            for name, entry in self.app.methods.items():
                if name not in self._builtin_names:
                    self.state.methods[name] = entry
        else:
            self.state.shutting_down = True  # answered -32002 from here on
            self.request_shutdown(f"the services failed to open: {error}")
        if opening is not None and not opening.done():
            if error is None:
                opening.set_result(None)
            else:
                opening.set_exception(error)
        self._serving_changed()

    # -- connections ----------------------------------------------------------------------
    @property
    def methods(self) -> Mapping[str, Method]:
        return self.state.methods

    @property
    def connections(self) -> dict[int, Peer]:
        return self.state.connections

    @property
    def shutting_down(self) -> bool:
        return self.state.shutting_down

    def _factory(self, label: str, needs_auth: bool = False) -> Callable[[], Connection]:
        state = self.state

        def make() -> Connection:
            state.counters.accepted += 1
            return Connection(state, next(self._ids), needs_auth=needs_auth, label=label)

        return make

    def reap_idle_connections(self, max_idle_s: float) -> int:
        """Close connections with nothing in flight and no data for `max_idle_s` (memory
        pressure: each holds buffers); their clients reconnect as after any disconnect."""
        now = self.clock.now()
        idle = [
            conn
            for conn in self.connections.values()
            if conn.label != "stdio" and not conn.inflight and now - conn.last_data >= max_idle_s
        ]
        for conn in idle:
            conn.close()
        self.reaped_connections += len(idle)
        if idle:
            log.warning("closed %d idle connection(s) to relieve memory pressure", len(idle))
        return len(idle)

    def broadcast(self, method_name: str, params: Any) -> None:
        """Send a notification to every connected client, encoded once."""
        try:
            frame = encode(jsonrpc.notification_bytes(method_name, params))
        except TypeError:
            log.exception("broadcast %s is not JSON-serialisable", method_name)
            return
        for conn in list(self.connections.values()):
            conn.write_frame(frame)

    # -- listeners ------------------------------------------------------------------------
    async def listen_unix(self, path: Path, sock: socket.socket | None = None) -> Path:
        """Serve on the Unix socket `path` (bound here, or already bound there: `sock`)."""
        if sock is None:
            sock = bind_unix_socket(path)
        try:
            # The backlog again: the loop listens once more when it starts serving, with its
            # own default (100), and uvloop refuses connections past it at once.
            listener = await asyncio.get_running_loop().create_unix_server(
                self._factory("unix"), sock=sock, backlog=LISTEN_BACKLOG
            )
        except BaseException:
            sock.close()
            remove_socket(path)
            raise
        self._listeners.append(listener)
        self.socket_path = path
        self._socket_identity = file_identity(path)
        return path

    async def listen_tcp(
        self, host: str, port: int, *, allow_remote: bool = False
    ) -> tuple[str, int]:
        if not self.state.token:
            raise PermissionDenied("a TCP listener needs a token (--token-file)")
        if not allow_remote and not _is_loopback(host):
            raise PermissionDenied(
                f"refusing to listen on non-loopback address {host!r} without --allow-remote"
            )
        listener = await asyncio.get_running_loop().create_server(
            self._factory("tcp", needs_auth=True), host, port, backlog=LISTEN_BACKLOG
        )
        self._listeners.append(listener)
        bound = listener.sockets[0].getsockname()
        return (str(bound[0]), int(bound[1]))

    async def serve_stdio(
        self, stdin: BinaryIO | None = None, stdout: BinaryIO | None = None
    ) -> Connection:
        """Serve one client over a pair of pipes (the editor's stdin/stdout)."""
        loop = asyncio.get_running_loop()
        conn = self._factory("stdio")()
        out_pipe = stdout if stdout is not None else sys.stdout.buffer
        in_pipe = stdin if stdin is not None else sys.stdin.buffer
        writer, _ = await loop.connect_write_pipe(lambda: _PipeWriter(conn), out_pipe)
        conn.attach_writer(writer)
        await loop.connect_read_pipe(lambda: conn, in_pipe)
        return conn

    # -- life cycle -----------------------------------------------------------------------
    def request_shutdown(self, reason: str = "requested") -> None:
        if self._stop.is_set():
            log.warning("second shutdown request (%s): not waiting for in-flight work", reason)
            self._force.set()
            return
        log.info("shutting down: %s", reason)
        self._stop.set()

    async def wait_for_shutdown(self) -> None:
        await self._stop.wait()

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.state.shutting_down = True
        self._stop.set()
        for listener in self._listeners:
            listener.close()
        if self.socket_path is not None:
            remove_socket(self.socket_path, self._socket_identity)
        await self._drain()
        for conn in list(self.connections.values()):
            conn.close()
        closing = [c.closed for c in self.connections.values()]
        if closing:
            with contextlib.suppress(TimeoutError):
                async with self.clock.timeout(1.0):
                    await asyncio.wait(closing)
        for conn in list(self.connections.values()):
            conn.abort()
        for listener in self._listeners:
            with contextlib.suppress(Exception):
                await listener.wait_closed()
        self._unsubscribe()
        self._uncount()
        self._unrelieve()
        self.journal.close()

    async def _drain(self) -> None:
        forced = asyncio.ensure_future(self._force.wait())
        try:
            async with self.clock.timeout(self.shutdown_grace):
                while not forced.done():
                    pending = [t for t in self._inflight_tasks() if not t.done()]
                    if not pending:
                        break
                    await asyncio.wait([*pending, forced], return_when=asyncio.FIRST_COMPLETED)
        except TimeoutError:
            log.warning("in-flight work outlived the %g s shutdown grace", self.shutdown_grace)
        finally:
            forced.cancel()
        left = [t for t in self._inflight_tasks() if not t.done()]
        for task in left:
            task.cancel()
        if left:
            await asyncio.gather(*left, return_exceptions=True)

    def _inflight_tasks(self) -> list[asyncio.Future[Any]]:
        tasks: list[asyncio.Future[Any]] = list(self.idempotency.tasks())
        for conn in self.connections.values():
            tasks.extend(conn.inflight_tasks())
        return tasks

    async def __aenter__(self) -> BridgeServer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def statistics(self) -> ServerStats:
        conns = list(self.connections.values())
        counts = self.state.counters
        return ServerStats(
            connections=len(conns),
            accepted=counts.accepted,
            requests=counts.requests_closed + sum(c.requests for c in conns),
            inflight=sum(c.inflight for c in conns),
            idempotent_running=self.idempotency.running,
            idempotent_replayed=self.idempotency.replayed,
            dropped_messages=counts.dropped_closed + sum(c.dropped for c in conns),
            slow_disconnects=counts.slow_disconnects,
            stalled_frames=counts.stalled_frames,
            auth_failures=counts.auth_failures,
            frame_errors=counts.frame_errors,
            invalid_messages=counts.invalid_messages,
            auth_timeouts=counts.auth_timeouts,
            idle_closed=counts.idle_closed,
        )


class _PipeWriter(asyncio.Protocol):
    """Flow control of the stdout pipe, forwarded to the stdio connection."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def pause_writing(self) -> None:
        self._conn.pause_writing()

    def resume_writing(self) -> None:
        self._conn.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._conn.close()


def _register_relief(app: ServerApp, server: BridgeServer) -> Callable[[], None]:
    """Offer idle connections to the app's resource manager, where it has one."""
    add_relief = getattr(app, "add_relief", None)
    if add_relief is None:
        return lambda: None
    from lapce_bridge.core.relief import Relief

    async def reap() -> int:
        return server.reap_idle_connections(IDLE_CONNECTION_S)

    unregister: Callable[[], None] = add_relief(Relief("connections", reap_idle=reap))
    return unregister


def _camel(name: str) -> str:
    first, *rest = name.split("_")
    return first + "".join(part.title() for part in rest)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


__all__ = ["CANCEL", "PROTOCOL_VERSION", "BridgeServer", "ServerApp", "ServerStats"]
