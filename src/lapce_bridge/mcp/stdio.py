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

The connection is served in the protocol era the client's first request opens, as the
SDK's `Server.run` does, but without its relay: `Server.run` reads that request ahead and
then copies every later message through a memory stream and a task of its own into the
dispatcher (a task switch on every message, about a fifth of the server's CPU for a small
call). Here the reader itself keeps what it read ahead (`LineReader.opening_request`), so a
handshake connection (the client opens with `initialize`, as every client of the 2025 eras
does) goes straight to the SDK's own handshake loop (`serve_loop`'s recipe, the one its
Streamable HTTP sessions run, with the handler tasks of `mcp.dispatcher`) on these
streams; a connection opened with a 2026-07-28 envelope takes `Server.run`'s path
unchanged (`serve_pipes`). On a handshake connection a request carrying that envelope is
refused as `Server.run` refuses it (`refuse_envelopes`), and a plain tool call is answered
by the `ToolCallLane` straight from the dispatcher, written as one line (`send_line`), when
nothing but our own middleware would see it (`mcp.dispatcher`).

As with the SDK's transport, fd 0 points at the null device and fd 1 at stderr while
serving, so children and stray prints never touch the wire; both are restored on exit.
When stdin or stdout is not a pipe, socket or terminal (a regular file), asyncio cannot
watch it and the SDK's transport is used instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import fcntl
import logging
import os
import stat
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import anyio
import mcp_types as types
import orjson
from anyio.abc import AsyncResource
from mcp.server.connection import Connection
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.server.lowlevel import Server
from mcp.server.runner import serve_connection, serve_loop
from mcp.shared.exceptions import MCPError
from mcp.shared.message import SessionMessage
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS

from lapce_bridge.mcp.dispatcher import AsyncioDispatcher, parse_call, usable
from lapce_bridge.mcp.server import ToolCallLane
from lapce_bridge.mcp.tasks import TaskMiddleware

log = logging.getLogger("lapce_bridge.mcp")

LINE_LIMIT = 256 * 1024 * 1024  # one message a line; a write_file of a big file is one line
LEAD_LIMIT = 8  # frames kept from before the first request (the SDK's replay keeps as many)
_CALL = b'"tools/call"'  # a line that may be a plain tool call (`parse_call`)


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


class LineReader(AsyncResource):
    """The SDK's `ReadStream` on a pipe: one message a line, or the error that line gave (a
    line over the limit, or not a JSON-RPC message; the SDK answers or logs it), until EOF.
    (`AsyncResource`: a context manager that closes it.)"""

    # The SDK's read loop asks every stream for the sender's context of each message (only
    # its in-memory streams carry one): a class attribute answers it without the failed
    # attribute lookup a `getattr(..., None)` on a missing attribute costs.
    last_context: contextvars.Context | None = None

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self._reader = reader
        self._closed = False
        self._ahead: deque[SessionMessage | Exception] = deque()

    async def opening_request(self) -> types.JSONRPCRequest | None:
        """The client's first request, read ahead: it and what came before it (up to
        `LEAD_LIMIT` frames; more are dropped, as the SDK's replay drops them) are what
        `receive` gives next. None when the pipe closes before a request."""
        while True:
            try:
                item = await self._read()
            except anyio.EndOfStream:
                return None
            if isinstance(item, SessionMessage) and isinstance(item.message, types.JSONRPCRequest):
                self._ahead.append(item)
                return item.message
            if len(self._ahead) >= LEAD_LIMIT:
                log.debug("dropped a frame received before the first request: %r", item)
                continue
            self._ahead.append(item)

    async def receive(self) -> SessionMessage | Exception:
        if self._ahead:
            return self._ahead.popleft()
        return await self._read()

    async def _read(self) -> SessionMessage | Exception:
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
            if _CALL in line and (call := parse_call(line)) is not None:
                return call  # the SDK's model of it is built only if the SDK serves it
            try:
                message = types.jsonrpc_message_adapter.validate_json(line, by_name=False)
            except Exception as exc:
                return exc
            return SessionMessage(message)

    def __aiter__(self) -> LineReader:
        return self

    async def __anext__(self) -> SessionMessage | Exception:
        try:
            # `receive` written out: the SDK's read loop comes here for every message, and
            # awaiting `receive` would add a coroutine to each.
            if self._ahead:
                return self._ahead.popleft()
            return await self._read()
        except anyio.EndOfStream:
            raise StopAsyncIteration from None

    async def aclose(self) -> None:
        self._closed = True


