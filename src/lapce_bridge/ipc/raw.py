"""Minimal framed clients with no recovery: for probes, benchmarks and protocol tests.

`RawClient` (asyncio) and `BlockingRawClient` (a plain socket) send any bytes or message and
read back decoded messages in arrival order, nothing more: no ids are matched, nothing is
retried, so a test sees exactly what the server sent. `BridgeClient` is the real client.
"""

from __future__ import annotations

import asyncio
import itertools
import socket
from collections import deque
from pathlib import Path
from typing import Any

import orjson

from lapce_bridge.core.errors import ConnectionLost
from lapce_bridge.ipc.framing import Frame, FrameDecoder, encode


def frame(message: Any) -> bytes:
    return encode(orjson.dumps(message))


class RawClient:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self._decoder = FrameDecoder(1 << 30)
        self._pending: deque[Any] = deque()
        self._ids = itertools.count(1)

    @classmethod
    async def connect_unix(cls, path: Path | str) -> RawClient:
        reader, writer = await asyncio.open_unix_connection(str(path), limit=1 << 22)
        return cls(reader, writer)

    @classmethod
    async def connect_tcp(cls, host: str, port: int) -> RawClient:
        reader, writer = await asyncio.open_connection(host, port, limit=1 << 22)
        return cls(reader, writer)

    def send_bytes(self, data: bytes) -> None:
        self.writer.write(data)

    def send(self, message: Any) -> None:
        self.writer.write(frame(message))

    def request_nowait(self, method: str, params: Any = None, msg_id: Any = None) -> Any:
        msg_id = next(self._ids) if msg_id is None else msg_id
        msg: dict[str, Any] = {"jsonrpc": "2.0", "id": msg_id, "method": method}
        if params is not None:
            msg["params"] = params
        self.send(msg)
        return msg_id

    def notify(self, method: str, params: Any = None) -> None:
        msg: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
        if params is not None:
            msg["params"] = params
        self.send(msg)

    async def recv(self) -> Any:
        """The next message the server sent (ConnectionLost at end of stream)."""
        while not self._pending:
            data = await self.reader.read(1 << 16)
            if not data:
                raise ConnectionLost("the server closed the connection")
            for event in self._decoder.feed(data):
                if isinstance(event, Frame):
                    self._pending.append(orjson.loads(event.body))
        return self._pending.popleft()

    async def response(self, msg_id: Any) -> Any:
        """The response to `msg_id`, skipping notifications (kept for `notifications`)."""
        skipped: list[Any] = []
        try:
            while True:
                msg = await self.recv()
                if isinstance(msg, dict) and "method" not in msg and msg.get("id") == msg_id:
                    return msg
                skipped.append(msg)
        finally:
            self._pending.extendleft(reversed(skipped))

    async def request(self, method: str, params: Any = None) -> Any:
        return await self.response(self.request_nowait(method, params))

    async def drain(self) -> None:
        await self.writer.drain()

    async def at_eof(self) -> bool:
        """Read what is left until the server closes the connection, then close ours."""
        try:
            while await self.reader.read(1 << 16):
                pass
        except ConnectionError:
            pass
        await self.close()
        return True

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except ConnectionError:
            pass


class BlockingRawClient:
    """A plain blocking socket client: the floor for round-trip measurements."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._decoder = FrameDecoder(1 << 30)
        self._pending: deque[bytes] = deque()

    @classmethod
    def connect_unix(cls, path: Path | str, timeout: float | None = 10.0) -> BlockingRawClient:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        sock.connect(str(path))
        return cls(sock)

    def send_bytes(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv_body(self) -> bytes:
        while not self._pending:
            data = self.sock.recv(1 << 16)
            if not data:
                raise ConnectionLost("the server closed the connection")
            for event in self._decoder.feed(data):
                if isinstance(event, Frame):
                    self._pending.append(event.body)
        return self._pending.popleft()

    def recv(self) -> Any:
        return orjson.loads(self.recv_body())

    def close(self) -> None:
        self.sock.close()


__all__ = ["BlockingRawClient", "RawClient", "frame"]
