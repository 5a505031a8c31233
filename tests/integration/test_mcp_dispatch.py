"""MCP tool calls run the JSON-RPC server's own request path: the same dispatcher, checks,
observation and error accounting as a socket client's request (a real App, a real bash)."""

from __future__ import annotations

import asyncio
import itertools
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, get_type_hints

import msgspec
import orjson
import pytest

from lapce_bridge.app import App
from lapce_bridge.core.errors import PermissionDenied, ResourceExhausted
from lapce_bridge.ipc.dispatch import CANCEL, Dispatcher
from lapce_bridge.ipc.jsonrpc import Notification, Request
from lapce_bridge.mcp.server import Backend, build_server, call_tool
from lapce_bridge.mcp.stdio import LineReader, LineWriter, serve_pipes
from lapce_bridge.mcp.tools import BY_NAME, output_schema
from lapce_bridge.schema.files import EditParams, SearchParams, SearchResult
from lapce_bridge.schema.methods import ExecResult, ExecuteParams, WaitParams

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


async def eventually(condition: Callable[[], bool], within: float = 60.0) -> None:
    """Wait for `condition`, checked every 10 ms, failing after `within` s: the first
    pressure sample is a real reading in a worker thread, which a loaded machine delays by
    seconds (10 s was once too short); the wait ends as soon as the condition holds."""
    async with asyncio.timeout(within):
        for _ in itertools.count():
            if condition():
                return
            await asyncio.sleep(0.01)


def backend_for(ws: Path, state: Path, memory_budget: int | None = None) -> Backend:
    def factory(workspace: Path) -> App:
        return App(
            workspace=workspace, state_dir=state, default_shell="bash", memory_budget=memory_budget
        )

    return Backend(workspace=ws, app_factory=factory)


