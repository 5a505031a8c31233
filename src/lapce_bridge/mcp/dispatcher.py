"""The SDK's JSON-RPC dispatcher, with each message's handler started as a plain asyncio task.

Theory of operation: the SDK's `JSONRPCDispatcher` reads the connection's messages and
runs each request (and each notification's handler) in a task of its anyio task group.
Since anyio 4.16 every such task is wrapped in a `TaskHandle`, with a cancel scope, an
event, a wrapper coroutine and task-state bookkeeping of its own: about 40 us of the
server's CPU on every message (a quarter of a `ping`), spent on a handle nobody reads.
`AsyncioDispatcher` is that dispatcher with one method replaced, `_spawn`: the handler
runs as an `asyncio` task in the sender's context, as the group's would; what the group
gave those tasks is kept by one task of the group, the keeper:

- when the group is cancelled (the read loop ended, or the connection is torn down), the
  keeper cancels every handler still running and waits for them, so the group (and the
  write stream the dispatcher closes after it) outlives them, as it outlives its own tasks
  (a handler cancelled at shutdown still writes its "Connection closed" answer);
- a handler that fails (the SDK's handlers contain every exception but the one they are
  told to re-raise, `raise_handler_exceptions`) fails the keeper with the same exception,
  which fails the group, as the handler's own failure would have.

Direct calls: a `tools/call` the server answers without a request context (`direct`, the
`ToolCallLane`'s: a plain call, no progress token, the session initialized) is served
here, not through the SDK's per-request machinery (its dispatch context, cancel scope,
`ServerRunner` context, middleware chain and response models: about a third of the server's
own work on a small call). What a request of the SDK gets, it gets too: it is listed in
the SDK's table of requests in flight, so `notifications/cancelled` finds it and cancels
it (its task, which cancels the work: a running command is interrupted) and it is never
answered; one answer when it ends (one JSON line written at once, orjson, on a line
writer); "Connection closed" when the connection ends under it; its handler task is one of
the others, kept by the keeper.

Everything else (the read loop, request ids, cancellation through each request's cancel
scope, progress, answers, the inline `initialize`) is the SDK's code, unchanged. The SDK
names `_spawn`, `_dispatch` and its table of requests in flight private: `usable()` checks
that the installed SDK still has them as this class uses them, and `mcp.stdio` falls back
to the SDK's own dispatcher when it does not.
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import inspect
import logging
from collections.abc import Awaitable, Callable, Mapping
from functools import partial
from typing import Any

import anyio
import mcp_types as types
import orjson
from mcp.shared.dispatcher import OnNotify, OnRequest, coerce_request_id
from mcp.shared.jsonrpc_dispatcher import JSONRPCDispatcher, _InFlight
from mcp.shared.message import SessionMessage
from mcp.shared.transport_context import TransportContext

log = logging.getLogger("lapce_bridge.mcp")


Direct = Callable[[Mapping[str, Any]], Callable[[], Awaitable[dict[str, Any]]] | None]
"""The answer to a `tools/call` with these params, to await, when it needs no request
context; None: the call takes the SDK's path."""

CLOSED_WRITE_TIMEOUT = 1.0  # seconds for a "Connection closed" answer (the SDK's bound)


def usable() -> bool:
    """Whether the installed SDK's dispatcher spawns through `_spawn(fn, *args, sender_ctx)`,
    routes each item through `_dispatch(item, on_request, on_notify, sender_ctx)`, and keeps
    its requests in flight as `_InFlight(scope, dctx)` (what the direct calls rely on)."""
    spawn = getattr(JSONRPCDispatcher, "_spawn", None)
    dispatch = getattr(JSONRPCDispatcher, "_dispatch", None)
    if spawn is None or dispatch is None:
        return False
    params = inspect.signature(spawn).parameters
    routed = list(inspect.signature(dispatch).parameters)
    held = [f.name for f in dataclasses.fields(_InFlight)]
    return (
        list(params)[:2] == ["self", "fn"]
        and "sender_ctx" in params
        and routed == ["self", "item", "on_request", "on_notify", "sender_ctx"]
        and held == ["scope", "dctx"]
        and all(
            hasattr(JSONRPCDispatcher, m) for m in ("_final_write", "_write_error", "_write_result")
        )
    )


