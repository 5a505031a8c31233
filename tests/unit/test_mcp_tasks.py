"""MCP tasks as the middleware serves them: creation, polling, result, cancellation, expiry
(on virtual time), and the capability it adds to `initialize`."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from mcp.server.context import HandlerResult, ServerRequestContext
from mcp.shared.exceptions import MCPError

from lapce_bridge.mcp.tasks import CAPABILITY, RELATED_TASK, TaskMiddleware
from lapce_bridge.testing import FakeClock


def request(method: str, params: dict[str, Any], version: str = "2025-11-25") -> Any:
    return ServerRequestContext(
        session=None,  # type: ignore[arg-type]  # no request here reaches the session
        lifespan_context=None,
        protocol_version=version,
        method=method,
        params=params,
        request_id=1,
    )


async def next_step(ctx: Any) -> HandlerResult:
    if ctx.method == "initialize":
        return {"protocolVersion": ctx.protocol_version, "capabilities": {"tools": {}}}
    return {"passed": ctx.method}


class Tool:
    """A tool call that ends when the test says so."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.started: list[str] = []
        self.failure: Exception | None = None

    async def __call__(self, name: str, arguments: Any, ctx: Any) -> dict[str, Any]:
        self.started.append(name)
        await self.release.wait()
        if self.failure is not None:
            raise self.failure
        return {
            "content": [{"type": "text", "text": "done"}],
            "structuredContent": {"output": "done"},
        }


async def call(mw: TaskMiddleware, method: str, **params: Any) -> Any:
    return await mw(request(method, params), next_step)


async def test_a_task_is_created_polled_and_answers_the_tool_result() -> None:
    tool = Tool()
    mw = TaskMiddleware(tool, FakeClock(), wall=lambda: 1_700_000_000.0)
    created = await call(mw, "tools/call", name="run_command", arguments={}, task={"ttl": 5000})
    task = created["task"]
    assert (task["status"], task["ttl"], task["createdAt"]) == (
        "working",
        5000,
        "2023-11-14T22:13:20Z",
    )
    await asyncio.sleep(0)
    assert tool.started == ["run_command"]
    assert (await call(mw, "tasks/get", taskId=task["taskId"]))["status"] == "working"
    waiting = asyncio.ensure_future(call(mw, "tasks/result", taskId=task["taskId"]))
    await asyncio.sleep(0)
    assert not waiting.done()  # tasks/result waits for the end
    tool.release.set()
    result = await waiting
    assert result["structuredContent"] == {"output": "done"}
    assert result["_meta"][RELATED_TASK] == {"taskId": task["taskId"]}
    assert (await call(mw, "tasks/get", taskId=task["taskId"]))["status"] == "completed"
    listed = await call(mw, "tasks/list")
    assert [t["taskId"] for t in listed["tasks"]] == [task["taskId"]]
    await mw.aclose()


async def test_cancel_stops_the_call_and_is_final() -> None:
    tool = Tool()
    mw = TaskMiddleware(tool, FakeClock())
    task = (await call(mw, "tools/call", name="run_command", arguments={}, task={}))["task"]
    await asyncio.sleep(0)
    cancelled = await call(mw, "tasks/cancel", taskId=task["taskId"])
    assert cancelled["status"] == "cancelled"
    await asyncio.sleep(0)
    assert mw._tasks[task["taskId"]].job.cancelled()  # type: ignore[union-attr]
    with pytest.raises(MCPError) as again:
        await call(mw, "tasks/cancel", taskId=task["taskId"])
    assert again.value.error.code == -32602
    with pytest.raises(MCPError, match="cancelled"):
        await call(mw, "tasks/result", taskId=task["taskId"])
    await mw.aclose()


async def test_a_failed_call_fails_the_task() -> None:
    tool = Tool()
    tool.failure = RuntimeError("the backend is gone")
    tool.release.set()
    mw = TaskMiddleware(tool, FakeClock())
    task = (await call(mw, "tools/call", name="wait_command", arguments={}, task={}))["task"]
    for _ in range(3):
        await asyncio.sleep(0)
    got = await call(mw, "tasks/get", taskId=task["taskId"])
    assert (got["status"], got["statusMessage"]) == ("failed", "the backend is gone")
    await mw.aclose()


async def test_a_task_is_forgotten_after_its_ttl_on_the_clock() -> None:
    clock = FakeClock()
    tool = Tool()
    tool.release.set()
    mw = TaskMiddleware(tool, clock)
    task = (await call(mw, "tools/call", name="run_command", arguments={}, task={"ttl": 2000}))[
        "task"
    ]
    await clock.advance(1.999)
    assert (await call(mw, "tasks/get", taskId=task["taskId"]))["taskId"] == task["taskId"]
    await clock.advance(0.001)
    with pytest.raises(MCPError) as gone:
        await call(mw, "tasks/get", taskId=task["taskId"])
    assert gone.value.error.code == -32602
    # A ttl beyond the bound is cut to it.
    long = await call(mw, "tools/call", name="run_command", arguments={}, task={"ttl": 10**9})
    assert long["task"]["ttl"] == 3_600_000
    await mw.aclose()


async def test_capability_and_refusals() -> None:
    mw = TaskMiddleware(Tool(), FakeClock())
    answer = await call(mw, "initialize")
    assert answer["capabilities"] == {"tools": {}, "tasks": CAPABILITY}
    # Another protocol version, or a request without a task, passes through untouched.
    other: Any = await mw(request("initialize", {}, version="2025-06-18"), next_step)
    assert "tasks" not in other["capabilities"]
    assert await call(mw, "tools/call", name="run_command", arguments={}) == {
        "passed": "tools/call"
    }
    with pytest.raises(MCPError, match="does not run as a task"):
        await call(mw, "tools/call", name="write_file", arguments={}, task={})
    with pytest.raises(MCPError, match="unknown or expired"):
        await call(mw, "tasks/get", taskId="nope")
    await mw.aclose()
