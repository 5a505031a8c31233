"""MCP tasks (protocol 2025-11-25): tool calls a client can start, poll, fetch and cancel.

Theory of operation: the SDK (2.3) ships the protocol's task types but not their server
side: its 2025-11-25 method table leaves `tasks/*` out, and it checks a `tools/call` answer
as a `CallToolResult`, which a task's first answer is not. So tasks are served by one
server middleware, the SDK's documented hook that sees every request before the SDK's own
checks and owns what it returns (`TaskMiddleware`):

- `initialize`: the SDK's answer gains `capabilities.tasks` (list, cancel, `tools/call`);
  the tools that may run long (`TASK_TOOLS`) say `execution.taskSupport: "optional"` in
  `tools/list` (set where the tool list is built).
- `tools/call` with `params.task`: the call starts in the background, through the very
  function that answers a plain call (`run`), and the answer is at once
  `{task: {taskId, status: "working", createdAt, lastUpdatedAt, ttl, pollInterval}}`.
- `tasks/get` the task; `tasks/result` waits for its end and answers the tool's result
  with `_meta["io.modelcontextprotocol/related-task"]`; `tasks/cancel` cancels the call
  (its `$/cancelRequest` interrupts the command, as for any client) and answers the task,
  `cancelled`; `tasks/list` lists them.
- While it runs, a command started with a progress token sends its newest output lines as
  `notifications/progress` under that token (`run` is handed the request's context and
  sends them on the connection, the starting request being answered already); when the
  task ends, `notifications/tasks/status` carries the task (its final status) to the
  client, so a client need not poll to learn it.

Invariants: a task's status only moves from `working` to one terminal status (`completed`,
also for a tool error, which is a result with `isError`; `failed` when the call itself
raised; `cancelled`), and its result never changes after. A task is kept `ttl` ms after it
was created (the client's wish, at most `MAX_TTL_MS`), on the App's clock, then forgotten;
an unknown or forgotten id is -32602. Task ids are random (uuid4): one client cannot guess
another's. Every running task is cancelled when the server closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import mcp_types as types
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.shared.exceptions import MCPError

from lapce_bridge.core.clock import Clock

TASK_VERSION = "2025-11-25"  # the protocol version whose tasks these are
TASK_TOOLS = frozenset({"run_command", "wait_command"})
MAX_TTL_MS = 3_600_000
POLL_INTERVAL_MS = 250
RELATED_TASK = "io.modelcontextprotocol/related-task"
INVALID_PARAMS = -32602
_SERVED = frozenset(
    {"initialize", "tools/call", "tasks/get", "tasks/result", "tasks/cancel", "tasks/list"}
)
CAPABILITY: dict[str, Any] = {"list": {}, "cancel": {}, "requests": {"tools": {"call": {}}}}

Run = Callable[
    [str, dict[str, Any] | None, ServerRequestContext[Any, Any]], Awaitable[dict[str, Any]]
]
"""Answers one tool call: (tool name, arguments, request context) -> the wire form of a
`CallToolResult`."""


Announce = Callable[[dict[str, Any]], Coroutine[Any, Any, None]]
"""Sends `notifications/tasks/status` with a task (its wire form) to the client."""


def status_announcer(ctx: ServerRequestContext[Any, Any]) -> Announce:
    """Status notifications for the tasks a request starts, on its connection; a client gone
    or a closed stream drops them (they are a courtesy: `tasks/get` tells the same)."""
    session = ctx.session

    async def announce(task: dict[str, Any]) -> None:
        params = types.TaskStatusNotificationParams.model_validate(task, by_name=False)
        notification = types.TaskStatusNotification(params=params)
        # The SDK's union of server notifications leaves this 2025-11-25 one out (its types
        # exist, its sending is left to servers); `send_notification` dumps any model.
        with contextlib.suppress(Exception):
            await session.send_notification(notification)  # type: ignore[arg-type]

    return announce


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


@dataclass(slots=True)
class _Task:
    task_id: str
    ttl_ms: int
    created: float  # wall clock, for the ISO timestamps
    expires: float  # on the App's clock
    status: str = "working"
    message: str | None = None
    updated: float = 0.0
    result: dict[str, Any] | None = None
    job: asyncio.Task[Any] | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)
    announce: Announce | None = None  # tells the client of a change of status

    def wire(self) -> dict[str, Any]:
        task = types.Task(
            task_id=self.task_id,
            status=self.status,  # type: ignore[arg-type]
            status_message=self.message,
            created_at=_iso(self.created),
            last_updated_at=_iso(self.updated or self.created),
            ttl=self.ttl_ms,
            poll_interval=POLL_INTERVAL_MS,
        )
        dumped: dict[str, Any] = task.model_dump(by_alias=True, mode="json", exclude_none=True)
        return dumped

    def finish(self, status: str, wall: float, message: str | None = None) -> bool:
        """Moves to a terminal `status`; False when the task had one already (cancelled
        while its last step ran)."""
        if self.status != "working":
            return False
        self.status, self.message, self.updated = status, message, wall
        self.done.set()
        return True


class TaskMiddleware:
    """The SDK server middleware that serves MCP tasks (see the module docstring)."""

    def __init__(self, run: Run, clock: Clock, *, wall: Callable[[], float] = time.time) -> None:
        self._run = run
        self._clock = clock
        self._wall = wall
        self._tasks: dict[str, _Task] = {}
        self._announcing: set[asyncio.Task[None]] = set()

    async def __call__(
        self, ctx: ServerRequestContext[Any, Any], call_next: CallNext
    ) -> HandlerResult:
        method = ctx.method
        if (
            ctx.request_id is None
            or ctx.protocol_version != TASK_VERSION
            or method not in _SERVED
            or (method == "tools/call" and (ctx.params or {}).get("task") is None)
        ):
            return await call_next(ctx)
        params = dict(ctx.params or {})
        if method == "initialize":
            return self._with_capability(await call_next(ctx))
        if method == "tools/call" and params.get("task") is not None:
            return self._start(ctx, params)
        if method == "tasks/get":
            return self._find(params).wire()
        if method == "tasks/result":
            return await self._result(self._find(params))
        if method == "tasks/cancel":
            return self._cancel(self._find(params))
        if method == "tasks/list":
            self._prune()
            return {"tasks": [t.wire() for t in self._tasks.values()]}
        return await call_next(ctx)

    @staticmethod
    def _with_capability(answer: HandlerResult) -> HandlerResult:
        if isinstance(answer, dict):
            capabilities = dict(answer.get("capabilities") or {})
            capabilities["tasks"] = CAPABILITY
            answer = {**answer, "capabilities": capabilities}
        return answer

    def _start(self, ctx: ServerRequestContext[Any, Any], params: dict[str, Any]) -> HandlerResult:
        name = params.get("name")
        if name not in TASK_TOOLS:
            raise MCPError(code=INVALID_PARAMS, message=f"tool {name!r} does not run as a task")
        wanted = (params.get("task") or {}).get("ttl")
        ttl = MAX_TTL_MS if not isinstance(wanted, int) or wanted <= 0 else min(wanted, MAX_TTL_MS)
        self._prune()
        now = self._wall()
        task = _Task(uuid.uuid4().hex, ttl, now, self._clock.now() + ttl / 1000)
        task.announce = status_announcer(ctx)
        task.job = asyncio.get_running_loop().create_task(
            self._execute(task, str(name), params.get("arguments"), ctx)
        )
        self._tasks[task.task_id] = task
        return {"task": task.wire()}

    async def _execute(
        self,
        task: _Task,
        name: str,
        arguments: dict[str, Any] | None,
        ctx: ServerRequestContext[Any, Any],
    ) -> None:
        try:
            result = await self._run(name, arguments, ctx)
        except asyncio.CancelledError:
            self._finish(task, "cancelled", "cancelled")
            raise
        except Exception as exc:  # the call itself failed (a tool error is a result)
            self._finish(task, "failed", str(exc) or type(exc).__name__)
            return
        meta = dict(result.get("_meta") or {})
        meta[RELATED_TASK] = {"taskId": task.task_id}
        task.result = {**result, "_meta": meta}
        self._finish(task, "completed")

    def _finish(self, task: _Task, status: str, message: str | None = None) -> None:
        """Ends `task` with `status` and tells the client (once: the first end wins)."""
        if not task.finish(status, self._wall(), message) or task.announce is None:
            return
        job = asyncio.get_running_loop().create_task(task.announce(task.wire()))
        self._announcing.add(job)
        job.add_done_callback(self._announcing.discard)

    def _find(self, params: dict[str, Any]) -> _Task:
        self._prune()
        task_id = params.get("taskId")
        task = self._tasks.get(task_id) if isinstance(task_id, str) else None
        if task is None:
            raise MCPError(code=INVALID_PARAMS, message=f"no task {task_id!r} (unknown or expired)")
        return task

    async def _result(self, task: _Task) -> dict[str, Any]:
        await task.done.wait()
        if task.result is None:
            raise MCPError(
                code=INVALID_PARAMS,
                message=f"task {task.task_id} is {task.status}: {task.message}",
            )
        return task.result

    def _cancel(self, task: _Task) -> dict[str, Any]:
        if task.status != "working":
            raise MCPError(
                code=INVALID_PARAMS, message=f"task {task.task_id} is already {task.status}"
            )
        self._finish(task, "cancelled", "cancelled by the client")
        if task.job is not None:
            task.job.cancel()  # the call's $/cancelRequest interrupts the command
        return task.wire()

    def _prune(self) -> None:
        now = self._clock.now()
        for task_id in [t.task_id for t in self._tasks.values() if t.expires <= now]:
            task = self._tasks.pop(task_id)
            if task.job is not None and not task.job.done():
                task.job.cancel()

    async def aclose(self) -> None:
        jobs = [t.job for t in self._tasks.values() if t.job is not None and not t.job.done()]
        for job in jobs:
            job.cancel()
        for job in jobs:
            with contextlib.suppress(BaseException):
                await job
        for announcing in list(self._announcing):
            with contextlib.suppress(BaseException):
                await announcing
        self._tasks.clear()


__all__ = ["CAPABILITY", "TASK_TOOLS", "Announce", "Run", "TaskMiddleware", "status_announcer"]
