"""The MCP server: the tools of `mcp.tools` on the official SDK's low-level `Server`.

Theory of operation: `Backend` owns one `App` (the same composition root `serve` uses: the
terminal and file services, metrics, health) and a `BridgeServer` over it that never
listens, opened on the first tool call, when the workspace is known: `--workspace`, else the
first `file://` root the client lists, else the current folder. A tool call is validated
against the tool's input Struct, turned into the bridge's own JSON-RPC request and sent
through that server's dispatcher on the MCP session's one `Channel` (`mcp.channel`): the
run path of `serve` itself, not a copy of it. The answer goes out as structured content
matching the tool's `outputSchema` and, for clients that read only text, the same JSON as
text (or the tool's own text: search_files' matches as `grep -n` lines, `Tool.text`).

Errors: every failure is a tool result with `isError: true` (so the model sees it and can
act), never a protocol error. Its text leads with the error's name, code and
classification (`ConflictError (-32004, filesystem, retryable: false): ...`) and its
structured content is `{"error": {name, code, message, category, severity, retryable,
fallbackAvailable, ...data}}`.

Long commands: when the client sent a progress token with `run_command`, the command's
output is streamed from the terminal and the newest lines go out as progress
notifications, at most one per `PROGRESS_INTERVAL` on the App's clock: scoped to the
request for a plain call, on the connection for a call run as a task (its request was
answered at once; the token stays valid for the task's life). Cancelling the request
(`notifications/cancelled`) cancels the handler, which sends `$/cancelRequest` for its
request: the command is interrupted (SIGINT to the foreground group) as for any client.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import warnings
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import mcp_types as types
import msgspec
import orjson
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.server.lowlevel import Server
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS

from lapce_bridge import __version__
from lapce_bridge.app import App
from lapce_bridge.clock import SYSTEM_CLOCK
from lapce_bridge.core.clock import Clock
from lapce_bridge.core.errors import BridgeError, InvalidParams, MethodNotFound, to_bridge_error
from lapce_bridge.ipc.server import BridgeServer
from lapce_bridge.mcp.channel import Channel
from lapce_bridge.mcp.tasks import TASK_TOOLS, Run, TaskMiddleware
from lapce_bridge.mcp.tools import BY_NAME, TOOLS, Tool, object_schema, output_schema, to_snake
from lapce_bridge.schema.validate import describe

log = logging.getLogger("lapce_bridge.mcp")

PROGRESS_INTERVAL = 0.2  # seconds between progress notifications of one command
PROGRESS_LINES = 20  # the newest lines each progress notification carries
CONNECTION_ID = 0  # the MCP front end is one connection as the services see it

INSTRUCTIONS = (
    "lapce-bridge runs shell commands in persistent terminals (exit code, output and cwd "
    "for each) and reads, writes, edits and searches files in one workspace. Paths are "
    "relative to the workspace; nothing outside it is reachable."
)


class Backend:
    """The App behind the tools, opened on first use and closed with `aclose`."""

    def __init__(
        self,
        *,
        workspace: Path | None = None,
        state_dir: Path | None = None,
        shell: str | None = None,
        app_factory: Callable[[Path], App] | None = None,
    ) -> None:
        self.workspace = workspace
        self._state_dir = state_dir
        self._shell = shell
        self._factory = app_factory
        self._app: App | None = None
        self._channel: Channel | None = None
        self._lock = asyncio.Lock()
        self._stack = AsyncExitStack()
        self._closers: list[Callable[[], Awaitable[None]]] = []

    async def app(self, ctx: ServerRequestContext[Any, Any] | None = None) -> App:
        if self._app is None:
            await self._open(ctx)
        assert self._app is not None
        return self._app

    async def channel(self, ctx: ServerRequestContext[Any, Any] | None = None) -> Channel:
        """The connection tool calls go through (the server opened on first use)."""
        if self._channel is None:
            await self._open(ctx)
        assert self._channel is not None
        return self._channel

    async def _open(self, ctx: ServerRequestContext[Any, Any] | None) -> None:
        async with self._lock:
            if self._app is not None:
                return
            workspace = self.workspace or await _client_root(ctx) or Path.cwd()
            self.workspace = workspace
            app = (
                self._factory(workspace)
                if self._factory is not None
                else App(workspace=workspace, state_dir=self._state_dir, default_shell=self._shell)
            )
            opened = await self._stack.enter_async_context(app)
            # The server of `serve`, without a listener: its method table, dispatcher and
            # limits run every tool call; closed before the App (in-flight work drained).
            server = await self._stack.enter_async_context(BridgeServer(opened))
            channel = Channel(server.state, CONNECTION_ID)
            self._stack.callback(channel.close)
            self._app, self._channel = opened, channel

    def is_open(self) -> bool:
        """Whether the App is open (a tool call needs no request context to open it)."""
        return self._channel is not None

    @property
    def opened(self) -> Channel | None:
        """The connection tool calls go through, once the server is open (else None)."""
        return self._channel

    def on_close(self, callback: Callable[[], Awaitable[None]]) -> None:
        """Await `callback` first when the backend closes (before the server and the App)."""
        self._closers.append(callback)

    async def aclose(self) -> None:
        closers, self._closers = self._closers, []
        for callback in reversed(closers):
            await callback()
        await self._stack.aclose()
        self._app = self._channel = None


async def _client_root(ctx: ServerRequestContext[Any, Any] | None) -> Path | None:
    """The first local folder among the client's MCP roots, if it offers roots."""
    if ctx is None:
        return None
    caps = ctx.session.client_capabilities
    if caps is None or caps.roots is None:
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # roots are deprecated in the newest protocol only
            listed = await asyncio.wait_for(ctx.session.list_roots(), 10.0)
    except Exception as exc:
        log.info("the client's roots could not be listed: %s", exc)
        return None
    for root in listed.roots:
        folder = _local_folder(str(root.uri))
        if folder is not None:
            return folder
    return None


