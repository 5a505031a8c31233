"""`lapce-bridge mcp` driven by the official MCP Python SDK's client, over stdio and over
Streamable HTTP: a real server process, a real shell, real files."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import jsonschema
import mcp_types as types
import pytest
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.jsonrpc_dispatcher import JSONRPCDispatcher

from lapce_bridge.mcp.tools import BY_NAME, TOOLS, object_schema, output_schema

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")

TOOL_NAMES = {
    "run_command", "send_input", "wait_command", "read_output", "interrupt", "list_terminals",
    "read_file", "write_file", "edit_file", "search_files", "list_directory", "file_info",
}  # fmt: skip


def server_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    env["HOME"] = str(tmp_path / "home")
    env["XDG_STATE_HOME"] = str(tmp_path / "state")
    env["XDG_RUNTIME_DIR"] = str(tmp_path / "run")
    for name in ("home", "state", "run"):
        (tmp_path / name).mkdir(exist_ok=True, mode=0o700)
    return env


def make_workspace(tmp_path: Path) -> Path:
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "calc.py").write_text(
        "def add(a, b):\n    return a + b\n\n\ndef sub(a, b):\n    return a - b\n"
    )
    return ws


@asynccontextmanager
async def stdio_session(tmp_path: Path, ws: Path) -> AsyncIterator[ClientSession]:
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "lapce_bridge", "mcp", "--workspace", str(ws), "--shell", "bash"],
        env=server_env(tmp_path),
        cwd=str(tmp_path),
    )
    with (tmp_path / "server.log").open("w") as errlog:
        async with (
            stdio_client(params, errlog=errlog) as (read, write),
            ClientSession(read, write) as session,
        ):
            await session.initialize()
            yield session


@asynccontextmanager
async def http_session(tmp_path: Path, ws: Path) -> AsyncIterator[ClientSession]:
    token_file = tmp_path / "token"
    token_file.write_text("s3cret-token-of-32-characters-ok\n")
    token_file.chmod(0o600)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "lapce_bridge", "mcp", "--workspace", str(ws), "--shell", "bash",
        "--http", "127.0.0.1:0", "--token-file", str(token_file),
        env=server_env(tmp_path), stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        line = (await asyncio.wait_for(proc.stderr.readline(), 30)).decode()
        m = re.search(r"MCP on (http://\S+/mcp)", line)
        assert m is not None, line
        url = m.group(1)
        # Without the token: refused before MCP sees anything.
        async with create_mcp_http_client() as bare:
            refused = await bare.post(url, json={"jsonrpc": "2.0", "id": 1, "method": "ping"})
            assert refused.status_code == 401
        client = create_mcp_http_client(
            headers={"Authorization": "Bearer s3cret-token-of-32-characters-ok"}
        )
        async with (
            client,
            streamable_http_client(url, http_client=client) as (
                read,
                write,
            ),
            ClientSession(read, write) as session,
        ):
            await session.initialize()
            yield session
    finally:
        if proc.returncode is None:
            proc.terminate()
            await asyncio.wait_for(proc.wait(), 20)


def structured(result: types.CallToolResult | Any) -> dict[str, Any]:
    assert isinstance(result, types.CallToolResult)
    assert not result.is_error, result.content
    assert result.structured_content is not None
    return dict(result.structured_content)


def typed(listed: types.ListToolsResult, name: str, answer: dict[str, Any]) -> dict[str, Any]:
    """`answer` checked against its tool's typed result (`$defs/<Struct>` of the
    outputSchema the client listed), as a client wanting each field's type checked would."""
    schema = next(t.output_schema for t in listed.tools if t.name == name)
    assert schema is not None
    ref = {"$ref": f"#/$defs/{BY_NAME[name].output.__name__}", "$defs": schema["$defs"]}
    jsonschema.Draft202012Validator(ref).validate(answer)
    return answer


def tool_error(result: types.CallToolResult | Any) -> dict[str, Any]:
    assert isinstance(result, types.CallToolResult)
    assert result.is_error
    assert result.structured_content is not None
    error: dict[str, Any] = result.structured_content["error"]
    text = result.content[0]
    assert isinstance(text, types.TextContent)
    assert text.text.startswith(f"{error['name']} ({error['code']}, {error['category']}")
    return error


