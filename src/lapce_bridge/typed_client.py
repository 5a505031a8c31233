"""Typed methods: one Python method per protocol method, results as the schema's Structs.

Theory of operation: `TypedMethods` is what `BridgeClient` (which keeps the connection
alive, retries, reconnects and spawns the server) offers beside its untyped `request`: each
method builds the method's params Struct from `schema.methods` (so a misspelt keyword is a
TypeError before anything is sent), sends it through `request` with the wire's camelCase
names, and converts the answer into the result Struct (`execute(...) -> ExecResult`). It
holds no state and declares nothing it does not implement: its methods are written against
`Requests`, the one method of the client they use. Errors are the bridge's
own tree, one class per code (`InvalidParams` -32602, `PermissionDenied` -32006, ...),
refined where the code is shared: a stale `expectedMtimeNs` raises `ConflictError`, a file
over the limit `FileTooLarge`, and an error naming an errno (`data.errno: "ENOENT"`) carries
it as `.errno` (the number) and `.errno_name`.

`lapce_bridge.sync_client.SyncClient` makes them blocking, for scripts.
"""

from __future__ import annotations

import errno as errno_mod
from typing import Any, Protocol

import msgspec

from lapce_bridge.core.errors import BridgeError, ConflictError, FileSystemError, FileTooLarge
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


class Requests(Protocol):
    """The one thing typed methods need of a client: an untyped request."""

    async def request(self: Requests, method: str, params: dict[str, Any] | None = None) -> Any: ...


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


async def call(client: Requests, method: str, params: Params, result: Any) -> Any:
    """Send `params` to `method`; its answer converted to `result` (a type, or None), errors
    refined (see `refine`)."""
    try:
        raw = await client.request(method, _wire(params))
    except BridgeError as exc:
        raise refine(exc) from None
    if result is None:
        return None
    return msgspec.convert(raw, result)


async def _call(client: Requests, method: str, params: Params) -> Any:
    return await call(client, method, params, METHODS[method].result)


class TypedMethods:
    """The typed protocol methods of `BridgeClient` (see the module docstring)."""

    __slots__ = ()

    # -- terminals ----------------------------------------------------------------------------
    async def execute(self: Requests, command: str, **options: Any) -> ExecResult:
        """Run `command` (options: terminal_id, cwd, timeout_ms, idle_timeout_ms, max_wait_ms,
        max_output_bytes, ansi); the exit code, output and cwd."""
        result: ExecResult = await _call(
            self, "terminal/execute", ExecuteParams(command=command, **options)
        )
        return result

    async def wait(self: Requests, execution_id: str, timeout_ms: int | None = None) -> ExecResult:
        result: ExecResult = await _call(
            self, "terminal/wait", WaitParams(execution_id=execution_id, timeout_ms=timeout_ms)
        )
        return result

    async def read_output(
        self: Requests, execution_id: str, offset: int = 0, limit: int | None = None
    ) -> ReadOutputResult:
        result: ReadOutputResult = await _call(
            self,
            "terminal/readOutput",
            ReadOutputParams(execution_id=execution_id, offset=offset, limit=limit),
        )
        return result

    async def send_text(
        self: Requests, terminal_id: str, text: str, *, at_prompt: bool = False
    ) -> None:
        await _call(
            self,
            "terminal/sendText",
            SendTextParams(terminal_id=terminal_id, text=text, at_prompt=at_prompt),
        )

    async def interrupt(self: Requests, terminal_id: str) -> None:
        await _call(self, "terminal/interrupt", TerminalParams(terminal_id=terminal_id))

    async def create_terminal(self: Requests, **options: Any) -> CreateResult:
        result: CreateResult = await _call(self, "terminal/create", CreateParams(**options))
        return result

    async def list_terminals(self: Requests) -> list[TerminalInfo]:
        result: list[TerminalInfo] = await _call(self, "terminal/list", NoParams())
        return result

    async def close_terminal(self: Requests, terminal_id: str) -> None:
        await _call(self, "terminal/close", TerminalParams(terminal_id=terminal_id))

    # -- files --------------------------------------------------------------------------------
    async def read_file(self: Requests, path: str, encoding: str | None = None) -> ReadResult:
        result: ReadResult = await _call(
            self,
            "fs/read",
            ReadParams(path=path, encoding=encoding),  # type: ignore[arg-type]
        )
        return result

    async def write_file(
        self: Requests,
        path: str,
        content: str,
        *,
        encoding: str | None = None,
        expected_mtime_ns: int | None = None,
        create_dirs: bool = False,
    ) -> WriteResult:
        result: WriteResult = await _call(
            self,
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

    async def stat(self: Requests, path: str) -> StatResult:
        result: StatResult = await _call(self, "fs/stat", PathParams(path=path))
        return result

    async def list_dir(self: Requests, path: str = ".") -> list[ListEntry]:
        result: list[ListEntry] = await _call(self, "fs/list", ListParams(path=path))
        return result

    async def edit(
        self: Requests,
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
            raw = await self.request("fs/edit", built)
        except BridgeError as exc:
            raise refine(exc) from None
        return msgspec.convert(raw, EditResult)

    async def search(self: Requests, query: str, **options: Any) -> SearchResult:
        """Search file contents (options: regex, case_sensitive, path, include, exclude,
        gitignore, max_results, timeout_ms, cursor)."""
        result: SearchResult = await _call(self, "fs/search", SearchParams(query=query, **options))
        return result

    async def tree(self: Requests, path: str = ".", **options: Any) -> TreeResult:
        result: TreeResult = await _call(self, "fs/tree", TreeParams(path=path, **options))
        return result

    # -- health -------------------------------------------------------------------------------
    async def health(self: Requests) -> HealthReport:
        result: HealthReport = await _call(self, "health/get", NoParams())
        return result

    async def metrics(self: Requests) -> MetricsResult:
        result: MetricsResult = await _call(self, "metrics/get", NoParams())
        return result


__all__ = ["Requests", "TypedMethods", "call", "refine"]