def _local_folder(uri: str) -> Path | None:
    url = urlparse(uri)
    if url.scheme != "file":
        return None
    path = Path(unquote(url.path))
    return path if path.is_dir() else None


Report = Callable[[float, str], Awaitable[None]]
"""Sends one progress notification of a call: (progress so far, message)."""


class ProgressLines:
    """Keeps the newest output lines of a running command and reports them as progress."""

    def __init__(self, report: Report, clock: Clock) -> None:
        self._report = report
        self._clock = clock
        self._tail = ""
        self._chunks = 0
        self._task: asyncio.Task[None] | None = None

    def __call__(self, data: str) -> None:
        self._chunks += 1
        self._tail = (self._tail + data)[-16_384:]
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._send_later())

    async def _send_later(self) -> None:
        await self._clock.sleep(PROGRESS_INTERVAL)
        self._task = None
        lines = self._tail.splitlines()[-PROGRESS_LINES:]
        with contextlib.suppress(Exception):  # the client may be gone; the command is not
            await self._report(float(self._chunks), "\n".join(lines))

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None


def _progress_token(ctx: ServerRequestContext[Any, Any]) -> Any:
    meta: Any = ctx.meta
    if not meta:
        return None
    return meta.get("progress_token", meta.get("progressToken"))


def request_progress(ctx: ServerRequestContext[Any, Any]) -> Report | None:
    """Progress of the request `ctx` is, while it runs; None when its caller asked none."""
    if _progress_token(ctx) is None:
        return None
    session = ctx.session

    async def report(progress: float, message: str) -> None:
        await session.report_progress(progress, None, message)

    return report


def task_progress(ctx: ServerRequestContext[Any, Any]) -> Report | None:
    """Progress of a call run as a task, sent on the connection under the token of the
    request that started it (that request is answered at once, its own channel closed);
    None when its caller asked none."""
    token = _progress_token(ctx)
    if token is None:
        return None
    session = ctx.session

    async def report(progress: float, message: str) -> None:
        await session.send_progress_notification(token, progress, None, message)

    return report


def error_result(exc: BaseException, tool: str) -> dict[str, Any]:
    """A failure as a tool result the model can read (wire form): name, code and
    classification."""
    err = to_bridge_error(exc)
    wire = err.to_wire()
    name = type(err).__name__
    c = err.classification
    text = (
        f"{name} ({err.code}, {c.category.value}, retryable: {str(c.retryable).lower()}): "
        f"{err.detail}"
    )
    structured = {"error": {"name": name, "code": err.code, "message": err.detail, **wire}}
    return {
        "content": [{"type": "text", "text": text}],
        "structuredContent": structured,
        "isError": True,
    }