async def scenario(session: ClientSession, ws: Path) -> None:
    """What every client must be able to do: the issue's list, in order."""
    listed = await session.list_tools()
    assert {t.name for t in listed.tools} == TOOL_NAMES
    for tool in listed.tools:
        assert tool.input_schema["type"] == "object"
        assert tool.output_schema is not None
        assert tool.output_schema["type"] == "object"
        jsonschema.Draft202012Validator.check_schema(tool.input_schema)
        jsonschema.Draft202012Validator.check_schema(tool.output_schema)
        assert tool.description
        assert len(tool.description) > 80
        assert tool.annotations is not None
        assert tool.annotations.read_only_hint is not None
    hints = {t.name: t.annotations for t in listed.tools if t.annotations is not None}
    assert hints["search_files"].read_only_hint is True
    assert hints["run_command"].destructive_hint is True

    ran = structured(await session.call_tool("run_command", {"command": "echo test"}))
    typed(listed, "run_command", ran)
    assert (ran["exit_code"], ran["output"].strip(), ran["status"]) == (0, "test", "completed")
    assert ran["cwd"] == str(ws)
    failed = structured(await session.call_tool("run_command", {"command": "cd /tmp && false"}))
    assert (failed["exit_code"], failed["cwd"]) == (1, "/tmp")

    # An input prompt: the command goes quiet, is answered, and finishes.
    asked = structured(
        await session.call_tool(
            "run_command",
            {"command": "cd ~ && read -p 'name? ' who && echo \"hello $who\"",
             "idle_timeout_ms": 700},
        )
    )  # fmt: skip
    assert asked["status"] == "waiting_for_input"
    assert "name?" in asked["output"]
    structured(
        await session.call_tool("send_input", {"terminal": asked["terminal_id"], "text": "bob"})
    )
    done = structured(
        await session.call_tool(
            "wait_command", {"execution_id": asked["execution_id"], "timeout_ms": 20_000}
        )
    )
    assert (done["exit_code"], done["status"]) == (0, "completed")
    assert "hello bob" in done["output"]

    # A second prompt: wait_command answers `waiting_for_input` again, with the new output.
    first = structured(
        await session.call_tool(
            "run_command",
            {"command": "read -p 'first? ' a && read -p 'second? ' b && echo \"=$a$b\"",
             "idle_timeout_ms": 700},
        )
    )  # fmt: skip
    assert first["status"] == "waiting_for_input"
    await session.call_tool("send_input", {"terminal": first["terminal_id"], "text": "1"})
    second = structured(
        await session.call_tool(
            "wait_command",
            {"execution_id": first["execution_id"], "timeout_ms": 20_000,
             "idle_timeout_ms": 700},
        )
    )  # fmt: skip
    assert second["status"] == "waiting_for_input"
    assert "second?" in second["output"]
    assert "first?" not in second["output"]
    await session.call_tool("send_input", {"terminal": first["terminal_id"], "text": "2"})
    both = structured(
        await session.call_tool(
            "wait_command", {"execution_id": first["execution_id"], "timeout_ms": 20_000}
        )
    )
    assert (both["exit_code"], both["status"]) == (0, "completed")
    assert both["output"].endswith("=12\n")

    # Edits: a unique match is applied; an ambiguous one refused, nothing written.
    edited = structured(
        await session.call_tool(
            "edit_file",
            {
                "path": "calc.py",
                "edits": [{"old_text": "return a - b", "new_text": "return b - a"}],
            },
        )
    )
    assert edited["replacements"] == 1
    assert "+    return b - a" in edited["diff"]
    before = (ws / "calc.py").read_text()
    refused = tool_error(
        await session.call_tool(
            "edit_file", {"path": "calc.py", "edits": [{"old_text": "(a, b):", "new_text": "()"}]}
        )
    )
    assert refused["code"] == -32602
    assert "matched 2 times" in refused["message"]
    assert refused["edits"][0]["lines"] == [1, 5]
    assert (ws / "calc.py").read_text() == before
    typo = tool_error(await session.call_tool("edit_file", {"path": "calc.py", "edit": []}))
    assert typo["message"] == "edit_file: unknown parameter 'edit'"

    searched = await session.call_tool("search_files", {"query": "b - a"})
    found = typed(listed, "search_files", structured(searched))
    assert [(m["path"], m["line"]) for m in found["matches"]] == [("calc.py", 6)]
    assert found["complete"] is True
    # The text block is grep's form, then the counts (and the cursor, when there is more).
    assert [c.text for c in searched.content if isinstance(c, types.TextContent)] == [
        "calc.py:6:    return b - a\n-- 1 match, 1 file searched, 0 skipped; complete"
    ]
    paged = await session.call_tool("search_files", {"query": "(a, b)", "max_results": 1})
    first_page = structured(paged)
    text = paged.content[0]
    assert isinstance(text, types.TextContent)
    head, tail = text.text.split("\n")
    assert head == "calc.py:1:def add(a, b):"
    cursor = re.fullmatch(r'-- 1 match, 1 file searched, 0 skipped; more: call again with '
                          r'cursor "(\S+)"', tail)  # fmt: skip
    assert cursor is not None
    assert cursor.group(1) == first_page["next_cursor"]
    rest = await session.call_tool(
        "search_files", {"query": "(a, b)", "max_results": 1, "cursor": cursor.group(1)}
    )
    assert rest.content[0] == types.TextContent(
        type="text",
        text="calc.py:5:def sub(a, b):\n-- 1 match, 1 file searched, 0 skipped; complete",
    )

    read = structured(
        await session.call_tool("read_file", {"path": "calc.py", "start_line": 5, "end_line": 6})
    )
    assert typed(listed, "read_file", read)["content"] == "def sub(a, b):\n    return b - a\n"
    assert (read["total_lines"], read["mtime_ns"]) == (6, edited["mtime_ns"])

    wrote = structured(
        await session.call_tool(
            "write_file", {"path": "new/x.txt", "content": "x\n", "create_dirs": True}
        )
    )
    conflict = tool_error(
        await session.call_tool(
            "write_file",
            {"path": "new/x.txt", "content": "y\n", "expected_mtime_ns": wrote["mtime_ns"] - 1},
        )
    )
    assert (conflict["name"], conflict["code"]) == ("ConflictError", -32004)
    outside = tool_error(await session.call_tool("read_file", {"path": "../../etc/passwd"}))
    assert outside["code"] == -32006
    tree = typed(
        listed,
        "list_directory",
        structured(await session.call_tool("list_directory", {"depth": 2})),
    )
    assert {e["name"] for e in tree["entries"]} >= {"calc.py", "new"}
    info = structured(await session.call_tool("file_info", {"path": "calc.py"}))
    assert info["kind"] == "file"
    terminals = typed(
        listed, "list_terminals", structured(await session.call_tool("list_terminals", {}))
    )
    assert terminals["terminals"]
    assert terminals["terminals"][0]["busy"] is False


