"""A typed client: one Python method per protocol method, results as the schema's Structs.

Theory of operation: `TypedClient` wraps a connected `BridgeClient` (which keeps the
connection alive, retries, reconnects and spawns the server) and adds types: each method
builds the method's params Struct from `schema.methods` (so a misspelt keyword is a
TypeError before anything is sent), sends it with the wire's camelCase names, and converts
the answer into the result Struct (`execute(...) -> ExecResult`). Errors are the bridge's
own tree, one class per code (`InvalidParams` -32602, `PermissionDenied` -32006, ...),
refined where the code is shared: a stale `expectedMtimeNs` raises `ConflictError`, a file
over the limit `FileTooLarge`, and an error naming an errno (`data.errno: "ENOENT"`) carries
it as `.errno` (the number) and `.errno_name`.

`SyncClient` is the same for scripts: it runs an event loop in a daemon thread and makes
every method blocking (`SyncClient.spawn().execute("make test").exit_code`).
"""

from __future__ import annotations

import asyncio
import errno as errno_mod
import threading
from collections.abc import Coroutine
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from lapce_bridge.core.errors import BridgeError, ConflictError, FileSystemError, FileTooLarge
from lapce_bridge.ipc.client import BridgeClient
from lapce_bridge.schema.base import Params, Strict
from lapce_bridge.schema.files import (
    EditParams,
    EditResult,
    SearchParams,
    SearchResult,
    TextEdit,
    TreeParams,
    TreeResult,
)
from lapce_bridge.schema.methods import (
    METHODS,
    CreateParams,
    CreateResult,
    ExecResult,
    ExecuteParams,
    HealthReport,
    ListEntry,
    ListParams,
    MetricsResult,
    NoParams,
    PathParams,
    ReadOutputParams,
    ReadOutputResult,
    ReadParams,
    ReadResult,
    SendTextParams,
    StatResult,
    TerminalInfo,
    TerminalParams,
    WaitParams,
    WriteParams,
    WriteResult,
)

T = TypeVar("T")


def refine(exc: BridgeError) -> BridgeError:
    """The most specific class for an error rebuilt from the wire, with `.errno` set."""
    data = exc.data
    name = data.get("errno")
    if isinstance(exc, FileSystemError) and type(exc) is FileSystemError:
        if "mtimeNs" in data and name is None:
            exc = _as(exc, ConflictError)
        elif "limit" in data and "size" in data:
            exc = _as(exc, FileTooLarge)
    if isinstance(name, str):
        number = getattr(errno_mod, name, None)
        exc.errno = number if isinstance(number, int) else None  # type: ignore[attr-defined]
        exc.errno_name = name  # type: ignore[attr-defined]
    return exc


def _as(exc: BridgeError, kind: type[BridgeError]) -> BridgeError:
    out = kind(exc.detail, classification=exc.classification, data=exc.data)
    out.__cause__ = exc.__cause__
    return out


def _wire(params: Strict) -> dict[str, Any]:
    built: dict[str, Any] = msgspec.to_builtins(params)
    return {k: v for k, v in built.items() if v is not None}


