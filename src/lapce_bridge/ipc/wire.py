"""One client connection: an asyncio Protocol with the framing codec and its waiters.

Theory of operation: every request sent on a wire registers a `Waiter` under its message id
(`expect`). An answer goes to its waiter (`answered`); a notification goes to the wire's
`on_notification` callback. When the connection is gone, every waiter still registered is
told once (`lost`), then the `on_lost` callback; so everything waiting on a lost connection
is found in one place, and the wire knows nothing of what its waiters are (a plain call's
future, a recovery entry).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, Protocol

import orjson

from lapce_bridge.core.errors import ConnectionLost
from lapce_bridge.ipc import jsonrpc
from lapce_bridge.ipc.framing import Frame, FrameDecoder, encode

log = logging.getLogger("lapce_bridge.client")


class Waiter(Protocol):
    """What waits for the answer to one message id."""

    def answered(self, msg: dict[str, Any]) -> None: ...

    def lost(self, exc: ConnectionLost) -> None: ...


class FutureWaiter:
    """A plain call's waiter: the answer settles the future; a lost connection fails it."""

    __slots__ = ("future",)

    def __init__(self, future: asyncio.Future[Any]) -> None:
        self.future = future

    def answered(self, msg: dict[str, Any]) -> None:
        if not self.future.done():
            settle(self.future, msg)

    def lost(self, exc: ConnectionLost) -> None:
        if not self.future.done():
            self.future.set_exception(exc)


class Wire(asyncio.Protocol):
    def __init__(
        self,
        where: str,
        on_notification: Callable[[str, Any], None],
        on_lost: Callable[[Wire, ConnectionLost], None],
    ) -> None:
        self.where = where
        self.on_notification = on_notification
        self.on_lost = on_lost
        self.decoder = FrameDecoder(1 << 30)
        self.transport: asyncio.Transport | None = None
        self.waiters: dict[int, Waiter] = {}
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        for event in self.decoder.feed(data):
            if type(event) is Frame:
                try:
                    message = orjson.loads(event.body)
                except orjson.JSONDecodeError:
                    log.warning("the server sent invalid JSON; ignored")
                    continue
                for msg in message if type(message) is list else [message]:
                    if type(msg) is dict:
                        self._route(msg)

    def _route(self, msg: dict[str, Any]) -> None:
        method = msg.get("method")
        if method is not None:
            self.on_notification(method, msg.get("params"))
            return
        msg_id = msg.get("id")
        if type(msg_id) is int:
            waiter = self.waiters.pop(msg_id, None)
            if waiter is not None:
                waiter.answered(msg)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        lost = ConnectionLost(f"connection to {self.where} lost" + (f": {exc}" if exc else ""))
        waiters = list(self.waiters.values())
        self.waiters.clear()
        for waiter in waiters:
            waiter.lost(lost)
        self.on_lost(self, lost)

    def expect(self, msg_id: int, waiter: Waiter) -> None:
        self.waiters[msg_id] = waiter

    def forget(self, msg_id: int) -> None:
        self.waiters.pop(msg_id, None)

    def send(self, payload: bytes) -> None:
        if self.transport is None or self.lost or self.transport.is_closing():
            raise ConnectionLost("not connected to the server")
        self.transport.write(encode(payload))

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def settle(future: asyncio.Future[Any], msg: dict[str, Any]) -> None:
    error = msg.get("error")
    if error is not None:
        future.set_exception(
            jsonrpc.error_from_wire(error if type(error) is dict else {"message": str(error)})
        )
    else:
        future.set_result(msg.get("result"))


__all__ = ["FutureWaiter", "Waiter", "Wire", "settle"]
