"""The MCP server: the tools of `mcp.tools` on the official SDK's low-level `Server`.

Theory of operation: `Backend` owns one `App` (the same composition root `serve` uses: the
terminal and file services, metrics, health), opened on the first tool call, when the
workspace is known: `--workspace`, else the first `file://` root the client lists, else the
current folder. A tool call is validated against the tool's input Struct, turned into the
bridge's own JSON-RPC call, and run as the dispatcher runs it (admission under memory
pressure, the operation's timeout for async methods, the latency observed into metrics and
health), then answered with structured content matching the tool's `outputSchema` and the
same JSON as text, for clients that read only text.

Errors: every failure is a tool result with `isError: true` (so the model sees it and can
act), never a protocol error. Its text leads with the error's name, code and
classification (`ConflictError (-32004, filesystem, retryable: false): ...`) and its
structured content is `{"error": {name, code, message, category, severity, retryable,
fallbackAvailable, ...data}}`.

Long commands: when the client sent a progress token with `run_command`, the command's
output is streamed from the terminal and the newest lines go out as progress
notifications, at most one per `PROGRESS_INTERVAL` on the App's clock. Cancelling the
request (`notifications/cancelled`) cancels the handler, and a cancelled execution
interrupts its command (SIGINT to the foreground group), as `$/cancelRequest` does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import warnings
from collections.abc import Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import mcp_types as types
import msgspec
import orjson
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import Server

from lapce_bridge import __version__
from lapce_bridge.app import App
from lapce_bridge.core.errors import (
    BridgeError,
    InvalidParams,
    MethodNotFound,
    is_server_fault,
    to_bridge_error,
)
from lapce_bridge.mcp.tools import BY_NAME, TOOLS, Tool, object_schema, output_schema
from lapce_bridge.rpc import request_limit
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
        self._lock = asyncio.Lock()
        self._stack = AsyncExitStack()
        self._closers: list[Callable[[], None]] = []

    async def app(self, ctx: ServerRequestContext[Any, Any] | None = None) -> App:
        if self._app is not None:
            return self._app
        async with self._lock:
            if self._app is None:
                workspace = self.workspace or await _client_root(ctx) or Path.cwd()
                self.workspace = workspace
                app = (
                    self._factory(workspace)
                    if self._factory is not None
                    else App(workspace=workspace, state_dir=self._state_dir,
                             default_shell=self._shell)
                )  # fmt: skip
                self._app = await self._stack.enter_async_context(app)
            return self._app

    def on_close(self, callback: Callable[[], None]) -> None:
        self._closers.append(callback)

    async def aclose(self) -> None:
        for callback in reversed(self._closers):
            with contextlib.suppress(Exception):
                callback()
        self._closers.clear()
        await self._stack.aclose()
        self._app = None


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


class ToolCallContext:
    """The `CallContext` a service sees for one tool call."""

    __slots__ = ("_backend", "_on_data", "received_at")

    def __init__(
        self,
        backend: Backend,
        received_at: float,
        on_data: Callable[[str], None] | None = None,
    ) -> None:
        self._backend = backend
        self.received_at = received_at
        self._on_data = on_data

    @property
    def connection_id(self) -> int:
        return CONNECTION_ID

    def notify(self, method: str, params: Any) -> None:
        if method == "terminal/data" and self._on_data is not None:
            self._on_data(params.get("data", ""))

    def on_close(self, callback: Callable[[], None]) -> None:
        self._backend.on_close(callback)


class ProgressLines:
    """Keeps the newest output lines of a running command and reports them as progress."""

    def __init__(self, ctx: ServerRequestContext[Any, Any], app: App) -> None:
        self._ctx = ctx
        self._clock = app.clock
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
            await self._ctx.session.report_progress(float(self._chunks), None, "\n".join(lines))

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None


def _progress_token(ctx: ServerRequestContext[Any, Any]) -> Any:
    meta: Any = ctx.meta
    if not meta:
        return None
    return meta.get("progress_token", meta.get("progressToken"))


def error_result(exc: BaseException, tool: str) -> types.CallToolResult:
    """A failure as a tool result the model can read: name, code and classification."""
    err = to_bridge_error(exc)
    wire = err.to_wire()
    name = type(err).__name__
    c = err.classification
    text = (
        f"{name} ({err.code}, {c.category.value}, retryable: {str(c.retryable).lower()}): "
        f"{err.detail}"
    )
    structured = {"error": {"name": name, "code": err.code, "message": err.detail, **wire}}
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=text)],
        structured_content=structured,
        is_error=True,
    )


async def call_tool(
    backend: Backend, tool: Tool, arguments: dict[str, Any] | None,
    ctx: ServerRequestContext[Any, Any] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Run one tool call on the backend's App; its structured result, or a BridgeError."""
    try:
        inp = msgspec.convert(arguments or {}, tool.input)
    except msgspec.ValidationError as exc:
        raise describe(tool.name, exc) from None
    try:
        method_name, params = tool.request(inp)
    except ValueError as exc:
        raise InvalidParams(f"{tool.name}: {exc}") from None
    app = await backend.app(ctx)
    method = app.methods.get(method_name)
    if method is None:
        raise MethodNotFound(f"{tool.name} needs {method_name}, which this server lacks")
    progress: ProgressLines | None = None
    if tool.name == "run_command" and ctx is not None and _progress_token(ctx) is not None:
        progress = ProgressLines(ctx, app)
        params["stream"] = True
    started = app.clock.now()
    call_ctx = ToolCallContext(backend, started, progress)
    try:
        if method.is_async:
            app.admit(method_name)
            limit = request_limit(app.timeouts.timeout_for(method_name), method, params)
            work = method.handler(params, call_ctx)
            if limit is None:
                result = await work
            else:
                result = await app.timeouts.with_timeout(method_name, work, seconds=limit)
        else:
            result = method.handler(params, call_ctx)
    except BaseException as exc:
        app.observe(method_name, app.clock.now() - started, not is_server_fault(exc))
        raise
    finally:
        if progress is not None:
            progress.close()
    app.observe(method_name, app.clock.now() - started, True)
    out: dict[str, Any] = msgspec.to_builtins(tool.answer(inp, result))
    return out


def tool_list() -> list[types.Tool]:
    return [
        types.Tool(
            name=tool.name,
            title=tool.title,
            description=tool.description,
            input_schema=object_schema(tool.input),
            output_schema=output_schema(tool),
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


def build_server(backend: Backend) -> Server[Any]:
    """The SDK server with our two handlers: list the tools, call one."""
    tools = tool_list()

    async def on_list_tools(
        ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        return types.ListToolsResult(tools=tools)

    async def on_call_tool(
        ctx: ServerRequestContext[Any, Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        tool = BY_NAME.get(params.name)
        if tool is None:
            return error_result(
                MethodNotFound(f"no tool {params.name!r}; see tools/list"), params.name
            )
        try:
            structured = await call_tool(backend, tool, params.arguments, ctx)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if not isinstance(exc, BridgeError):
                log.exception("tool %s failed", tool.name)
            return error_result(exc, tool.name)
        return types.CallToolResult(
            content=[types.TextContent(type="text", text=orjson.dumps(structured).decode())],
            structured_content=structured,
        )

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
    return server


__all__ = ["Backend", "ToolCallContext", "build_server", "call_tool", "error_result", "tool_list"]
