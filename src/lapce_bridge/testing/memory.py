"""An in-memory transport: services driven through the real connection and dispatcher.

`MemoryServer` holds a real `ServerState` over a method table (a service's `methods()`, say)
and `connect()` gives a `MemoryClient` wired to a real `ipc.connection.Connection` by a pair
of in-memory transports instead of a socket. Everything between the bytes and the handler is
the production code: framing, validation, admission, the dispatcher's limits and timeouts,
idempotency, cancellation, observation, encoding. Only the socket is missing, so a service
test sees exactly what a client would, errors included (raised as their classified
`BridgeError`), and notifications arrive as they would on the wire.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Mapping
from typing import Any

import orjson

from lapce_bridge.clock import SYSTEM_CLOCK
from lapce_bridge.core.clock import Clock
from lapce_bridge.core.errors import ConnectionLost
from lapce_bridge.core.timeouts import TimeoutManager
from lapce_bridge.ipc import jsonrpc
from lapce_bridge.ipc.connection import Connection
from lapce_bridge.ipc.framing import Frame, FrameDecoder, encode
from lapce_bridge.ipc.idempotency import Idempotency
from lapce_bridge.ipc.journal import IdempotencyJournal
from lapce_bridge.ipc.state import Limits, ServerState
from lapce_bridge.rpc import Method, Observe


class _ServerSide(asyncio.Transport):
    """The transport a `Connection` writes to: bytes go straight to the client's decoder."""

    def __init__(self, client: MemoryClient) -> None:
        super().__init__()
        self._client = client
        self._closing = False
        self._reading = True

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not self._closing:
            self._client._received(bytes(data))

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        if not self._closing:
            self._closing = True
            asyncio.get_running_loop().call_soon(self._client._server_closed)

    def abort(self) -> None:
        self.close()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0  # the client reads everything at once: never a full buffer

    def pause_reading(self) -> None:
        self._reading = False

    def resume_reading(self) -> None:
        self._reading = True

    def is_reading(self) -> bool:
        return self._reading


class MemoryClient:
    """One connection's client end: requests, notifications received, close."""

    def __init__(self, server: MemoryServer, connection: Connection) -> None:
        self.server = server
        self.connection = connection
        self.notes: list[tuple[str, Any]] = []
        # What each write of the server held, in order: a notification's method, or
        # "answer" for a response (a notification riding with its answer shares its write).
        self.writes: list[list[str]] = []
        self.noted = asyncio.Event()
        self._decoder = FrameDecoder(1 << 31)
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._ids = itertools.count(1)
        self.closed = False

    @property
    def connection_id(self) -> int:
        return self.connection.id

    async def request(self, method: str, params: Any = None) -> Any:
        """The result; a server error is raised as its classified `BridgeError`."""
        future = self.send(method, params)
        return await future

    def send(self, method: str, params: Any = None) -> asyncio.Future[Any]:
        """Send a request and return the future of its result (for cancel tests)."""
        if self.closed:
            raise ConnectionLost("the in-memory connection is closed")
        msg_id = next(self._ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[msg_id] = future
        self.connection.data_received(encode(jsonrpc.request_bytes(msg_id, method, params)))
        future.request_id = msg_id  # type: ignore[attr-defined]
        return future

    def notify(self, method: str, params: Any = None) -> None:
        self.connection.data_received(encode(jsonrpc.notification_bytes(method, params)))

    def cancel(self, future: asyncio.Future[Any]) -> None:
        """`$/cancelRequest` for a request made with `send`."""
        self.notify("$/cancelRequest", {"id": future.request_id})  # type: ignore[attr-defined]

    def _received(self, data: bytes) -> None:
        held: list[str] = []
        self.writes.append(held)
        for event in self._decoder.feed(data):
            if type(event) is not Frame:
                continue
            message = orjson.loads(event.body)
            for msg in message if type(message) is list else [message]:
                held.append(msg.get("method", "answer"))
                self._message(msg)

    def _message(self, msg: dict[str, Any]) -> None:
        if "method" in msg:
            self.notes.append((msg["method"], msg.get("params")))
            self.noted.set()
            return
        future = self._pending.pop(msg.get("id"), None)  # type: ignore[arg-type]
        if future is None or future.done():
            return
        error = msg.get("error")
        if error is not None:
            future.set_exception(jsonrpc.error_from_wire(error))
        else:
            future.set_result(msg.get("result"))

    def _server_closed(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.connection.connection_lost(None)
        lost = ConnectionLost("the in-memory connection was closed")
        for future in self._pending.values():
            if not future.done():
                future.set_exception(lost)
                future.exception()
        self._pending.clear()

    def close(self) -> None:
        """Disconnect, as a client closing its socket: the connection's close callbacks run."""
        self._server_closed()


class MemoryServer:
    """A real `ServerState` over a method table, reached through in-memory connections."""

    def __init__(
        self,
        methods: Mapping[str, Method],
        *,
        clock: Clock | None = None,
        timeouts: TimeoutManager | None = None,
        observe: Observe | None = None,
        limits: Limits | None = None,
    ) -> None:
        self.clock = clock if clock is not None else SYSTEM_CLOCK
        self.observed: list[tuple[str, float, bool]] = []
        self.errors: list[tuple[str, BaseException]] = []  # every error answer, classified
        self.journal = IdempotencyJournal(None).open()
        self.state = ServerState(
            clock=self.clock,
            methods=dict(methods),
            timeouts=timeouts or TimeoutManager(clock=self.clock),
            observe=observe or self._observe,
            admit=lambda name: None,
            idempotency=Idempotency(self.journal),
            limits=limits or Limits(),
            on_error=lambda name, error: self.errors.append((name, error)),
        )
        self._ids = itertools.count(1)
        self.clients: list[MemoryClient] = []

    def _observe(self, name: str, seconds: float, ok: bool) -> None:
        self.observed.append((name, seconds, ok))

    def connect(self) -> MemoryClient:
        connection = Connection(self.state, next(self._ids), label="memory")
        client = MemoryClient(self, connection)
        connection.connection_made(_ServerSide(client))
        self.clients.append(client)
        return client

    async def aclose(self) -> None:
        for client in self.clients:
            client.close()
        tasks = [t for c in self.clients for t in c.connection.inflight_tasks() if not t.done()]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self.journal.close()


__all__ = ["MemoryClient", "MemoryServer"]