_REQUEST_KEYS = frozenset({"jsonrpc", "id", "method", "params"})


class RawCall(SessionMessage):
    """A `tools/call` request read off the wire and parsed by orjson alone: its id and
    params, for the direct lane; the SDK's model of it (`message`, validated from the line
    as the SDK validates every line) is built only when something asks for it (the SDK's
    own path). Made only from a line that is exactly what that validation takes as it is
    (`parse_call`), so the model, when built, holds the same id and params."""

    def __init__(self, line: bytes, request_id: types.RequestId, params: dict[str, Any]) -> None:
        self.line = line
        self.request_id = request_id
        self.params = params
        self.metadata = None
        self._message: types.JSONRPCMessage | None = None

    @property
    def message(self) -> types.JSONRPCMessage:
        if self._message is None:
            self._message = types.jsonrpc_message_adapter.validate_json(self.line, by_name=False)
        return self._message

    @message.setter
    def message(self, value: types.JSONRPCMessage) -> None:
        self._message = value


def parse_call(line: bytes) -> RawCall | None:
    """`line` as a `RawCall` when it is a `tools/call` request with exactly the four members
    of one, version "2.0", an int or string id and params an object; else None (the SDK
    parses it)."""
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    if type(obj) is not dict or obj.keys() != _REQUEST_KEYS:
        return None
    request_id = obj["id"]
    params = obj["params"]
    if (
        obj["jsonrpc"] != "2.0"
        or obj["method"] != "tools/call"
        or type(params) is not dict
        or not (type(request_id) is int or type(request_id) is str)
    ):
        return None
    return RawCall(line, request_id, params)


class _Flag:
    """A request's `cancel_requested` as the SDK sets and reads it, without an event."""

    __slots__ = ("_set",)

    def __init__(self) -> None:
        self._set = False

    def set(self) -> None:
        self._set = True

    def is_set(self) -> bool:
        return self._set


class _DirectCall:
    """A direct call in the SDK's table of requests in flight: both its `scope` (the SDK's
    `notifications/cancelled` calls `cancel`: its task is cancelled, once) and its `dctx`
    (whose `cancel_requested` the SDK sets first: the call is not to be answered)."""

    __slots__ = ("cancel_requested", "interrupted", "task")

    def __init__(self) -> None:
        self.cancel_requested = _Flag()
        self.interrupted = False
        self.task: asyncio.Task[Any] | None = None  # set when it starts

    def cancel(self) -> None:
        if self.interrupted:
            return
        self.interrupted = True
        if self.task is not None:  # else it sees `interrupted` when it starts
            self.task.cancel()