async def test_python_sdk_client_over_stdio(tmp_path: Path) -> None:
    ws = make_workspace(tmp_path)
    with anyio.fail_after(120):
        async with stdio_session(tmp_path, ws) as session:
            await scenario(session, ws)


async def test_python_sdk_client_over_streamable_http(tmp_path: Path) -> None:
    ws = make_workspace(tmp_path)
    with anyio.fail_after(120):
        async with http_session(tmp_path, ws) as session:
            await scenario(session, ws)


async def test_progress_carries_output_and_cancelling_interrupts(tmp_path: Path) -> None:
    ws = make_workspace(tmp_path)
    seen: list[str] = []
    got_progress = anyio.Event()

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append(message or "")
        if "tick 3" in (message or ""):
            got_progress.set()

    with anyio.fail_after(120):
        async with stdio_session(tmp_path, ws) as session:
            async with anyio.create_task_group() as tg:

                async def long_call() -> None:
                    await session.call_tool(
                        "run_command",
                        {"command": "for i in 1 2 3 4 5 6; do echo tick $i; sleep 0.3; done; "
                                    "sleep 60",
                         "max_wait_ms": 90_000},
                        progress_callback=on_progress,
                    )  # fmt: skip

                tg.start_soon(long_call)
                await got_progress.wait()
                tg.cancel_scope.cancel()  # the client abandons the call: notifications/cancelled
            assert any("tick 1" in m for m in seen)
            # The command was interrupted: the terminal is free again soon.
            for _ in range(100):
                listing = structured(await session.call_tool("list_terminals", {}))
                if not any(t["busy"] for t in listing["terminals"]):
                    break
                await anyio.sleep(0.1)
            else:
                pytest.fail("the cancelled command is still running")
            again = structured(await session.call_tool("run_command", {"command": "echo after"}))
            assert again["output"].strip() == "after"


