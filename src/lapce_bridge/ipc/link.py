"""The client's link to one server: at most one open connection, plain calls over it.

Theory of operation: `open()` connects (over a Unix socket or TCP; a supervised server is
started first) and completes the `initialize` handshake before the new `Wire` becomes the
current one, so a half-open connection is never used. `call()` sends one request on the
current wire and waits for its answer on the injected clock; `send()` puts a message on the
wire for a waiter of the caller's (the recovery path's outbox entries). Notifications go to
the handlers registered with `on_notification`. When the current wire is lost, its waiters
learn it from the wire, then each `on_lost` listener is told (the recovery path reconnects).
A plain call never outlives its connection: it fails with `ConnectionLost`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lapce_bridge import __version__
from lapce_bridge.core.clock import Clock
from lapce_bridge.core.errors import BridgeTimeout, ConnectionLost
from lapce_bridge.ipc import jsonrpc
from lapce_bridge.ipc.spawn import ServerSupervisor
from lapce_bridge.ipc.wire import FutureWaiter, Waiter, Wire

log = logging.getLogger("lapce_bridge.client")

NotificationHandler = Callable[[Any], None]


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where the server listens and how to introduce ourselves to it."""

    socket_path: Path
    tcp: tuple[str, int] | None = None
    token: str | None = None
    client_name: str = "lapce-bridge-client"
    session: str | None = None  # named in `initialize`: the default terminal comes back

    def __str__(self) -> str:
        return f"tcp:{self.tcp[0]}:{self.tcp[1]}" if self.tcp else str(self.socket_path)


class Link:
    def __init__(
        self, endpoint: Endpoint, clock: Clock, supervisor: ServerSupervisor | None = None
    ) -> None:
        self.endpoint = endpoint
        self.clock = clock
        self.supervisor = supervisor
        self.wire: Wire | None = None
        self.server_info: dict[str, Any] | None = None
        self.closed = False
        self._ids = itertools.count(1)
        self._handlers: dict[str, list[NotificationHandler]] = {}
        self._lost_listeners: list[Callable[[ConnectionLost], None]] = []

    @property
    def connected(self) -> bool:
        return self.wire is not None and not self.wire.lost

    def current(self) -> Wire:
        """The open wire, or `ConnectionLost`."""
        wire = self.wire
        if wire is None or wire.lost:
            raise ConnectionLost(f"not connected to {self.endpoint}")
        return wire

    async def open(self) -> None:
        """Connect and shake hands; `ConnectionLost` when nobody answers."""
        if self.supervisor is not None:
            await self.supervisor.ensure_running()
        loop = asyncio.get_running_loop()
        endpoint = self.endpoint

        def protocol() -> Wire:
            return Wire(str(endpoint), self._notified, self._wire_lost)

        try:
            if endpoint.tcp is not None:
                _, wire = await loop.create_connection(protocol, *endpoint.tcp)
            else:
                _, wire = await loop.create_unix_connection(protocol, str(endpoint.socket_path))
        except OSError as exc:
            raise ConnectionLost(f"cannot connect to {endpoint}: {exc}") from exc
        params: dict[str, Any] = {
            "protocolVersion": 1,
            "clientInfo": {"name": endpoint.client_name, "version": __version__},
        }
        if endpoint.token is not None:
            params["token"] = endpoint.token
        if endpoint.session is not None:
            params["session"] = endpoint.session
        try:
            self.server_info = await self.call_on(wire, "initialize", params, 10.0)
        except BaseException:
            wire.close()
            raise
        if self.closed:  # closed during the handshake
            wire.close()
            raise ConnectionLost("the client is closed")
        self.wire = wire

    async def call(
        self,
        method: str,
        params: Any,
        timeout: float | None,  # noqa: ASYNC109 - on the injected clock
        *,
        cancel: bool,
    ) -> Any:
        return await self.call_on(self.current(), method, params, timeout, cancel=cancel)

    async def call_on(
        self,
        wire: Wire,
        method: str,
        params: Any,
        timeout: float | None,  # noqa: ASYNC109 - on the injected clock
        *,
        cancel: bool = True,
    ) -> Any:
        """One request on `wire`; when `timeout` passes, `BridgeTimeout` saying how to find
        the work again (its `idempotencyKey`), cancelled on the server only if `cancel`."""
        msg_id = next(self._ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        wire.expect(msg_id, FutureWaiter(future))
        try:
            wire.send(jsonrpc.request_bytes(msg_id, method, params))
            async with self.clock.timeout(timeout):
                return await future
        except TimeoutError as exc:
            data: dict[str, Any] = {"operation": method, "seconds": timeout, "cancelled": cancel}
            key = params.get("idempotencyKey") if type(params) is dict else None
            if key is not None:
                data["idempotencyKey"] = key
            if cancel:
                self.cancel_on(wire, {"id": msg_id})
                how = "cancelled"
            elif key is not None:
                how = f"still running: send it again with idempotencyKey {key!r} for its result"
            else:
                how = "still running on the server"
            raise BridgeTimeout(
                f"{method}: no answer within {timeout:g} s ({how})", data=data
            ) from exc
        except asyncio.CancelledError:
            if not future.done():
                self.cancel_on(wire, {"id": msg_id})
            raise
        finally:
            wire.forget(msg_id)

    def send(self, wire: Wire, method: str, params: Any, waiter: Waiter) -> int:
        """Put a request on `wire` for `waiter`; its message id. `ConnectionLost` if it
        cannot be written (nothing stays registered then)."""
        msg_id = next(self._ids)
        wire.expect(msg_id, waiter)
        try:
            wire.send(jsonrpc.request_bytes(msg_id, method, params))
        except ConnectionLost:
            wire.forget(msg_id)
            raise
        return msg_id

    def notify(self, method: str, params: Any = None) -> None:
        self.current().send(jsonrpc.notification_bytes(method, params))

    def cancel_on(self, wire: Wire, params: dict[str, Any]) -> None:
        with contextlib.suppress(ConnectionLost):
            wire.send(jsonrpc.notification_bytes("$/cancelRequest", params))

    def on_notification(self, method: str, handler: NotificationHandler) -> Callable[[], None]:
        """Call `handler(params)` for each notification `method`; returns an unsubscribe."""
        self._handlers.setdefault(method, []).append(handler)

        def remove() -> None:
            handlers = self._handlers.get(method, [])
            if handler in handlers:
                handlers.remove(handler)

        return remove

    def on_lost(self, listener: Callable[[ConnectionLost], None]) -> None:
        """Call `listener(error)` each time the current connection is lost (not after close)."""
        self._lost_listeners.append(listener)

    def _notified(self, method: str, params: Any) -> None:
        for handler in list(self._handlers.get(method, ())):
            try:
                handler(params)
            except Exception:
                log.exception("notification handler for %s failed", method)

    def _wire_lost(self, wire: Wire, lost: ConnectionLost) -> None:
        if self.wire is not wire:
            return  # a handshake that failed, or a wire already replaced
        self.wire = None
        if self.closed:
            return
        for listener in list(self._lost_listeners):
            listener(lost)

    def close(self) -> None:
        self.closed = True
        wire, self.wire = self.wire, None
        if wire is not None:
            wire.close()


__all__ = ["Endpoint", "Link", "NotificationHandler"]
