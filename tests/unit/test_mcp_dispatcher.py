"""`AsyncioDispatcher` behaves as the SDK's `JSONRPCDispatcher` it replaces a method of: each
case runs against both, through the SDK's own `run` loop on memory streams, and must give
the same messages on the wire (answers, errors, nothing for a cancelled request) and the
same end (a failing handler fails the loop; a closing connection cancels what runs and
answers it "Connection closed" before the write stream closes)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import anyio
import mcp_types as types
import pytest
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from mcp.shared.jsonrpc_dispatcher import JSONRPCDispatcher
from mcp.shared.message import SessionMessage

from lapce_bridge.mcp.dispatcher import AsyncioDispatcher, usable

KINDS = [JSONRPCDispatcher, AsyncioDispatcher]
WIRES: list[Wire] = []


@pytest.fixture(autouse=True)
def _close_wires() -> Any:
    yield
    while WIRES:
        WIRES.pop().close()


class Wire:
    """The client's end of a dispatcher: what it sends in, what comes out."""

    def __init__(self, kind: type[JSONRPCDispatcher[Any]], *, raise_errors: bool = False) -> None:
        self.to_server: MemoryObjectSendStream[SessionMessage | Exception]
        inbound: MemoryObjectReceiveStream[SessionMessage | Exception]
        self.to_server, inbound = anyio.create_memory_object_stream(16)
        outbound: MemoryObjectSendStream[SessionMessage]
        self.from_server: MemoryObjectReceiveStream[SessionMessage]
        outbound, self.from_server = anyio.create_memory_object_stream(16)
        self.dispatcher = kind(inbound, outbound, raise_handler_exceptions=raise_errors)
        WIRES.append(self)

    async def request(self, req_id: int, method: str, params: dict[str, Any] | None = None) -> None:
        message = types.JSONRPCRequest(jsonrpc="2.0", id=req_id, method=method, params=params)
        await self.to_server.send(SessionMessage(message))

    async def notify(self, method: str, params: dict[str, Any]) -> None:
        message = types.JSONRPCNotification(jsonrpc="2.0", method=method, params=params)
        await self.to_server.send(SessionMessage(message))

    def close(self) -> None:
        self.to_server.close()
        self.from_server.close()

    async def answer(self) -> Any:
        with anyio.fail_after(5):
            return (await self.from_server.receive()).message


class Handlers:
    """Requests: `echo` answers its params, `hang` waits until cancelled, `boom` raises."""

    def __init__(self) -> None:
        self.started: dict[str, asyncio.Event] = {}
        self.cancelled: list[str] = []
        self.notes: list[str] = []

    async def on_request(self, dctx: Any, method: str, params: Mapping[str, Any] | None) -> Any:
        tag = str(dctx.request_id)
        self.started.setdefault(tag, asyncio.Event()).set()
        if method == "echo":
            return dict(params or {})
        if method == "hang":
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                self.cancelled.append(tag)
                raise
        raise RuntimeError(f"boom {tag}")

    async def on_notify(self, dctx: Any, method: str, params: Mapping[str, Any] | None) -> None:
        self.notes.append(method)

    async def wait_started(self, tag: str) -> None:
        with anyio.fail_after(5):
            await self.started.setdefault(tag, asyncio.Event()).wait()


def test_the_sdk_still_spawns_through_the_replaced_method() -> None:
    assert usable()


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.__name__)
async def test_requests_answered_and_a_cancelled_one_never(kind: type[Any]) -> None:
    wire, handlers = Wire(kind), Handlers()
    async with anyio.create_task_group() as tg:
        tg.start_soon(wire.dispatcher.run, handlers.on_request, handlers.on_notify)
        await wire.request(1, "hang")
        await handlers.wait_started("1")
        await wire.request(2, "echo", {"x": 1})
        first = await wire.answer()
        assert isinstance(first, types.JSONRPCResponse)
        assert (first.id, first.result) == (2, {"x": 1})
        await wire.notify("notifications/cancelled", {"requestId": 1})
        await wire.request(3, "boom")
        error = await wire.answer()
        assert isinstance(error, types.JSONRPCError)
        assert (error.id, error.error.message) == (3, "boom 3")
        assert handlers.cancelled == ["1"]  # cancelled, and no answer came for it
        await wire.to_server.aclose()
    assert "notifications/cancelled" in handlers.notes
    assert wire.from_server.statistics().current_buffer_used == 0
    if isinstance(wire.dispatcher, AsyncioDispatcher):
        assert not wire.dispatcher._handlers  # every handler task was let go


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.__name__)
async def test_closing_cancels_what_runs_and_answers_it_before_the_stream_closes(
    kind: type[Any],
) -> None:
    wire, handlers = Wire(kind), Handlers()
    async with anyio.create_task_group() as tg:
        tg.start_soon(wire.dispatcher.run, handlers.on_request, handlers.on_notify)
        await wire.request(7, "hang")
        await handlers.wait_started("7")
        await wire.to_server.aclose()  # EOF: the loop ends
        closed = await wire.answer()
    assert isinstance(closed, types.JSONRPCError)
    assert (closed.id, closed.error.code) == (7, types.CONNECTION_CLOSED)
    assert handlers.cancelled == ["7"]
    with pytest.raises(anyio.EndOfStream):  # then the write stream closed
        await wire.from_server.receive()


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.__name__)
async def test_a_failing_handler_fails_the_loop_when_told_to_raise(kind: type[Any]) -> None:
    wire, handlers = Wire(kind, raise_errors=True), Handlers()

    async def serve() -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(wire.dispatcher.run, handlers.on_request, handlers.on_notify)
            await wire.request(1, "hang")
            await handlers.wait_started("1")
            await wire.request(2, "boom")
            await asyncio.sleep(3600)  # the group's failure ends this

    with pytest.raises(BaseExceptionGroup) as caught:
        await serve()
    failures = caught.value.split(RuntimeError)[0]
    assert failures is not None
    assert "boom 2" in repr(failures.exceptions)
    assert handlers.cancelled == ["1"]  # what ran with it was cancelled
    answers = []
    while wire.from_server.statistics().current_buffer_used:
        answers.append(await wire.answer())
    # The failure is answered (before it is raised), and so is the cancelled request.
    assert [(a.id, a.error.code) for a in answers] == [(2, 0), (1, types.CONNECTION_CLOSED)]