async def test_tasks_with_the_python_sdk_client(tmp_path: Path) -> None:
    """MCP tasks (2025-11-25) driven by the Python SDK: its client has the task types and
    sends `tasks/get`, `tasks/result`, `tasks/list` and `tasks/cancel` typed and checked,
    but its `call_tool` reads every answer as a `CallToolResult`, so the task-augmented
    `tools/call` goes through the session's own dispatcher (the SDK's public `Dispatcher`
    API) and its answer is checked as a `CreateTaskResult`."""
    ws = make_workspace(tmp_path)
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "lapce_bridge", "mcp", "--workspace", str(ws), "--shell", "bash"],
        env=server_env(tmp_path),
        cwd=str(tmp_path),
    )

    async def start(dispatcher: Any, command: str) -> str:
        raw = await dispatcher.send_raw_request(
            "tools/call",
            {"name": "run_command", "arguments": {"command": command}, "task": {"ttl": 60_000}},
        )
        created = types.CreateTaskResult.model_validate(raw, by_name=False)
        assert created.task.status == "working"
        assert created.task.ttl == 60_000
        return created.task.task_id

    async def task(session: ClientSession, task_id: str) -> types.GetTaskResult:
        request = types.GetTaskRequest(params=types.GetTaskRequestParams(task_id=task_id))
        return await session.send_request(request, types.GetTaskResult)

    with anyio.fail_after(120), (tmp_path / "server.log").open("w") as errlog:
        async with stdio_client(params, errlog=errlog) as (read, write):
            dispatcher: JSONRPCDispatcher[Any] = JSONRPCDispatcher(read, write)
            async with ClientSession(dispatcher=dispatcher) as session:
                init = await session.initialize()
                assert init.protocol_version == "2025-11-25"
                assert init.capabilities.tasks is not None
                listed = {t.name: t for t in (await session.list_tools()).tools}
                execution = listed["run_command"].execution
                assert execution is not None
                assert execution.task_support == "optional"

                # To its end: polled, then its result, which names the task.
                done_id = await start(dispatcher, "sleep 0.3; echo as a task")
                assert (await task(session, done_id)).status in ("working", "completed")
                payload = types.GetTaskPayloadRequest(
                    params=types.GetTaskPayloadRequestParams(task_id=done_id)
                )
                result = await session.send_request(payload, types.CallToolResult)
                assert result.structured_content is not None
                assert result.structured_content["output"] == "as a task\n"
                assert result.structured_content["exit_code"] == 0
                assert result.meta is not None
                assert result.meta["io.modelcontextprotocol/related-task"] == {"taskId": done_id}
                assert (await task(session, done_id)).status == "completed"

                # Cancelled: its command is interrupted, the terminal runs the next one.
                cancel_id = await start(dispatcher, "touch started; sleep 60; echo never")
                for _ in range(1200):  # its first step has run: the command is running
                    if (ws / "started").exists():
                        break
                    await anyio.sleep(0.05)
                cancelled = await session.send_request(
                    types.CancelTaskRequest(
                        params=types.CancelTaskRequestParams(task_id=cancel_id)
                    ),
                    types.CancelTaskResult,
                )
                assert cancelled.status == "cancelled"
                tasks = await session.send_request(types.ListTasksRequest(), types.ListTasksResult)
                assert {(t.task_id, t.status) for t in tasks.tasks} == {
                    (done_id, "completed"),
                    (cancel_id, "cancelled"),
                }
                after = structured(
                    await session.call_tool("run_command", {"command": "echo after"})
                )
                assert after["output"] == "after\n"
                assert "never" not in after["output"]


