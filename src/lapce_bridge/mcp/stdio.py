"""MCP over stdin/stdout on the event loop's own pipes.

Theory of operation: the SDK's `stdio_server` reads and writes through anyio's
thread-backed files, so every message in and out costs a hop to a worker thread and back
(most of a small tool call's latency on a busy machine). This transport gives the SDK's
low-level `Server.run` the same pair of streams, fed by `asyncio` pipe transports on
private duplicates of fd 0 and fd 1: one JSON-RPC message a line, parsed and dumped with
the SDK's own message models, no threads.

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
from typing import Any

import anyio
import mcp_types as types
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
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


async def _read_lines(
    reader: asyncio.StreamReader, sink: MemoryObjectSendStream[SessionMessage | Exception]
) -> None:
    async with sink:
        while True:
            try:
                line = await reader.readline()
            except (ValueError, asyncio.LimitOverrunError) as exc:  # a line over the limit
                await sink.send(exc)
                continue
            if not line:
                return
            if not line.strip():
                continue
            try:
                message = types.jsonrpc_message_adapter.validate_json(line, by_name=False)
            except Exception as exc:
                await sink.send(exc)
                continue
            await sink.send(SessionMessage(message))


async def _write_lines(
    writer: asyncio.StreamWriter, source: MemoryObjectReceiveStream[SessionMessage]
) -> None:
    async with source:
        async for item in source:
            data = item.message.model_dump_json(by_alias=True, exclude_unset=True)
            writer.write(data.encode() + b"\n")
            await writer.drain()


@contextlib.asynccontextmanager
async def pipe_stdio() -> AsyncIterator[
    tuple[
        MemoryObjectReceiveStream[SessionMessage | Exception],
        MemoryObjectSendStream[SessionMessage],
    ]
]:
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
        incoming_tx, incoming_rx = anyio.create_memory_object_stream[SessionMessage | Exception](0)
        outgoing_tx, outgoing_rx = anyio.create_memory_object_stream[SessionMessage](0)
        reading = anyio.CancelScope()

        async def read_until_cancelled() -> None:
            with reading:
                await _read_lines(reader, incoming_tx)

        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(read_until_cancelled)
                tg.start_soon(_write_lines, writer, outgoing_rx)
                try:
                    yield incoming_rx, outgoing_tx
                finally:
                    reading.cancel()
                    outgoing_tx.close()  # the writer sends what is queued, then ends
        finally:
            in_transport.close()
            out_transport.close()


__all__ = ["pipe_stdio", "watchable"]
