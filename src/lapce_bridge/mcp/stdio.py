"""MCP over stdin/stdout on the event loop's own pipes.

Theory of operation: the SDK's `stdio_server` reads and writes through anyio's
thread-backed files, so every message in and out costs a hop to a worker thread and back
(most of a small tool call's latency on a busy machine). This transport gives the SDK's
low-level `Server.run` a read stream and a write stream (the SDK's `ReadStream` and
`WriteStream` protocols) that are the `asyncio` pipe transports themselves, on private
duplicates of fd 0 and fd 1: `receive` reads one line and parses it with the SDK's own
message models, `send` writes one line. No threads, no memory-object streams and no relay
tasks between the pipes and the SDK's dispatcher (each cost task switches on every
message).

As with the SDK's transport, fd 0 points at the null device and fd 1 at stderr while
serving, so children and stray prints never touch the wire; both are restored on exit.
When stdin or stdout is not a pipe, socket or terminal (a regular file), asyncio cannot
watch it and the SDK's transport is used instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import stat
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Any

import anyio
import mcp_types as types
import orjson
from mcp.shared.message import SessionMessage

LINE_LIMIT = 256 * 1024 * 1024  # one message a line; a write_file of a big file is one line


def watchable(fd: int) -> bool:
    """True when asyncio can watch `fd` (a pipe, socket or character device)."""
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or stat.S_ISCHR(mode)


@contextlib.contextmanager
def _claimed(fd: int, diversion: int) -> Any:
    """A private duplicate of `fd`, with `fd` itself pointed at `diversion` meanwhile."""
    private = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3)
    try:
        os.dup2(diversion, fd)
    finally:
        os.close(diversion)
    try:
        yield private
    finally:
        os.dup2(private, fd)
        os.close(private)


def encode(message: types.JSONRPCMessage) -> bytes:
    """One message as a line. An answer's result is plain JSON data already (the SDK dumps
    it before wrapping it), so orjson writes it, a few times faster than the model's own
    dump of a large result; anything orjson cannot write, and every other message, is
    dumped by its model."""
    if type(message) is types.JSONRPCResponse:
        try:
            return orjson.dumps(
                {"jsonrpc": "2.0", "id": message.id, "result": message.result},
                option=orjson.OPT_APPEND_NEWLINE,
            )
        except TypeError:
            pass
    return message.model_dump_json(by_alias=True, exclude_unset=True).encode() + b"\n"


class LineReader:
    """The SDK's `ReadStream` on a pipe: one message a line, or the error that line gave (a
    line over the limit, or not a JSON-RPC message; the SDK answers or logs it), until EOF."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self._reader = reader
        self._closed = False

    async def receive(self) -> SessionMessage | Exception:
        while True:
            if self._closed:
                raise anyio.ClosedResourceError
            try:
                line = await self._reader.readline()
            except (ValueError, asyncio.LimitOverrunError) as exc:  # a line over the limit
                return exc
            if not line:
                raise anyio.EndOfStream
            if not line.strip():
                continue
            try:
                message = types.jsonrpc_message_adapter.validate_json(line, by_name=False)
            except Exception as exc:
                return exc
            return SessionMessage(message)

    def __aiter__(self) -> LineReader:
        return self

    async def __anext__(self) -> SessionMessage | Exception:
        try:
            return await self.receive()
        except anyio.EndOfStream:
            raise StopAsyncIteration from None

    async def aclose(self) -> None:
        self._closed = True

    async def __aenter__(self) -> LineReader:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


class LineWriter:
    """The SDK's `WriteStream` on a pipe: each message written as one line, in the order
    `send` is called (one `write` a message, so concurrent senders never interleave), with
    the pipe's flow control (`drain`) holding a sender back while the reader lags."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._writer = writer
        self._closed = False

    async def send(self, item: SessionMessage, /) -> None:
        if self._closed:
            raise anyio.ClosedResourceError
        self._writer.write(encode(item.message))
        await self._writer.drain()

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            with contextlib.suppress(ConnectionError):
                await self._writer.drain()  # what is written goes out before the pipe closes

    async def __aenter__(self) -> LineWriter:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


@contextlib.asynccontextmanager
async def pipe_stdio() -> AsyncIterator[tuple[LineReader, LineWriter]]:
    """The (read, write) streams `Server.run` takes, served on fd 0 and fd 1."""
    loop = asyncio.get_running_loop()
    with (
        _claimed(0, os.open(os.devnull, os.O_RDONLY)) as in_fd,
        _claimed(1, os.dup(2)) as out_fd,
    ):
        reader = asyncio.StreamReader(limit=LINE_LIMIT)
        in_transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(in_fd, "rb", closefd=False)
        )
        out_transport, out_protocol = await loop.connect_write_pipe(
            asyncio.streams.FlowControlMixin, os.fdopen(out_fd, "wb", closefd=False)
        )
        writer = asyncio.StreamWriter(out_transport, out_protocol, None, loop)
        lines_out = LineWriter(writer)
        try:
            yield LineReader(reader), lines_out
        finally:
            with contextlib.suppress(Exception):
                await lines_out.aclose()
            in_transport.close()
            out_transport.close()


__all__ = ["LineReader", "LineWriter", "encode", "pipe_stdio", "watchable"]
