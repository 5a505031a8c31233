"""`AsyncioDispatcher` behaves as the SDK's `JSONRPCDispatcher` it replaces a method of: each
case runs against both, through the SDK's own `run` loop on memory streams, and must give
the same messages on the wire (answers, errors, nothing for a cancelled request) and the
same end (a failing handler fails the loop; a closing connection cancels what runs and
answers it "Connection closed" before the write stream closes)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from typing import Any

import anyio
import mcp_types as types
import pytest
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from mcp.shared.jsonrpc_dispatcher import JSONRPCDispatcher
from mcp.shared.message import SessionMessage

from lapce_bridge.mcp.dispatcher import AsyncioDispatcher, parse_call, usable

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


class Queued:
    """A read stream holding its messages already: each is read without a pause, so the
    loop goes on to the next (EOF included) before any handler took a step."""

    def __init__(self, items: list[SessionMessage]) -> None:
        self.items = items

    async def receive(self) -> SessionMessage:
        if not self.items:
            raise anyio.EndOfStream
        return self.items.pop(0)

    def __aiter__(self) -> Queued:
        return self

    async def __anext__(self) -> SessionMessage:
        try:
            return await self.receive()
        except anyio.EndOfStream:
            raise StopAsyncIteration from None

    async def aclose(self) -> None:
        pass

    async def __aenter__(self) -> Queued:
        return self

    async def __aexit__(self, *exc: object) -> None:
        pass


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.__name__)
async def test_a_request_whose_connection_closes_before_it_started_is_answered(
    kind: type[Any],
) -> None:
    request = types.JSONRPCRequest(jsonrpc="2.0", id=9, method="hang")
    outbound: MemoryObjectSendStream[SessionMessage]
    from_server: MemoryObjectReceiveStream[SessionMessage]
    outbound, from_server = anyio.create_memory_object_stream(16)
    dispatcher = kind(Queued([SessionMessage(request)]), outbound)
    handlers = Handlers()
    with anyio.fail_after(5):
        await dispatcher.run(handlers.on_request, handlers.on_notify)
        closed = (await from_server.receive()).message
    assert isinstance(closed, types.JSONRPCError)
    assert (closed.id, closed.error.code) == (9, types.CONNECTION_CLOSED)
    from_server.close()


class Lines:
    """A line writer (`send_line`, as `mcp.stdio.LineWriter`): what the direct calls write."""

    def __init__(self) -> None:
        self.lines: list[dict[str, Any]] = []
        self.arrived = asyncio.Event()

    async def send(self, item: SessionMessage, /) -> None:
        await self.send_line(item.message.model_dump_json(by_alias=True).encode() + b"\n")

    async def send_line(self, line: bytes) -> None:
        assert line.endswith(b"\n")
        self.lines.append(json.loads(line))
        self.arrived.set()

    async def aclose(self) -> None:
        pass

    async def __aenter__(self) -> Lines:
        return self

    async def __aexit__(self, *exc: object) -> None:
        pass

    async def next(self) -> dict[str, Any]:
        with anyio.fail_after(5):
            while not self.lines:
                self.arrived.clear()
                await self.arrived.wait()
        return self.lines.pop(0)


class Tools:
    """The direct calls: `echo` answers its arguments, `hang` waits until cancelled; any
    other tool takes the SDK's path (None)."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self.cancelled: list[str] = []
        self.hung = asyncio.Event()

    def direct(self, params: Mapping[str, Any]) -> Any:
        name = params.get("name")
        if name not in ("echo", "hang"):
            return None
        return lambda: self.run(str(name), dict(params.get("arguments") or {}))

    async def run(self, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
        self.started.append(name)
        if name == "hang":
            self.hung.set()
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                self.cancelled.append(name)
                raise
        return {"content": [], "structuredContent": arguments}


def _line(req_id: int, params: dict[str, Any]) -> bytes:
    message = {"jsonrpc": "2.0", "id": req_id, "method": "tools/call", "params": params}
    return json.dumps(message).encode()


async def test_direct_calls_answered_cancelled_and_closed_as_the_sdks_requests() -> None:
    to_server: MemoryObjectSendStream[SessionMessage | Exception]
    inbound: MemoryObjectReceiveStream[SessionMessage | Exception]
    to_server, inbound = anyio.create_memory_object_stream(16)
    lines, tools, handlers = Lines(), Tools(), Handlers()
    dispatcher = AsyncioDispatcher(inbound, lines, direct=tools.direct)

    async def send(req_id: int | None, method: str, params: dict[str, Any]) -> None:
        message: types.JSONRPCMessage = (
            types.JSONRPCNotification(jsonrpc="2.0", method=method, params=params)
            if req_id is None
            else types.JSONRPCRequest(jsonrpc="2.0", id=req_id, method=method, params=params)
        )
        await to_server.send(SessionMessage(message))

    async with anyio.create_task_group() as tg:
        tg.start_soon(dispatcher.run, handlers.on_request, handlers.on_notify)
        await send(1, "tools/call", {"name": "echo", "arguments": {"x": 1}})
        assert await lines.next() == {
            "jsonrpc": "2.0",
            "id": 1,
            "result": {"content": [], "structuredContent": {"x": 1}},
        }
        assert not handlers.started  # answered directly, not by the SDK's request handler
        # The peer cancels a direct call: its work is cancelled, and it is never answered.
        await send("2", "tools/call", {"name": "hang"})  # type: ignore[arg-type]
        with anyio.fail_after(5):
            await tools.hung.wait()
        await send(None, "notifications/cancelled", {"requestId": 2})
        # Not direct (read off the wire as a RawCall or not): the SDK's path.
        other = parse_call(_line(3, {"name": "other"}))
        assert other is not None
        await to_server.send(other)
        await handlers.wait_started("3")
        answer = await lines.next()
        assert (answer["id"], answer["error"]["message"]) == (3, "boom 3")
        echo = parse_call(_line(31, {"name": "echo", "arguments": {"r": 1}}))
        assert echo is not None
        await to_server.send(echo)
        assert await lines.next() == {
            "jsonrpc": "2.0",
            "id": 31,
            "result": {"content": [], "structuredContent": {"r": 1}},
        }
        assert tools.cancelled == ["hang"]
        assert not dispatcher._in_flight
        # The connection ends under a running one: "Connection closed".
        tools.hung.clear()
        await send(6, "tools/call", {"name": "hang"})
        with anyio.fail_after(5):
            await tools.hung.wait()
        await to_server.aclose()
    closed = await lines.next()
    assert (closed["id"], closed["error"]["code"]) == (6, types.CONNECTION_CLOSED)
    assert not lines.lines
    assert tools.started == ["echo", "hang", "echo", "hang"]
    assert tools.cancelled == ["hang", "hang"]
    assert not dispatcher._handlers


async def test_a_direct_call_cancelled_before_it_started_never_runs_nor_is_answered() -> None:
    def call(req_id: int, name: str) -> SessionMessage:
        params = {"name": name, "arguments": {"id": req_id}}
        return SessionMessage(
            types.JSONRPCRequest(jsonrpc="2.0", id=req_id, method="tools/call", params=params)
        )

    cancel = types.JSONRPCNotification(
        jsonrpc="2.0", method="notifications/cancelled", params={"requestId": 4}
    )
    lines, tools, handlers = Lines(), Tools(), Handlers()
    queued = Queued([call(4, "hang"), SessionMessage(cancel), call(5, "echo")])
    dispatcher = AsyncioDispatcher(queued, lines, direct=tools.direct)
    with anyio.fail_after(5):
        await dispatcher.run(handlers.on_request, handlers.on_notify)
    assert tools.started == ["echo"]
    assert [line["id"] for line in lines.lines] == [5]
    assert not dispatcher._in_flight
