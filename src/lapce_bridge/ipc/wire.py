"""One client connection: an asyncio Protocol with the framing codec, nothing more.

It decodes what arrives into messages for its owner (`on_message`, batches split) and tells
the owner once when it is gone (`on_lost`); the owner keeps the maps of what is pending on
it, so everything waiting on a lost connection is found in one place.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Protocol

import orjson

from lapce_bridge.core.errors import ConnectionLost
from lapce_bridge.ipc import jsonrpc
from lapce_bridge.ipc.framing import Frame, FrameDecoder, encode
from lapce_bridge.ipc.outbox import OutboxEntry

log = logging.getLogger("lapce_bridge.client")


class WireOwner(Protocol):
    def _on_message(self, wire: Wire, msg: dict[str, Any]) -> None: ...

    def _on_lost(self, wire: Wire, exc: Exception | None) -> None: ...


class Wire(asyncio.Protocol):
    def __init__(self, client: WireOwner) -> None:
        self.client = client
        self.decoder = FrameDecoder(1 << 30)
        self.transport: asyncio.Transport | None = None
        self.pending: dict[int, asyncio.Future[Any]] = {}
        self.entries: dict[int, OutboxEntry] = {}
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
                        self.client._on_message(self, msg)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.client._on_lost(self, exc)

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


__all__ = ["Wire", "WireOwner", "settle"]