class AsyncioDispatcher(JSONRPCDispatcher[TransportContext]):
    """`JSONRPCDispatcher` whose handlers are asyncio tasks kept by one task of its group."""

    def __init__(self, *args: Any, direct: Direct | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._direct = direct
        self._send_line: Callable[[bytes], Awaitable[None]] | None = getattr(
            self._write_stream, "send_line", None
        )
        self._handlers: set[asyncio.Task[Any]] = set()
        self._keeper: asyncio.Future[None] | None = None  # set: the keeper is gone
        self._failure: BaseException | None = None

    def _spawn(
        self,
        fn: Callable[..., Awaitable[Any]],
        *args: object,
        sender_ctx: contextvars.Context | None,
    ) -> None:
        tg = self._tg
        assert tg is not None
        if self._keeper is None:
            self._keeper = asyncio.get_running_loop().create_future()
            tg.start_soon(self._keep)
        coro: Any = fn(*args)
        loop = asyncio.get_running_loop()
        task = (
            loop.create_task(coro) if sender_ctx is None else sender_ctx.run(loop.create_task, coro)
        )
        self._handlers.add(task)
        task.add_done_callback(self._handler_done)
        if self._keeper.done():  # the group is already gone: nothing may outlive it
            task.cancel()

    async def _dispatch(
        self,
        item: SessionMessage | Exception,
        on_request: OnRequest,
        on_notify: OnNotify,
        sender_ctx: contextvars.Context | None,
    ) -> None:
        direct = self._direct
        if direct is not None:
            if type(item) is RawCall:
                start = direct(item.params)
                if start is not None:
                    self._start_direct(item.request_id, start, sender_ctx)
                    return
            elif type(item) is SessionMessage and item.metadata is None:
                message = item.message
                if type(message) is types.JSONRPCRequest and message.method == "tools/call":
                    start = direct(message.params or {})
                    if start is not None:
                        self._start_direct(message.id, start, sender_ctx)
                        return
        await super()._dispatch(item, on_request, on_notify, sender_ctx)

    def _start_direct(
        self,
        request_id: types.RequestId,
        start: Callable[[], Awaitable[dict[str, Any]]],
        sender_ctx: contextvars.Context | None,
    ) -> None:
        call = _DirectCall()
        key = coerce_request_id(request_id)
        # Duplicate ids overwrite, as the SDK's own entries do.
        self._in_flight[key] = _InFlight(scope=call, dctx=call)  # type: ignore[arg-type]
        self._spawn(self._serve_direct, request_id, key, call, start, sender_ctx=sender_ctx)

    async def _serve_direct(
        self,
        request_id: types.RequestId,
        key: types.RequestId,
        call: _DirectCall,
        start: Callable[[], Awaitable[dict[str, Any]]],
    ) -> None:
        """`_handle_request` for a direct call: answered once, unless the peer cancelled it
        (then never); "Connection closed" when the connection ends under it."""
        task = call.task = asyncio.current_task()
        assert task is not None
        answering = False
        try:
            try:
                if call.interrupted:  # cancelled before it started
                    return
                result = await start()
            finally:
                entry = self._in_flight.get(key)
                if entry is not None and _held(entry) is call:  # not a reused id's
                    del self._in_flight[key]
            if call.cancel_requested.is_set():
                return
            answering = True
            await self._answer(request_id, result)
        except asyncio.CancelledError:
            if call.interrupted and task.uncancel() == 0:
                return  # the peer's cancel, and only it: absorbed, as the SDK's scope does
            if not answering and not call.cancel_requested.is_set():
                closed = types.ErrorData(code=types.CONNECTION_CLOSED, message="Connection closed")
                await self._final_write(
                    partial(self._write_error, request_id, closed),
                    shield=True,
                    timeout=CLOSED_WRITE_TIMEOUT,
                    describe=f"shutdown error response for request {request_id!r}",
                )
            raise

    async def _answer(self, request_id: types.RequestId, result: dict[str, Any]) -> None:
        """One JSON line straight to a line writer; the SDK's response model otherwise."""
        send_line = self._send_line
        if send_line is not None:
            try:
                line = orjson.dumps(
                    {"jsonrpc": "2.0", "id": request_id, "result": result},
                    option=orjson.OPT_APPEND_NEWLINE,
                )
            except TypeError:
                pass
            else:
                try:
                    await send_line(line)
                except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                    log.debug("dropped result for %r: write stream closed", request_id)
                return
        await self._write_result(request_id, result)

    def _handler_done(self, task: asyncio.Task[Any]) -> None:
        self._handlers.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is None:
            return
        keeper = self._keeper
        if self._failure is None and keeper is not None and not keeper.done():
            self._failure = exc
            keeper.set_result(None)
        else:  # the group is failing or gone already: not lost, logged
            log.error("an MCP handler failed after its connection ended", exc_info=exc)

    async def _keep(self) -> None:
        """Lives as long as the group: fails it when a handler fails; when it is cancelled,
        cancels the handlers and waits for them (shielded, as the group waits for its own)."""
        keeper = self._keeper
        assert keeper is not None
        try:
            await asyncio.shield(keeper)
            if self._failure is not None:
                raise self._failure
        finally:
            if not keeper.done():
                keeper.set_result(None)
            with anyio.CancelScope(shield=True):
                while self._handlers:
                    running = list(self._handlers)
                    for task in running:
                        task.cancel()
                    await asyncio.wait(running)


def _held(entry: _InFlight[Any]) -> object:
    return entry.scope


__all__ = ["AsyncioDispatcher", "RawCall", "parse_call", "usable"]