def tool_result(structured: dict[str, Any], text: str | None = None) -> dict[str, Any]:
    """A tool's answer (wire form): the structured content, and for clients that read only
    text `text` (a tool's own rendering, `Tool.text`) or else the same JSON."""
    if text is None:
        text = orjson.dumps(structured).decode()
    return {
        "content": [{"type": "text", "text": text}],
        "structuredContent": structured,
    }


async def call_tool(
    backend: Backend, tool: Tool, arguments: dict[str, Any] | None,
    ctx: ServerRequestContext[Any, Any] | None = None, *, report: Report | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Run one tool call through the backend's server; its structured result, or the
    call's BridgeError. A running command's output goes to `report` as progress."""
    try:
        inp = msgspec.convert(arguments or {}, tool.input)
    except msgspec.ValidationError as exc:
        raise describe(tool.name, exc) from None
    try:
        method_name, params = tool.request(inp)
    except ValueError as exc:
        raise InvalidParams(f"{tool.name}: {exc}") from None
    channel = backend.opened or await backend.channel(ctx)
    progress: ProgressLines | None = None
    if tool.name == "run_command" and report is not None:
        progress = ProgressLines(report, (await backend.app(ctx)).clock)
        params["stream"] = True
    try:
        result = await channel.call(method_name, params, progress)
    finally:
        if progress is not None:
            progress.close()
    out: dict[str, Any] = to_snake(tool.answer(inp, result))
    return out


def tool_list() -> list[types.Tool]:
    return [
        types.Tool(
            name=tool.name,
            title=tool.title,
            description=tool.description,
            input_schema=object_schema(tool.input),
            output_schema=output_schema(tool),
            execution=(
                types.ToolExecution(task_support="optional") if tool.name in TASK_TOOLS else None
            ),
            annotations=types.ToolAnnotations(
                title=tool.title,
                read_only_hint=tool.annotations.read_only,
                destructive_hint=tool.annotations.destructive,
                idempotent_hint=tool.annotations.idempotent,
                open_world_hint=False,
            ),
        )
        for tool in TOOLS
    ]


Plain = Callable[[str, dict[str, Any] | None], Awaitable[dict[str, Any]]]
"""Answers a plain call that needs no request context: (tool name, arguments) -> the wire
form of a `CallToolResult`."""


class ToolCallLane:
    """The SDK server middleware that answers a well-formed `tools/call` itself.

    The SDK's own path for a call validates the request's params into its model, builds a
    `CallToolResult` from the handler's answer, dumps it, validates the dump once more
    against the protocol version's result model and dumps it again: about a tenth of a
    millisecond of pydantic work on every call, most of a small call's server time. Here a
    call whose params are a tool name and an arguments object, on a session past its
    handshake and on a handshake-era protocol version, goes straight to `answer`, whose
    result is the wire form of a `CallToolResult` (built by `tool_result` and
    `error_result`; the arguments are checked against the tool's input Struct there).
    Everything else (a task-augmented call, malformed params, a call before `initialize`,
    the 2026-07-28 era, every other method) takes the SDK's path unchanged, so the SDK
    still answers what is malformed with its own errors.

    `direct` is the same lane one step earlier, for a transport that hands a request over
    before the SDK builds its context (`mcp.dispatcher`): a plain call that needs no
    context at all (no progress token, nothing in `_meta` but trace context, the backend
    open already) is answered by `plain` alone.
    """

    def __init__(
        self, answer: Run, plain: Plain | None = None, ready: Callable[[], bool] | None = None
    ) -> None:
        self._answer = answer
        self._plain = plain
        self._ready = ready

    async def __call__(
        self, ctx: ServerRequestContext[Any, Any], call_next: CallNext
    ) -> HandlerResult:
        params = ctx.params
        if (
            ctx.method != "tools/call"
            or ctx.request_id is None
            or ctx.protocol_version not in HANDSHAKE_PROTOCOL_VERSIONS
            or not isinstance(params, dict)
            or ctx.session.client_params is None
        ):
            return await call_next(ctx)
        call = _plain_call(params)
        if call is None or (
            "_meta" in params and ctx.meta is None
        ):  # a `_meta` the SDK could not read
            return await call_next(ctx)
        return await self._answer(call[0], call[1], ctx)

    def direct(self, params: Mapping[str, Any]) -> Callable[[], Awaitable[dict[str, Any]]] | None:
        """The answer to a `tools/call` with `params` on an initialized handshake-era
        session (the caller's to know), when it needs no request context; else None (the
        call takes the SDK's path and this middleware)."""
        if self._plain is None or (self._ready is not None and not self._ready()):
            return None
        if type(params) is not dict:
            return None
        call = _plain_call(params)
        meta = params.get("_meta")
        if call is None or not (
            meta is None or (type(meta) is dict and _TRACE_KEYS.issuperset(meta))
        ):
            return None
        return functools.partial(self._plain, call[0], call[1])


_LANE_KEYS = frozenset({"name", "arguments", "_meta"})  # a `task` goes to the task middleware
_TRACE_KEYS = frozenset({"traceparent", "tracestate", "baggage"})  # what a direct call ignores


def _plain_call(params: dict[str, Any]) -> tuple[str, dict[str, Any] | None] | None:
    """A tool name and an arguments object (or none), when `params` are only that."""
    name = params.get("name")
    arguments = params.get("arguments")
    if (
        type(name) is not str
        or not (arguments is None or type(arguments) is dict)
        or not _LANE_KEYS.issuperset(params)
    ):
        return None
    return name, arguments


def build_server(backend: Backend, *, clock: Clock = SYSTEM_CLOCK) -> Server[Any]:
    """The SDK server with our two handlers (list the tools, call one), the middleware that
    runs a call as an MCP task when the client asks (`mcp.tasks`), and the lane that answers
    a plain call without the SDK's model round trips (`ToolCallLane`)."""
    tools = tool_list()

    async def on_list_tools(
        ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        return types.ListToolsResult(tools=tools)

    async def answer(
        name: str,
        arguments: dict[str, Any] | None,
        ctx: ServerRequestContext[Any, Any] | None,
        report: Report | None,
    ) -> dict[str, Any]:
        tool = BY_NAME.get(name)
        if tool is None:
            return error_result(MethodNotFound(f"no tool {name!r}; see tools/list"), name)
        try:
            structured = await call_tool(backend, tool, arguments, ctx, report=report)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if not isinstance(exc, BridgeError):
                log.exception("tool %s failed", tool.name)
            return error_result(exc, tool.name)
        return tool_result(structured, None if tool.text is None else tool.text(structured))

    async def on_call_tool(
        ctx: ServerRequestContext[Any, Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        wire = await answer(params.name, params.arguments, ctx, request_progress(ctx))
        return types.CallToolResult.model_validate(wire, by_name=False)

    async def in_request(
        name: str, arguments: dict[str, Any] | None, ctx: ServerRequestContext[Any, Any]
    ) -> dict[str, Any]:
        return await answer(name, arguments, ctx, request_progress(ctx))

    # A plain call: no request context, no progress (one coroutine less than a wrapper).
    plain: Plain = functools.partial(answer, ctx=None, report=None)

    async def as_task(
        name: str, arguments: dict[str, Any] | None, ctx: ServerRequestContext[Any, Any]
    ) -> dict[str, Any]:
        return await answer(name, arguments, ctx, task_progress(ctx))

    server: Server[Any] = Server(
        "lapce-bridge",
        version=__version__,
        title="lapce-bridge",
        instructions=INSTRUCTIONS,
        on_list_tools=on_list_tools,
        on_call_tool=on_call_tool,
    )
    # The only default middleware is the SDK's OpenTelemetry span per message, which the
    # SDK lets a server drop from this list; our calls are observed into metrics already,
    # and the span costs a tenth of a millisecond on every call.
    server.middleware.clear()
    tasks = TaskMiddleware(as_task, clock)
    server.middleware.append(tasks)
    server.middleware.append(ToolCallLane(in_request, plain, backend.is_open))
    backend.on_close(tasks.aclose)
    return server


__all__ = [
    "Backend",
    "ToolCallLane",
    "build_server",
    "call_tool",
    "error_result",
    "request_progress",
    "task_progress",
    "tool_list",
    "tool_result",
]