class TypedClient:
    """Typed calls over a `BridgeClient` (see the module docstring)."""

    def __init__(self, client: BridgeClient) -> None:
        self.client = client

    @classmethod
    async def spawn(cls, socket_path: Path | str | None = None, **kwargs: Any) -> TypedClient:
        """A client to the server on `socket_path`, started (and kept running) if need be."""
        return cls(await BridgeClient.spawn(socket_path, **kwargs))

    async def __aenter__(self) -> TypedClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self.client.close()

    async def call(self, method: str, params: Params, result: Any) -> Any:
        """Send `params` to `method`; its answer converted to `result` (a type, or None)."""
        try:
            raw = await self.client.request(method, _wire(params))
        except BridgeError as exc:
            raise refine(exc) from None
        if result is None:
            return None
        return msgspec.convert(raw, result)

    async def call_raw(self, method: str, params: dict[str, Any] | None = None) -> Any:
        """An untyped call (the answer as decoded JSON), errors refined as in `call`."""
        try:
            return await self.client.request(method, params)
        except BridgeError as exc:
            raise refine(exc) from None

    async def _call(self, method: str, params: Params) -> Any:
        return await self.call(method, params, METHODS[method].result)

    # -- terminals ----------------------------------------------------------------------------
    async def execute(self, command: str, **options: Any) -> ExecResult:
        """Run `command` (options: terminal_id, cwd, timeout_ms, idle_timeout_ms, max_wait_ms,
        max_output_bytes, ansi); the exit code, output and cwd."""
        result: ExecResult = await self._call(
            "terminal/execute", ExecuteParams(command=command, **options)
        )
        return result

    async def wait(self, execution_id: str, timeout_ms: int | None = None) -> ExecResult:
        result: ExecResult = await self._call(
            "terminal/wait", WaitParams(execution_id=execution_id, timeout_ms=timeout_ms)
        )
        return result

    async def read_output(
        self, execution_id: str, offset: int = 0, limit: int | None = None
    ) -> ReadOutputResult:
        result: ReadOutputResult = await self._call(
            "terminal/readOutput",
            ReadOutputParams(execution_id=execution_id, offset=offset, limit=limit),
        )
        return result

    async def send_text(self, terminal_id: str, text: str, *, at_prompt: bool = False) -> None:
        await self._call(
            "terminal/sendText",
            SendTextParams(terminal_id=terminal_id, text=text, at_prompt=at_prompt),
        )

    async def interrupt(self, terminal_id: str) -> None:
        await self._call("terminal/interrupt", TerminalParams(terminal_id=terminal_id))

    async def create_terminal(self, **options: Any) -> CreateResult:
        result: CreateResult = await self._call("terminal/create", CreateParams(**options))
        return result

    async def list_terminals(self) -> list[TerminalInfo]:
        result: list[TerminalInfo] = await self._call("terminal/list", NoParams())
        return result

    async def close_terminal(self, terminal_id: str) -> None:
        await self._call("terminal/close", TerminalParams(terminal_id=terminal_id))

    # -- files --------------------------------------------------------------------------------
    async def read_file(self, path: str, encoding: str | None = None) -> ReadResult:
        result: ReadResult = await self._call(
            "fs/read",
            ReadParams(path=path, encoding=encoding),  # type: ignore[arg-type]
        )
        return result

    async def write_file(
        self,
        path: str,
        content: str,
        *,
        encoding: str | None = None,
        expected_mtime_ns: int | None = None,
        create_dirs: bool = False,
    ) -> WriteResult:
        result: WriteResult = await self._call(
            "fs/write",
            WriteParams(
                path=path,
                content=content,
                encoding=encoding,  # type: ignore[arg-type]
                expected_mtime_ns=expected_mtime_ns,
                create_dirs=create_dirs,
            ),
        )
        return result

    async def stat(self, path: str) -> StatResult:
        result: StatResult = await self._call("fs/stat", PathParams(path=path))
        return result

    async def list_dir(self, path: str = ".") -> list[ListEntry]:
        result: list[ListEntry] = await self._call("fs/list", ListParams(path=path))
        return result

    async def edit(
        self,
        path: str,
        edits: list[TextEdit] | list[tuple[str, str]],
        *,
        dry_run: bool = False,
        expected_mtime_ns: int | None = None,
    ) -> EditResult:
        """Exact search/replace edits; `edits` as TextEdit or (old_text, new_text) pairs."""
        specs = [e if isinstance(e, TextEdit) else TextEdit(old_text=e[0], new_text=e[1])
                 for e in edits]  # fmt: skip
        params = EditParams(
            path=path, edits=specs, dry_run=dry_run, expected_mtime_ns=expected_mtime_ns
        )
        built = _wire(params)
        built["edits"] = [_wire(e) for e in specs]
        try:
            raw = await self.client.request("fs/edit", built)
        except BridgeError as exc:
            raise refine(exc) from None
        return msgspec.convert(raw, EditResult)

    async def search(self, query: str, **options: Any) -> SearchResult:
        """Search file contents (options: regex, case_sensitive, path, include, exclude,
        gitignore, max_results, timeout_ms, cursor)."""
        result: SearchResult = await self._call("fs/search", SearchParams(query=query, **options))
        return result

    async def tree(self, path: str = ".", **options: Any) -> TreeResult:
        result: TreeResult = await self._call("fs/tree", TreeParams(path=path, **options))
        return result

    # -- health -------------------------------------------------------------------------------
    async def health(self) -> HealthReport:
        result: HealthReport = await self._call("health/get", NoParams())
        return result

    async def metrics(self) -> MetricsResult:
        result: MetricsResult = await self._call("metrics/get", NoParams())
        return result


class SyncClient:
    """`TypedClient` for scripts: every method blocks until its answer."""

    def __init__(self, opener: Coroutine[Any, Any, TypedClient]) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="lapce-bridge client", daemon=True
        )
        self._thread.start()
        try:
            self._typed = _run(self._loop, opener)
        except BaseException:
            self._stop()
            raise

    @classmethod
    def spawn(cls, socket_path: Path | str | None = None, **kwargs: Any) -> SyncClient:
        """A client to the server on `socket_path`, started (and kept running) if need be."""
        return cls(TypedClient.spawn(socket_path, **kwargs))

    @classmethod
    def connect(cls, socket_path: Path | str | None = None, **kwargs: Any) -> SyncClient:
        """A client to a server already listening on `socket_path`."""

        async def open_client() -> TypedClient:
            client = BridgeClient(socket_path, **kwargs)
            await client.connect()
            return TypedClient(client)

        return cls(open_client())

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._typed, name)
        if not callable(method) or name.startswith("_"):
            return method

        def blocking(*args: Any, **kwargs: Any) -> Any:
            return _run(self._loop, method(*args, **kwargs))

        return blocking

    def close(self) -> None:
        try:
            _run(self._loop, self._typed.close())
        finally:
            self._stop()

    def _stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _run(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, T]) -> T:
    future: Future[T] = asyncio.run_coroutine_threadsafe(coro, loop)
    return future.result()


__all__ = ["SyncClient", "TypedClient", "refine"]