class LineWriter(AsyncResource):
    """The SDK's `WriteStream` on a pipe: each message written as one line, in the order
    `send` is called (one `write` a message, so concurrent senders never interleave), with
    the pipe's flow control (`drain`) holding a sender back while the reader lags."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._writer = writer
        self._closed = False

    async def send(self, item: SessionMessage, /) -> None:
        await self.send_line(encode(item.message))

    async def send_line(self, line: bytes) -> None:
        """One message encoded already (a line, its newline included)."""
        if self._closed:
            raise anyio.ClosedResourceError
        self._writer.write(line)
        await self._writer.drain()

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            with contextlib.suppress(ConnectionError):
                await self._writer.drain()  # what is written goes out before the pipe closes


def opens_modern(request: types.JSONRPCRequest | None) -> bool:
    """Whether a connection's first request opens the 2026-07-28 era (the SDK's own test:
    anything but `initialize`, carrying the envelope's protocol version)."""
    return request is not None and request.method != "initialize" and _enveloped(request.params)


def _enveloped(params: Mapping[str, Any] | None) -> bool:
    meta = (params or {}).get("_meta")
    return isinstance(meta, Mapping) and types.PROTOCOL_VERSION_META_KEY in meta


async def refuse_envelopes(
    ctx: ServerRequestContext[Any, Any], call_next: CallNext
) -> HandlerResult:
    """The server middleware that refuses, on a handshake connection, a request carrying
    the 2026-07-28 envelope, with `Server.run`'s own error (INVALID_REQUEST, its words)."""
    if (
        ctx.method != "initialize"
        and ctx.protocol_version in HANDSHAKE_PROTOCOL_VERSIONS
        and _enveloped(ctx.params)
    ):
        raise MCPError(
            code=types.INVALID_REQUEST,
            message="this connection serves the handshake protocol era; "
            "requests carrying the 2026-07-28 envelope are not accepted on it",
        )
    return await call_next(ctx)


async def serve_pipes(server: Server[Any], read: LineReader, write: LineWriter) -> None:
    """Serve one stdio connection until the client closes it, in the era its first request
    opens (see the module docstring)."""
    options = server.create_initialization_options()
    if opens_modern(await read.opening_request()):
        await server.run(read, write, options)
        return
    # Outermost: an enveloped call must not reach the middleware that would answer it.
    server.middleware.insert(0, refuse_envelopes)
    async with server.lifespan(server) as state:
        if not usable():  # an SDK whose dispatcher spawns otherwise: its own loop, as is
            await serve_loop(server, read, write, lifespan_state=state, init_options=options)
            return
        # `serve_loop`'s recipe (its dispatcher, `initialize` inline, a loop connection),
        # with handler tasks started on asyncio directly and plain tool calls answered
        # without the SDK's per-request machinery (`mcp.dispatcher`).
        lane = next((m for m in server.middleware if isinstance(m, ToolCallLane)), None)
        checked: list[Any] = []  # the middleware list last found to be ours alone

        def direct(params: Mapping[str, Any]) -> Callable[[], Awaitable[dict[str, Any]]] | None:
            # What the SDK would do first for this request, the lane does as it would: an
            # initialized handshake-era session, no middleware but ours.
            if (
                lane is None
                or connection.client_params is None
                or connection.protocol_version not in HANDSHAKE_PROTOCOL_VERSIONS
            ):
                return None
            if server.middleware != checked:
                if not all(_ours(m) for m in server.middleware):
                    return None
                checked[:] = server.middleware
            return lane.direct(params)

        dispatcher = AsyncioDispatcher(
            read, write, inline_methods=frozenset({"initialize"}), direct=direct
        )
        connection = Connection.for_loop(dispatcher)
        await serve_connection(
            server, dispatcher, connection=connection, lifespan_state=state, init_options=options
        )


def _ours(middleware: Any) -> bool:
    """A middleware a direct call may pass by: what it does to a plain call, the lane does."""
    return middleware is refuse_envelopes or isinstance(middleware, TaskMiddleware | ToolCallLane)


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


__all__ = [
    "LineReader",
    "LineWriter",
    "encode",
    "opens_modern",
    "pipe_stdio",
    "refuse_envelopes",
    "serve_pipes",
    "watchable",
]