async def test_tool_calls_are_requests_of_the_server_dispatcher(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    backend = backend_for(ws, tmp_path / "state")
    try:
        done = await call_tool(backend, BY_NAME["run_command"], {"command": "echo hi"})
        assert (done["exit_code"], done["output"], done["cwd"]) == (0, "hi\n", str(ws))
        app = await backend.app()
        # Observed under the method's name, as the dispatcher observes every request.
        assert app.metrics.histogram("terminal/execute").count == 1

        with pytest.raises(PermissionDenied):
            await call_tool(backend, BY_NAME["read_file"], {"path": "../outside.txt"})
        # Counted by its classification, the caller's fault (only the dispatcher does this).
        assert app.metrics.errors() == {("fs/read", "filesystem", "caller"): 1}
    finally:
        await backend.aclose()


async def test_admission_under_memory_pressure_refuses_new_work(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    # A budget this process alone already exceeds many times over: real, critical pressure.
    backend = backend_for(ws, tmp_path / "state", memory_budget=1 << 20)
    try:
        app = await backend.app()
        assert app.resources is not None
        # Until the first sample is in: a real reading in a worker thread, which a loaded
        # machine can delay by seconds; the wait ends as soon as it is in.
        resources = app.resources
        await eventually(lambda: not resources.policy.admits("terminal/execute"))
        with pytest.raises(ResourceExhausted) as refused:
            await call_tool(backend, BY_NAME["run_command"], {"command": "echo hi"})
        assert "memory pressure" in str(refused.value)
        assert app.metrics.errors() == {("terminal/execute", "resource", "server"): 1}
        # Cheap inline methods are always served, as for any client.
        info = await call_tool(backend, BY_NAME["file_info"], {"path": "."})
        assert info["kind"] == "directory"
    finally:
        await backend.aclose()


async def test_a_cancelled_call_interrupts_its_command_and_frees_the_terminal(
    tmp_path: Path,
) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    backend = backend_for(ws, tmp_path / "state")
    try:
        call = asyncio.ensure_future(
            call_tool(
                backend, BY_NAME["run_command"], {"command": "touch started; sleep 30; echo late"}
            )
        )
        await eventually((ws / "started").exists)  # the command runs (a real shell: no clock)
        app = await backend.app()
        terminals = next(s for s in app.services if hasattr(s, "terminals")).terminals
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        # $/cancelRequest went through the dispatcher: the command is interrupted (SIGINT),
        # so the default terminal is free again long before the 30 s sleep would end.
        await eventually(lambda: not any(t.busy for t in terminals.values()))
        after = await asyncio.wait_for(
            call_tool(backend, BY_NAME["run_command"], {"command": "echo next"}), 20
        )
        assert (after["exit_code"], after["output"]) == (0, "next\n")
    finally:
        await backend.aclose()


async def test_a_tool_answers_its_method_result_under_the_python_names(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "a.py").write_text("x = 1\nneedle = 2\n")
    backend = backend_for(ws, tmp_path / "state")
    try:
        mcp = await call_tool(backend, BY_NAME["search_files"], {"query": "needle"})
        wire = await (await backend.channel()).call("fs/search", {"query": "needle"})
        # One definition (schema.files.SearchResult): the same answer, names snake_cased.
        assert (wire["nextCursor"], wire["filesSearched"]) == (None, 1)
        assert mcp == {
            "matches": [{"path": "a.py", "line": 2, "text": "needle = 2"}],
            "next_cursor": None,
            "complete": True,
            "timed_out": False,
            "files_searched": 1,
            "files_skipped": 0,
        }
        schema = output_schema(BY_NAME["search_files"])
        assert set(schema["$defs"]["SearchResult"]["properties"]) == set(mcp)
        assert BY_NAME["search_files"].output is SearchResult
        assert BY_NAME["run_command"].output is ExecResult
        # The arguments are the method's params under the same names (a model's defaults).
        wire_names = [f.name for f in msgspec.structs.fields(SearchParams)]
        tool_fields = msgspec.structs.fields(BY_NAME["search_files"].input)
        assert [f.name for f in tool_fields] == [
            n for n in wire_names if n not in ("idempotency_key", "timeout_ms")
        ]
        assert {f.name: f.default for f in tool_fields}["max_results"] == 200
        edit_args = {f.name for f in msgspec.structs.fields(BY_NAME["edit_file"].input)}
        assert edit_args == {f.name for f in msgspec.structs.fields(EditParams)} - {
            "idempotency_key"
        }
        # One duration type: a tool's timeouts take exactly what its method's take.
        for tool, params in (("run_command", ExecuteParams), ("wait_command", WaitParams)):
            ours = get_type_hints(BY_NAME[tool].input, include_extras=True)
            theirs = get_type_hints(params, include_extras=True)
            for name in ("timeout_ms", "idle_timeout_ms", "max_wait_ms"):
                if name in ours:
                    assert ours[name] == theirs[name], (tool, name)
    finally:
        await backend.aclose()


class Outlet:
    """A connection's outlet as the dispatcher sees it: the answers it writes (the
    notifications riding with them apart)."""

    id = 0
    closing = False

    def __init__(self) -> None:
        self.answers: list[dict[str, Any]] = []

    def write(self, payload: bytes) -> None:
        message = orjson.loads(payload)
        if "id" in message:
            self.answers.append(message)

    def write_many(self, payloads: list[bytes]) -> None:
        for payload in payloads:
            self.write(payload)

    def notify(self, method: str, params: Any) -> None:
        pass

    def on_close(self, callback: Callable[[], None]) -> None:
        pass


async def test_a_request_served_in_the_calling_task(tmp_path: Path) -> None:
    """`Dispatcher.request_here` (the MCP channel's way): an async method's work runs in the
    caller's task (no task of its own), answered when it returns; `$/cancelRequest` still
    reaches it by id, interrupts the command, answers -32800 and leaves the caller running;
    what it does not run itself (a keyed request) goes through a task as ever."""
    ws = tmp_path / "ws"
    ws.mkdir()
    backend = backend_for(ws, tmp_path / "state")
    try:
        state = (await backend.channel()).state
        outlet = Outlet()
        dispatcher = Dispatcher(state, outlet)
        before = len(asyncio.all_tasks())
        seen: list[int] = []

        async def count_tasks() -> None:
            while True:
                seen.append(len(asyncio.all_tasks()))
                await asyncio.sleep(0)

        counter = asyncio.ensure_future(count_tasks())
        await dispatcher.request_here(Request(1, "terminal/execute", {"command": "echo here"}))
        counter.cancel()
        assert outlet.answers[-1]["id"] == 1
        assert outlet.answers[-1]["result"]["output"] == "here\n"
        assert max(seen) == before + 1  # this test's task and the counter: no third
        assert dispatcher.inflight == 0

        caller = asyncio.ensure_future(
            dispatcher.request_here(
                Request(2, "terminal/execute", {"command": "touch started; sleep 30"})
            )
        )
        await eventually((ws / "started").exists)
        assert dispatcher.inflight == 1
        dispatcher.notification(Notification(CANCEL, {"id": 2}))
        await asyncio.wait_for(caller, 20)  # interrupted, long before the sleep would end
        assert outlet.answers[-1]["error"]["code"] == -32800
        assert (caller.cancelled(), caller.cancelling()) == (False, 0)

        keyed = {"command": "echo keyed", "idempotencyKey": "k-1"}
        await dispatcher.request_here(Request(3, "terminal/execute", keyed))
        assert dispatcher.inflight == 1  # the keyed request runs in a task of its own
        await eventually(lambda: len(outlet.answers) == 3)
        assert outlet.answers[-1]["result"]["output"] == "keyed\n"
    finally:
        await backend.aclose()


async def _pipe_streams(
    read_fd: int, write_fd: int, transports: list[asyncio.BaseTransport]
) -> tuple[LineReader, LineWriter]:
    """A `LineReader` on `read_fd` and a `LineWriter` on `write_fd` (os pipes); their
    transports go to `transports` (to be closed)."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    read_transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(read_fd, "rb")
    )
    transport, protocol = await loop.connect_write_pipe(
        asyncio.streams.FlowControlMixin, os.fdopen(write_fd, "wb")
    )
    transports += [read_transport, transport]
    return LineReader(reader), LineWriter(asyncio.StreamWriter(transport, protocol, None, loop))


async def test_a_middleware_not_ours_sees_every_tool_call(tmp_path: Path) -> None:
    """A plain call is answered straight from the SDK's dispatcher only while nothing but
    our own middleware would see it: add another and every call reaches it (stdio served in
    process, over real pipes)."""
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "a.txt").write_text("a\n")
    backend = backend_for(ws, tmp_path / "state")
    server = build_server(backend)
    seen: list[str] = []

    async def spy(ctx: Any, call_next: Any) -> Any:
        seen.append(ctx.method)
        return await call_next(ctx)

    to_server, from_client = os.pipe()
    to_client, from_server = os.pipe()
    transports: list[asyncio.BaseTransport] = []
    server_in, server_out = await _pipe_streams(to_server, from_server, transports)
    client_in, client_out = await _pipe_streams(to_client, from_client, transports)
    ids = itertools.count(1)

    async def request(method: str, params: dict[str, Any]) -> dict[str, Any]:
        request_id = next(ids)
        message = {"jsonrpc": "2.0", "id": request_id, "method": method, "params": params}
        await client_out.send_line(orjson.dumps(message) + b"\n")
        answer = await client_in.receive()
        assert not isinstance(answer, Exception)
        assert answer.message.id == request_id  # type: ignore[union-attr]
        result: dict[str, Any] = answer.message.result  # type: ignore[union-attr]
        return result

    serving = asyncio.ensure_future(serve_pipes(server, server_in, server_out))
    try:
        async with asyncio.timeout(60):
            init = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": CLIENT}
            await request("initialize", init)
            await client_out.send_line(b'{"jsonrpc":"2.0","method":"notifications/initialized"}\n')
            call = {"name": "file_info", "arguments": {"path": "a.txt"}}
            assert (await request("tools/call", call))["structuredContent"]["kind"] == "file"
            assert backend.is_open()  # the next plain call could go straight through
            server.middleware.insert(0, spy)  # outermost: it sees what the lane answers
            for _ in range(2):
                assert (await request("tools/call", call))["structuredContent"]["size"] == 2
            assert seen == ["tools/call", "tools/call"]
            server.middleware.remove(spy)
            assert (await request("tools/call", call))["structuredContent"]["size"] == 2
            assert seen == ["tools/call", "tools/call"]
    finally:
        transports[3].close()  # the client's end: EOF, the server returns
        await asyncio.wait_for(serving, 30)
        for transport in transports:
            transport.close()
        await backend.aclose()


CLIENT = {"name": "raw", "version": "0"}
