"""Every method of protocol version 1: its params and its result, defined once.

`METHODS` maps each method name to a `Spec` (params Struct, result type, one-line summary).
The same table validates params (`schema.validate.convert`), generates the OpenRPC document
`lapce-bridge schema` prints (`schema.document`), and types the client
(`lapce_bridge.typed_client`). Results are open Structs (an older client must keep working
when a field is added); params are closed (a misspelt parameter must be refused).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

from msgspec import Meta

from lapce_bridge.schema.base import Millis, NonNegative, Params, Result, Strict
from lapce_bridge.schema.files import (
    EditParams,
    EditResult,
    SearchParams,
    SearchResult,
    TreeParams,
    TreeResult,
)


# -- session ----------------------------------------------------------------------------------
class ClientInfo(Result):
    name: str | None = None
    version: str | None = None


class InitializeParams(Params, forbid_unknown_fields=False):
    """Lenient: LSP clients send their own initialize fields (processId, capabilities, ...)."""

    client_info: ClientInfo | None = None
    protocol_version: int | None = None
    token: str | None = None
    session: str | None = None


class ServerInfo(Result):
    name: str
    version: str


class InitializeResult(Result):
    server_info: ServerInfo
    protocol_version: int
    capabilities: dict[str, Any]
    features: dict[str, bool]


class NoParams(Params):
    pass


class PingResult(Result):
    pong: bool


# -- terminals --------------------------------------------------------------------------------
class CreateParams(Params):
    shell: str | None = None
    cwd: str | None = None
    env: dict[str, str] | None = None
    cols: Annotated[int, Meta(ge=1, le=9999)] = 120
    rows: Annotated[int, Meta(ge=1, le=9999)] = 30
    shell_integration: bool = True
    name: str | None = None
    keep: bool = False


class CreateResult(Result):
    terminal_id: str
    shell: str
    pid: int | None
    mode: str


class ExecuteParams(Params):
    command: str
    terminal_id: str | None = None
    cwd: str | None = None
    timeout_ms: Millis | None = None
    idle_timeout_ms: Millis | None = None
    max_wait_ms: Millis | None = None
    stream: bool = False
    max_output_bytes: NonNegative | None = None
    ansi: Literal["strip", "keep"] = "strip"


class Recovery(Result):
    action: str
    reason: str


Status = Literal["completed", "timed_out", "interrupted", "waiting_for_input", "running"]


class ExecResult(Result):
    execution_id: str
    terminal_id: str
    exit_code: int | None
    output: str
    output_bytes: int
    truncated: bool
    cwd: str | None
    duration_ms: float
    status: Status
    mode: str
    shell: str
    recoveries: list[Recovery] = []


class TerminalParams(Params):
    terminal_id: str


class SendTextParams(Params):
    terminal_id: str
    text: str
    at_prompt: bool = False


class ReadOutputParams(Params):
    execution_id: str
    offset: NonNegative = 0
    limit: Annotated[int, Meta(ge=1)] | None = None


class ReadOutputResult(Result):
    data: str
    offset: int
    eof: bool


class ResumeStream(Strict):
    """One stream to resume: by its executionId (or the idempotencyKey of the execute that
    started it), after the last `seq` seen (0: none); `offset`: where the client's output
    ends, used when the ring no longer holds `seq`."""

    execution_id: str | None = None
    idempotency_key: str | None = None
    seq: NonNegative = 0
    offset: NonNegative | None = None


class ResumeParams(Params):
    streams: Annotated[list[ResumeStream], Meta(max_length=256)]


class ResumeResult(Result):
    streams: list[dict[str, Any]]


class StopHostParams(Params):
    # "end": running commands are ended at once; "wait": they finish first (up to timeoutMs).
    running: Literal["end", "wait"] = "end"
    timeout_ms: Millis | None = None


class StopHostResult(Result):
    stopped: bool
    terminals: list[str]  # closed
    ended: list[str]  # executions that were running and were ended
    pid: int | None = None


class WaitParams(Params):
    execution_id: str
    timeout_ms: Millis | None = None
    # A program asking for input again is answered waiting_for_input (default 30 s of quiet).
    idle_timeout_ms: Millis | None = None


class TerminalInfo(Result):
    terminal_id: str
    shell: str
    pid: int | None
    mode: str
    cwd: str | None
    busy: bool


# -- files ------------------------------------------------------------------------------------
class PathParams(Params):
    path: str


class ListParams(Params):
    path: str = "."


class ReadParams(Params):
    path: str
    encoding: Literal["utf-8", "base64"] | None = None


class ReadResult(Result):
    content: str
    encoding: Literal["utf-8", "base64"]
    size: int
    mtime_ns: int
    from_cache: bool
    stale: bool
    stale_reason: str | None = None


class WriteParams(Params):
    path: str
    content: str
    encoding: Literal["utf-8", "base64"] | None = None
    expected_mtime_ns: NonNegative | None = None
    create_dirs: bool = False


class WriteResult(Result):
    size: int
    mtime_ns: int


class StatResult(Result):
    size: int
    mtime_ns: int
    kind: Literal["file", "directory", "symlink", "other"]
    target_kind: str | None = None
    target: str | None = None


class ListEntry(Result):
    name: str
    kind: Literal["file", "directory", "symlink", "other"]
    size: int
    mtime_ns: int | None = None
    undecodable: bool = False


class WatchParams(Params):
    paths: Annotated[list[str], Meta(min_length=1, max_length=64)]
    recursive: bool = True


class WatchResult(Result):
    watch_id: str


class UnwatchParams(Params):
    watch_id: str


# -- health -----------------------------------------------------------------------------------
class HealthReport(Result):
    status: Literal["healthy", "degraded", "unhealthy"]
    quality_level: int
    features: dict[str, bool]
    breakers: dict[str, str]
    pressure: float
    operations: dict[str, dict[str, Any]]
    slo: dict[str, Any]
    alerts: list[dict[str, Any]]


class ErrorCount(Result):
    """Error answers of one operation with one classification (the caller's too)."""

    operation: str
    category: str
    fault: Literal["caller", "server"]
    count: int


class MetricsResult(Result):
    operations: dict[str, dict[str, Any]]
    counters: dict[str, Any]
    errors: list[ErrorCount] = []


@dataclass(frozen=True, slots=True)
class Spec:
    params: type[Params]
    result: Any  # a Struct type, list[...] of one, or None
    summary: str


METHODS: dict[str, Spec] = {
    "initialize": Spec(InitializeParams, InitializeResult,
                       "Open the session (TCP: the first request, with the token)."),
    "shutdown": Spec(NoParams, None, "Drain in-flight work and stop the server."),
    "ping": Spec(NoParams, PingResult, "Liveness check."),
    "terminal/create": Spec(CreateParams, CreateResult, "Open a terminal (a shell in a PTY)."),
    "terminal/execute": Spec(ExecuteParams, ExecResult,
                             "Run a command line; exit code, output and cwd."),
    "terminal/sendText": Spec(SendTextParams, None,
                              "Type text into what runs in a terminal."),
    "terminal/interrupt": Spec(TerminalParams, None,
                               "Interrupt the running command (SIGINT, escalated)."),
    "terminal/readOutput": Spec(ReadOutputParams, ReadOutputResult,
                                "Page through a command's whole output."),
    "terminal/wait": Spec(WaitParams, ExecResult,
                          "The final result of a command still running."),
    "terminal/list": Spec(NoParams, list[TerminalInfo], "The open terminals."),
    "terminal/close": Spec(TerminalParams, None, "Close a terminal."),
    "terminal/resume": Spec(ResumeParams, ResumeResult,
                            "Get the terminal/data a reconnected client missed, and the rest."),
    "terminal/stopHost": Spec(StopHostParams, StopHostResult,
                              "Stop the terminal host: its terminals close, none recreated."),
    "fs/read": Spec(ReadParams, ReadResult, "Read a file (cached, with recovery)."),
    "fs/write": Spec(WriteParams, WriteResult,
                     "Replace a file atomically, optionally only if unchanged."),
    "fs/stat": Spec(PathParams, StatResult, "Size, mtime and kind of a path."),
    "fs/list": Spec(ListParams, list[ListEntry], "A folder's entries."),
    "fs/watch": Spec(WatchParams, WatchResult, "Watch paths; changes come as fs/didChange."),
    "fs/unwatch": Spec(UnwatchParams, None, "Stop a watch."),
    "fs/edit": Spec(EditParams, EditResult,
                    "Exact search/replace edits applied as one atomic write."),
    "fs/search": Spec(SearchParams, SearchResult,
                      "Search file contents (literal or regex), paged."),
    "fs/tree": Spec(TreeParams, TreeResult, "A depth-limited tree of a folder."),
    "health/get": Spec(NoParams, HealthReport, "Health, quality level, SLOs and alerts."),
    "metrics/get": Spec(NoParams, MetricsResult, "Latency histograms and counters."),
}  # fmt: skip


__all__ = ["METHODS", "Spec"]