class RawLines:
    """`lapce-bridge mcp` over stdio driven by raw JSON lines, no client library between."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.ids = itertools.count(1)

    def send(self, message: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"jsonrpc": "2.0", **message}).encode() + b"\n")

    async def request(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        assert self.proc.stdout is not None
        request_id = next(self.ids)
        self.send({"id": request_id, "method": method, "params": params})
        answer: dict[str, Any] = json.loads(await self.proc.stdout.readline())
        assert answer["id"] == request_id
        return answer


@asynccontextmanager
async def raw_lines(tmp_path: Path) -> AsyncIterator[RawLines]:
    ws = make_workspace(tmp_path)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "lapce_bridge", "mcp", "--workspace", str(ws), "--shell", "bash",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL, env=server_env(tmp_path),
    )  # fmt: skip
    try:
        with anyio.fail_after(60):
            yield RawLines(proc)
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        await asyncio.wait_for(proc.wait(), 30)


CLIENT = {"name": "raw", "version": "0"}
HANDSHAKE = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": CLIENT}
ENVELOPE = {
    "io.modelcontextprotocol/protocolVersion": "2026-07-28",
    "io.modelcontextprotocol/clientInfo": CLIENT,
    "io.modelcontextprotocol/clientCapabilities": {},
}


async def test_malformed_tool_calls_get_the_sdks_own_refusals(tmp_path: Path) -> None:
    """A plain `tools/call` is answered by our middleware lane; anything malformed, and a
    call before `initialize`, still gets the SDK's own refusal (raw JSON lines, no client
    library in between)."""
    refused = {"code": -32602, "message": "Invalid request parameters", "data": ""}
    call = {"name": "file_info", "arguments": {"path": "calc.py"}}
    async with raw_lines(tmp_path) as raw:
        assert (await raw.request("tools/call", call))["error"] == refused  # before initialize
        assert "result" in await raw.request("initialize", HANDSHAKE)
        raw.send({"method": "notifications/initialized"})
        answered = (await raw.request("tools/call", call))["result"]
        assert answered["structuredContent"]["kind"] == "file"
        assert json.loads(answered["content"][0]["text"]) == answered["structuredContent"]
        for bad in (
            {"name": "file_info", "arguments": ["calc.py"]},
            {"name": 5, "arguments": {}},
            {**call, "_meta": {"progressToken": [1]}},
        ):
            assert (await raw.request("tools/call", bad))["error"] == refused, bad


async def test_a_plain_call_cancelled_by_the_client_interrupts_its_command(
    tmp_path: Path,
) -> None:
    """A plain `tools/call` (no progress token: the direct lane of `mcp.dispatcher`)
    cancelled with `notifications/cancelled`: its command is interrupted, the terminal is
    free again, and the cancelled request is never answered (every answer read after it is
    checked to be for its own request)."""
    async with raw_lines(tmp_path) as raw:
        assert "result" in await raw.request("initialize", HANDSHAKE)
        raw.send({"method": "notifications/initialized"})
        warm = await raw.request(
            "tools/call", {"name": "run_command", "arguments": {"command": "true"}}
        )
        assert warm["result"]["structuredContent"]["exit_code"] == 0
        started = tmp_path / "ws" / "started"
        raw.send(
            {
                "id": "long",
                "method": "tools/call",
                "params": {
                    "name": "run_command",
                    "arguments": {"command": f"touch {started}; sleep 30; echo late"},
                },
            }
        )
        for _ in range(200):
            if started.exists():
                break
            await asyncio.sleep(0.05)
        raw.send({"method": "notifications/cancelled", "params": {"requestId": "long"}})
        call = {"name": "list_terminals", "arguments": {}}
        for _ in range(100):
            listed = (await raw.request("tools/call", call))["result"]["structuredContent"]
            if not any(t["busy"] for t in listed["terminals"]):
                break
            await asyncio.sleep(0.1)
        else:
            pytest.fail("the cancelled command is still running")
        again = {"name": "run_command", "arguments": {"command": "echo after"}}
        after = (await raw.request("tools/call", again))["result"]["structuredContent"]
        assert (after["exit_code"], after["output"]) == (0, "after\n")


async def test_the_first_request_decides_the_protocol_era(tmp_path: Path) -> None:
    """Opened with the 2026-07-28 envelope, a connection is served per request (and refuses
    the handshake); opened with `initialize`, it refuses the envelope (the SDK's words)."""
    call = {"name": "file_info", "arguments": {"path": "calc.py"}}
    (tmp_path / "modern").mkdir()
    (tmp_path / "handshake").mkdir()
    async with raw_lines(tmp_path / "modern") as raw:
        listed = (await raw.request("tools/list", {"_meta": ENVELOPE}))["result"]
        assert "run_command" in {t["name"] for t in listed["tools"]}
        answered = (await raw.request("tools/call", {**call, "_meta": ENVELOPE}))["result"]
        assert answered["structuredContent"]["kind"] == "file"
        handshake = (await raw.request("initialize", HANDSHAKE))["error"]
        assert handshake["code"] == -32022
        assert handshake["data"]["supported"] == ["2026-07-28"]
    async with raw_lines(tmp_path / "handshake") as raw:
        raw.send({"method": "notifications/initialized"})  # before the first request: kept
        assert "result" in await raw.request("initialize", HANDSHAKE)
        raw.send({"method": "notifications/initialized"})
        enveloped = (await raw.request("tools/call", {**call, "_meta": ENVELOPE}))["error"]
        assert enveloped == {
            "code": -32600,
            "message": "this connection serves the handshake protocol era; requests "
            "carrying the 2026-07-28 envelope are not accepted on it",
        }
        plain = (await raw.request("tools/call", call))["result"]
        assert plain["structuredContent"]["kind"] == "file"


def test_every_tool_schema_is_generated_from_its_structs() -> None:
    for tool in TOOLS:
        assert tool.input.__struct_config__.forbid_unknown_fields
        # Nested Structs are written in place (clients resolve no $ref per item); only the
        # folder entry, which contains itself, is referenced. The output's fields are typed
        # in $defs under its Struct's name, which no keyword references (`output_schema`).
        for schema, apart in (
            (object_schema(tool.input), set()),
            (output_schema(tool), {tool.output.__name__}),
        ):
            text = json.dumps(schema)
            expected = {'"$ref": "#/$defs/TreeEntry"'} if "TreeEntry" in text else set()
            assert set(re.findall(r'"\$ref": "[^"]*"', text)) == expected
            referenced = {"TreeEntry"} if expected else set()
            assert set(schema.get("$defs", {})) == referenced | apart
            jsonschema.Draft202012Validator.check_schema(schema)
            # "T or null" is one type list, which a client checks in one step, not an anyOf.
            assert '{"type": "null"}' not in text
    exec_out = output_schema(next(t for t in TOOLS if t.name == "run_command"))
    assert "properties" not in exec_out
    assert exec_out["$defs"]["ExecResult"]["properties"]["exit_code"] == {
        "type": ["integer", "null"]
    }
    timeout = object_schema(next(t for t in TOOLS if t.name == "run_command").input)
    checker = jsonschema.Draft202012Validator(timeout["properties"]["timeout_ms"])
    assert [checker.is_valid(v) for v in (None, 5, 0, "5", 1e12)] == [
        True,
        True,
        False,
        False,
        False,
    ]
    out = subprocess.run(
        [sys.executable, "-m", "lapce_bridge", "mcp", "--http", "10.1.2.3:0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode != 0
    assert "not a loopback address" in out.stderr


async def test_without_workspace_the_clients_first_root_is_the_workspace(tmp_path: Path) -> None:
    root = make_workspace(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    async def roots(context: Any) -> types.ListRootsResult:
        listed = types.Root.model_validate({"uri": root.as_uri(), "name": "project"})
        return types.ListRootsResult(roots=[listed])

    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "lapce_bridge", "mcp", "--shell", "bash"],
        env=server_env(tmp_path),
        cwd=str(elsewhere),
    )
    with anyio.fail_after(120), (tmp_path / "server.log").open("w") as errlog:
        async with (
            stdio_client(params, errlog=errlog) as (read, write),
            ClientSession(read, write, list_roots_callback=roots) as session,
        ):
            await session.initialize()
            ran = structured(await session.call_tool("run_command", {"command": "pwd"}))
            assert ran["output"].strip() == str(root)
            info = structured(await session.call_tool("file_info", {"path": "calc.py"}))
            assert info["kind"] == "file"
            outside = tool_error(await session.call_tool("file_info", {"path": str(elsewhere)}))
            assert outside["code"] == -32006
