"""The MCP tools: names, schemas, descriptions, annotations, and their JSON-RPC methods.

Theory of operation: each tool is one `Tool` row: an input Struct and an output Struct
(msgspec; their JSON Schemas are the tool's `inputSchema` and `outputSchema`), a paragraph
for the model, the MCP annotations, and how to turn the validated input into the params of
the bridge's own JSON-RPC method and its answer into the output. The tools run the same
method table `serve` runs, in the same process, so an MCP client gets exactly the terminals
and file safety a JSON-RPC client gets. Names are snake_case on the MCP side (the convention
MCP clients and models expect) and camelCase on the JSON-RPC side; this module is the one
place the two meet.

One definition per concept: where a tool answers what its method answers (a command's
result, search matches, an edit, a tree), its output Struct is the method's own result
Struct from `schema`, shown with its fields' Python (snake_case) names (`object_schema`
renames the properties of its JSON Schema, `to_snake` its values); where a tool takes what
its method takes (`edit_file`, `search_files`, `list_directory`), its arguments are the
method's params Struct under the same names (`params_view`), with a model's defaults where
they differ. Only what exists for MCP alone is defined here: arguments named for models
(`terminal` for a terminal id) and outputs no method has (`read_file`'s line range,
`send_input`'s count). Nothing here imports the MCP SDK: the table is plain data, so the
schema document and the tests can read it without starting a server.
"""

from __future__ import annotations

import binascii
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin, get_type_hints

import msgspec
from msgspec import Meta

from lapce_bridge.schema.base import Millis
from lapce_bridge.schema.files import (
    EditParams,
    EditResult,
    SearchParams,
    SearchResult,
    TreeParams,
    TreeResult,
)
from lapce_bridge.schema.methods import ExecResult, TerminalInfo

PathArg = Annotated[str, Meta(min_length=1, description="path, relative to the workspace")]


class Input(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """A tool's arguments: snake_case, unknown arguments refused."""


class Output(msgspec.Struct, kw_only=True):
    """A tool's structured result."""


# -- terminals ------------------------------------------------------------------------------
class RunCommandInput(Input):
    command: Annotated[str, Meta(min_length=1, description="shell command line to run")]
    terminal: str | None = None
    cwd: str | None = None
    timeout_ms: Millis | None = None
    idle_timeout_ms: Millis | None = None
    max_wait_ms: Millis | None = None


class SendInputInput(Input):
    terminal: Annotated[str, Meta(min_length=1)]
    text: str
    press_enter: bool = True


class SendInputResult(Output):
    terminal_id: str
    sent_chars: int


class WaitCommandInput(Input):
    execution_id: Annotated[str, Meta(min_length=1)]
    timeout_ms: Millis | None = None
    idle_timeout_ms: Millis | None = None


class ReadOutputInput(Input):
    execution_id: Annotated[str, Meta(min_length=1)]
    offset: Annotated[int, Meta(ge=0)] = 0
    limit: Annotated[int, Meta(ge=1, le=4 * 1024 * 1024)] = 64 * 1024


class ReadOutputResult(Output):
    data: str
    next_offset: int
    eof: bool


class InterruptInput(Input):
    terminal: Annotated[str, Meta(min_length=1)]


class InterruptResult(Output):
    terminal_id: str
    interrupted: bool


class ListTerminalsInput(Input):
    pass


class ListTerminalsResult(Output):
    terminals: list[TerminalInfo]  # the method's own Struct


# -- files ----------------------------------------------------------------------------------
class ReadFileInput(Input):
    path: PathArg
    start_line: Annotated[int, Meta(ge=1)] | None = None
    end_line: Annotated[int, Meta(ge=1)] | None = None
    encoding: Literal["text", "base64"] = "text"


class ReadFileResult(Output):
    path: str
    content: str
    encoding: Literal["text", "base64"]
    size: int
    mtime_ns: int
    total_lines: int | None
    start_line: int | None
    end_line: int | None


class WriteFileInput(Input):
    path: PathArg
    content: str
    encoding: Literal["text", "base64"] = "text"
    expected_mtime_ns: Annotated[int, Meta(ge=0)] | None = None
    create_dirs: bool = False


class WriteFileResult(Output):
    path: str
    size: int
    mtime_ns: int


def params_view(
    kind: type[msgspec.Struct],
    name: str | None = None,
    *,
    drop: tuple[str, ...] = ("idempotency_key",),
    defaults: Mapping[str, Any] | None = None,
) -> type[msgspec.Struct]:
    """The arguments of a tool that takes what its method takes: `kind` (a method's params
    Struct from `schema`) under its fields' Python names, unknown fields refused, Structs
    inside it viewed the same way; `drop` leaves fields out, `defaults` changes defaults
    (a model's page of search results is smaller). One definition, two spellings."""
    made = _VIEWS.get(kind) if name is None else None
    if made is not None:
        return made
    hints = get_type_hints(kind, include_extras=True)
    fields: list[Any] = []
    for f in msgspec.structs.fields(kind):
        if f.name in drop:
            continue
        hint = _viewed(hints[f.name])
        if defaults is not None and f.name in defaults:
            fields.append((f.name, hint, defaults[f.name]))
        elif f.default is not msgspec.NODEFAULT:
            fields.append((f.name, hint, f.default))
        elif f.default_factory is not msgspec.NODEFAULT:
            fields.append((f.name, hint, msgspec.field(default_factory=f.default_factory)))
        else:
            fields.append((f.name, hint))
    view = msgspec.defstruct(
        name or kind.__name__,
        fields,
        kw_only=True,
        forbid_unknown_fields=True,
        module=__name__,
    )
    if name is None:
        _VIEWS[kind] = view
    return view


_VIEWS: dict[type[msgspec.Struct], type[msgspec.Struct]] = {}


def _viewed(hint: Any) -> Any:
    """`hint` with every Struct in it replaced by its `params_view`."""
    if isinstance(hint, type) and issubclass(hint, msgspec.Struct):
        return params_view(hint, drop=())
    origin = get_origin(hint)
    if origin is Annotated:
        base, *meta = get_args(hint)
        return Annotated[(_viewed(base), *meta)]
    if origin in (Union, UnionType):
        return Union[tuple(_viewed(arg) for arg in get_args(hint))]  # noqa: UP007
    if origin is list:
        return list[_viewed(get_args(hint)[0])]  # type: ignore[misc]
    return hint


def wire_params(kind: type[msgspec.Struct], inp: msgspec.Struct) -> dict[str, Any]:
    """A view's arguments as the params of its method (camelCase, unset ones left out)."""
    built = msgspec.to_builtins(msgspec.convert(inp, kind, from_attributes=True))
    return {k: v for k, v in built.items() if v is not None}


EditFileInput = params_view(EditParams, "EditFileInput")
SearchFilesInput = params_view(
    SearchParams,
    "SearchFilesInput",
    drop=("idempotency_key", "timeout_ms"),
    defaults={"max_results": 200},
)
ListDirectoryInput = params_view(
    TreeParams,
    "ListDirectoryInput",
    defaults={"gitignore": True, "max_entries": 2_000},
)


class FileInfoInput(Input):
    path: PathArg


class FileInfoResult(Output):
    path: str
    kind: str
    size: int
    mtime_ns: int
    target_kind: str | None = None
    target: str | None = None


# -- the table ------------------------------------------------------------------------------
Call = tuple[str, dict[str, Any]]  # (JSON-RPC method, its params)


@dataclass(frozen=True, slots=True)
class Annotations:
    read_only: bool
    destructive: bool
    idempotent: bool


@dataclass(frozen=True, slots=True)
class Tool:
    name: str
    title: str
    description: str
    input: type[msgspec.Struct]  # an Input, or the `params_view` of the method's params
    output: type[msgspec.Struct]  # an Output, or the method's own result Struct
    annotations: Annotations
    request: Callable[[Any], Call]
    """The JSON-RPC call for a validated input."""
    answer: Callable[[Any, Any], msgspec.Struct]
    """The output for (input, JSON-RPC result)."""
    text: Callable[[dict[str, Any]], str] | None = None
    """The text block for the output (snake_case builtins), when it is not the output's JSON:
    what a model reads, holding everything the structured content holds."""


def _drop_none(params: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in params.items() if v is not None}


def _read_file_answer(inp: ReadFileInput, r: Mapping[str, Any]) -> ReadFileResult:
    content: str = r["content"]
    total = start = end = None
    if inp.encoding == "text":
        lines = content.splitlines(keepends=True)
        total = len(lines)
        if inp.start_line is not None or inp.end_line is not None:
            start = inp.start_line or 1
            end = min(inp.end_line or total, total)
            content = "".join(lines[start - 1 : end])
    return ReadFileResult(
        path=inp.path,
        content=content,
        encoding=inp.encoding,
        size=r["size"],
        mtime_ns=r["mtimeNs"],
        total_lines=total,
        start_line=start,
        end_line=end,
    )


def _write_request(inp: WriteFileInput) -> Call:
    if inp.encoding == "base64":
        try:
            binascii.a2b_base64(inp.content, strict_mode=True)
        except binascii.Error as exc:
            raise ValueError(f"content is not valid base64: {exc}") from None
    return "fs/write", _drop_none(
        {
            "path": inp.path,
            "content": inp.content,
            "encoding": "base64" if inp.encoding == "base64" else "utf-8",
            "expectedMtimeNs": inp.expected_mtime_ns,
            "createDirs": inp.create_dirs,
        }
    )


def search_text(out: dict[str, Any]) -> str:
    """search_files' text block: the matches as `grep -n` prints them (`path:line:text`, one
    a line), then one line after `-- ` with the counts and how to go on: `complete`, or the
    cursor that gives the next page (and `timed out` when the time limit cut the page).

    The structured JSON again (what most tools send as text) repeats `"path":`, `"line":`
    and `"text":` and quotes every line: 125 KB against 97 KB for the bench's 1,052 matches,
    more for code full of quotes and backslashes. grep's form is what models read most."""
    matches = out["matches"]
    lines = [f"{m['path']}:{m['line']}:{m['text']}" for m in matches]
    count = f"{len(matches)} match{'' if len(matches) == 1 else 'es'}"
    searched = out["files_searched"]
    files = (
        f"{searched} file{'' if searched == 1 else 's'} searched, {out['files_skipped']} skipped"
    )
    if out["next_cursor"] is None:
        state = "complete"
    else:
        state = f'more: call again with cursor "{out["next_cursor"]}"'
        if out["timed_out"]:
            state = f"timed out; {state}"
    lines.append(f"-- {count}, {files}; {state}")
    return "\n".join(lines)


READ = Annotations(read_only=True, destructive=False, idempotent=True)

TOOLS: tuple[Tool, ...] = (
    Tool(
        "run_command",
        "Run a shell command",
        "Run a command line in a persistent shell terminal (bash, zsh or fish in a real PTY) "
        "and return its exit code, output and the working directory after it; cd, exported "
        "variables and activated environments persist between calls in the same terminal. "
        "Omit `terminal` to use the default one; name a new `terminal` to open another (for a "
        "dev server, say). A command that stops printing while it waits for input returns "
        "status `waiting_for_input` (answer with send_input, then wait_command); one still "
        "printing after max_wait_ms returns `running` and keeps running (wait_command, "
        "read_output, interrupt). Long output is cut to head and tail (`truncated`); "
        "read_output pages through all of it.",
        RunCommandInput,
        ExecResult,
        Annotations(read_only=False, destructive=True, idempotent=False),
        lambda i: (
            "terminal/execute",
            _drop_none(
                {
                    "command": i.command,
                    "terminalId": i.terminal,
                    "cwd": i.cwd,
                    "timeoutMs": i.timeout_ms,
                    "idleTimeoutMs": i.idle_timeout_ms,
                    "maxWaitMs": i.max_wait_ms,
                }
            ),
        ),
        lambda i, r: msgspec.convert(r, ExecResult),
    ),
    Tool(
        "send_input",
        "Type into a terminal",
        "Send text to the program running in a terminal, as if typed: the answer to a "
        "prompt (a password, y/n, a REPL line). A newline is added unless press_enter is "
        "false. Then call wait_command with the command's execution_id for its result.",
        SendInputInput,
        SendInputResult,
        Annotations(read_only=False, destructive=True, idempotent=False),
        lambda i: (
            "terminal/sendText",
            {"terminalId": i.terminal, "text": i.text + ("\n" if i.press_enter else "")},
        ),
        lambda i, r: SendInputResult(
            terminal_id=i.terminal, sent_chars=len(i.text) + (1 if i.press_enter else 0)
        ),
    ),
    Tool(
        "wait_command",
        "Wait for a command",
        "Wait for a command that run_command left running (status `running` or "
        "`waiting_for_input`) to finish, and return its final exit code, output and working "
        "directory. timeout_ms bounds the wait (the command keeps running if it passes). A "
        "program that asks for input again (a second prompt) is answered `waiting_for_input` "
        "with only its new output once it has been quiet for idle_timeout_ms (30 s unless "
        "given; pass about 1000 when a prompt is expected).",
        WaitCommandInput,
        ExecResult,
        READ,
        lambda i: (
            "terminal/wait",
            _drop_none(
                {
                    "executionId": i.execution_id,
                    "timeoutMs": i.timeout_ms,
                    "idleTimeoutMs": i.idle_timeout_ms,
                }
            ),
        ),
        lambda i, r: msgspec.convert(r, ExecResult),
    ),
    Tool(
        "read_output",
        "Read a command's output",
        "Read the complete output of a command by execution_id, in pages: pass next_offset "
        "back as offset until eof is true. Use it when run_command's output was truncated "
        "or the command is still running.",
        ReadOutputInput,
        ReadOutputResult,
        READ,
        lambda i: (
            "terminal/readOutput",
            {"executionId": i.execution_id, "offset": i.offset, "limit": i.limit},
        ),
        lambda i, r: ReadOutputResult(data=r["data"], next_offset=r["offset"], eof=r["eof"]),
    ),
    Tool(
        "interrupt",
        "Interrupt a command",
        "Interrupt the command running in a terminal (Ctrl-C; escalated to stronger signals "
        "if it does not stop). The terminal itself stays open for the next command.",
        InterruptInput,
        InterruptResult,
        Annotations(read_only=False, destructive=True, idempotent=True),
        lambda i: ("terminal/interrupt", {"terminalId": i.terminal}),
        lambda i, r: InterruptResult(terminal_id=i.terminal, interrupted=True),
    ),
    Tool(
        "list_terminals",
        "List terminals",
        "List the open terminals: id, shell, process id, working directory, and whether a "
        "command is running in it.",
        ListTerminalsInput,
        ListTerminalsResult,
        READ,
        lambda i: ("terminal/list", {}),
        lambda i, r: ListTerminalsResult(terminals=msgspec.convert(r, list[TerminalInfo])),
    ),
    Tool(
        "read_file",
        "Read a file",
        "Read a file in the workspace. Text comes back whole, or the lines start_line to "
        "end_line (1-based, inclusive) with total_lines; binary files need encoding "
        "`base64`. mtime_ns identifies the version read: pass it to write_file or edit_file "
        "as expected_mtime_ns so a change made meanwhile is not overwritten.",
        ReadFileInput,
        ReadFileResult,
        READ,
        lambda i: (
            "fs/read",
            {"path": i.path, "encoding": "base64" if i.encoding == "base64" else "utf-8"},
        ),
        _read_file_answer,
    ),
    Tool(
        "write_file",
        "Write a file",
        "Replace (or create) a file with new content, atomically: readers see the old or the "
        "new file, never a mix. With expected_mtime_ns (from read_file) the write is refused "
        "if the file changed since; 0 means it must not exist yet. create_dirs makes missing "
        "parent folders. Prefer edit_file for changes to part of a file.",
        WriteFileInput,
        WriteFileResult,
        Annotations(read_only=False, destructive=True, idempotent=True),
        _write_request,
        lambda i, r: WriteFileResult(path=i.path, size=r["size"], mtime_ns=r["mtimeNs"]),
    ),
    Tool(
        "edit_file",
        "Edit a file",
        "Change a file with exact search/replace edits, applied in order as one atomic write. "
        "Each old_text must occur exactly once in the file (or exactly `count` times): copy "
        "it from the file with enough surrounding lines to be unique. If any edit matches "
        "too often or not at all, nothing is written and the error says which edit, how "
        "often it matched and at which lines (or the nearest lines). Returns a unified diff; "
        "dry_run shows the diff without writing.",
        EditFileInput,
        EditResult,
        Annotations(read_only=False, destructive=True, idempotent=False),
        lambda i: ("fs/edit", wire_params(EditParams, i)),
        lambda i, r: msgspec.convert(r, EditResult),
    ),
    Tool(
        "search_files",
        "Search file contents",
        "Search the contents of the workspace's files for a literal string (or a regular "
        "expression with regex=true), like grep -rn: each match is a path, a line number and "
        "the line. Files .gitignore excludes, binary files and .git are skipped; include and "
        "exclude take globs (`*.py`, `src/**/*.ts`, `build/`). Results come in pages: pass "
        "next_cursor back as cursor for more.",
        SearchFilesInput,
        SearchResult,
        READ,
        lambda i: ("fs/search", wire_params(SearchParams, i)),
        lambda i, r: msgspec.convert(r, SearchResult),
        text=search_text,
    ),
    Tool(
        "list_directory",
        "List a folder as a tree",
        "List a folder's files and subfolders as a tree, `depth` levels deep, with kinds, "
        "sizes and mtimes; .gitignore'd entries are left out unless gitignore is false. "
        "Folders below the depth limit have children null.",
        ListDirectoryInput,
        TreeResult,
        READ,
        lambda i: ("fs/tree", wire_params(TreeParams, i)),
        lambda i, r: msgspec.convert(r, TreeResult),
    ),
    Tool(
        "file_info",
        "File information",
        "The kind (file, directory, symlink), size and mtime_ns of a path in the workspace; "
        "for a symlink also its target.",
        FileInfoInput,
        FileInfoResult,
        READ,
        lambda i: ("fs/stat", {"path": i.path}),
        lambda i, r: FileInfoResult(
            path=i.path,
            kind=r["kind"],
            size=r["size"],
            mtime_ns=r["mtimeNs"],
            target_kind=r.get("targetKind"),
            target=r.get("target"),
        ),
    ),
)

BY_NAME: dict[str, Tool] = {tool.name: tool for tool in TOOLS}


def snake_names(kind: type[msgspec.Struct]) -> dict[str, str]:
    """Wire name -> Python name of every field of `kind` and of the Structs inside it."""
    names: dict[str, str] = {}

    def visit(info: Any) -> None:
        if isinstance(info, msgspec.inspect.StructType):
            if info.cls.__name__ in seen:
                return
            seen.add(info.cls.__name__)
            for f in info.fields:
                names[f.encode_name] = f.name
                visit(f.type)
        for attr in ("item_type", "types", "key_type", "value_type"):
            inner = getattr(info, attr, None)
            for each in inner if isinstance(inner, tuple) else (inner,):
                if each is not None:
                    visit(each)

    seen: set[str] = set()
    visit(msgspec.inspect.type_info(kind))
    return names


def to_snake(value: Any) -> Any:
    """A Struct as JSON-ready builtins under its fields' Python names (the MCP side's
    snake_case), Structs inside it too; other values as `msgspec.to_builtins` gives them.

    `msgspec.to_builtins` builds the whole answer in C under the wire (camelCase) names;
    then only the keys of Struct objects are renamed, along a plan made once per Struct
    type (`_Plan`). A Struct whose names are the same on both sides, with none inside it
    that differ (a search match: path, line, text), is left as built: a page of 1,000
    matches is not walked at all. Walking the Struct field by field in Python instead cost
    about three times as much for a command's result. The outermost Struct, when plain
    (`_Plan.plain`), is taken under its Python names by `msgspec.structs.asdict` and built
    from there: a command's result is not renamed key by key at all."""
    plan = _plan(type(value)) if isinstance(value, msgspec.Struct) else None
    if plan is None:
        return msgspec.to_builtins(value)
    if plan.plain:
        return plan.rename_nested(msgspec.to_builtins(msgspec.structs.asdict(value)))
    return plan.rename(msgspec.to_builtins(value))


@dataclass(slots=True)
class _Plan:
    """How one Struct type's built object is renamed: (wire name, Python name, the plan of
    the Struct(s) its value holds, if any must be renamed); `fields` is None when the
    object needs no renaming at all."""

    fields: list[tuple[str, str, _Plan | None]] | None = None
    plain: bool = False
    """Whether `to_builtins` gives every field and nothing more (no defaults omitted, no
    tag, an object): then `asdict` has the same members under the Python names."""
    nested: tuple[tuple[str, _Plan], ...] = ()
    """(Python name, plan) of the fields holding Structs to rename."""

    def rename_nested(self, built: dict[str, Any]) -> dict[str, Any]:
        """`built`, under the Python names already, with the Structs inside it renamed."""
        for name, inner in self.nested:
            item = built.get(name)
            if item is not None:
                built[name] = inner.rename_value(item)
        return built

    def rename_value(self, item: Any) -> Any:
        """A field's built value renamed: one object, or a list of them."""
        return [self.rename(i) for i in item] if type(item) is list else self.rename(item)

    def rename(self, built: dict[str, Any]) -> dict[str, Any]:
        fields = self.fields
        if fields is None:
            return built
        out: dict[str, Any] = {}
        for wire, name, inner in fields:
            if wire not in built:
                continue
            item = built[wire]
            if inner is not None and item is not None:
                item = inner.rename_value(item)
            out[name] = item
        return out


_PLANS: dict[type, _Plan | None] = {}


def _plan(kind: type) -> _Plan | None:
    """The renaming plan of Struct type `kind` (None: nothing to rename), made once."""
    if kind in _PLANS:
        return _PLANS[kind]
    plan = _Plan()
    _PLANS[kind] = plan  # a Struct that holds itself (a folder's entries) finds it here
    info = msgspec.inspect.type_info(kind)
    assert isinstance(info, msgspec.inspect.StructType)
    fields = [(f.encode_name, f.name, _inner_plan(f.type)) for f in info.fields]
    if all(wire == name and inner is None for wire, name, inner in fields):
        _PLANS[kind] = None
        return None
    plan.fields = fields
    plan.nested = tuple((name, inner) for _, name, inner in fields if inner is not None)
    config = kind.__struct_config__  # type: ignore[attr-defined]
    plan.plain = not (config.omit_defaults or config.array_like or config.tag_field is not None)
    return plan


def _inner_plan(t: msgspec.inspect.Type) -> _Plan | None:
    """The plan for the Struct a field holds (itself, in a list, or optional), if any."""
    if isinstance(t, msgspec.inspect.UnionType):
        plans = [p for p in (_inner_plan(each) for each in t.types) if p is not None]
        # Two Struct types in one field would need a tag to tell them apart; none has.
        assert len(plans) <= 1, f"a field holds {len(plans)} kinds of Struct to rename"
        return plans[0] if plans else None
    if isinstance(t, msgspec.inspect.ListType):
        return _inner_plan(t.item_type)
    if isinstance(t, msgspec.inspect.StructType):
        return _plan(t.cls)
    return None


def object_schema(kind: type[msgspec.Struct]) -> dict[str, Any]:
    """The JSON Schema of a Struct with the Struct itself at the root (MCP wants an object
    schema there, not a `$ref`). Nested Structs are written in place, not referenced: a
    client validates every result against the schema (the Python SDK with `jsonschema`,
    where resolving a `$ref` for each of 1,000 search matches took half of the call's
    time). Only a Struct that contains itself (a folder's entries) stays in `$defs`."""
    schema = msgspec.json.schema(kind)
    defs: dict[str, Any] = dict(schema.get("$defs", {}))
    ref = schema.get("$ref", "")
    root: dict[str, Any] = dict(defs[ref.rpartition("/")[2]]) if ref else dict(schema)
    kept: dict[str, Any] = {}
    root = _nullable(_inline(root, defs, kept, ()))
    root.pop("title", None)
    if kept:
        root["$defs"] = _nullable(kept)
    renamed: dict[str, Any] = _renamed(root, snake_names(kind))
    return renamed


def _nullable(node: Any) -> Any:
    """`node` with each "T or null" written as one `type` list (`{"type": ["integer",
    "null"]}`), not as an `anyOf` of two schemas: the same values, and a client checks it in
    one step instead of trying each branch (the Python SDK checks every result it gets)."""
    if isinstance(node, list):
        return [_nullable(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: _nullable(value) for key, value in node.items()}
    branches = out.get("anyOf")
    if isinstance(branches, list) and len(branches) == 2 and {"type": "null"} in branches:
        other = branches[1 - branches.index({"type": "null"})]
        if isinstance(other, dict) and isinstance(other.get("type"), str):
            del out["anyOf"]
            shared = out.keys() & other.keys()
            if not shared:  # nothing the branch says is said beside the anyOf as well
                merged: dict[str, Any] = {"type": [other["type"], "null"]}
                merged.update((k, v) for k, v in other.items() if k != "type")
                merged.update(out)
                return merged
            out["anyOf"] = branches
    return out


def _renamed(node: Any, names: dict[str, str]) -> Any:
    """A schema with every object's property names given as `names` maps them."""
    if isinstance(node, list):
        return [_renamed(item, names) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: _renamed(value, names) for key, value in node.items()}
    props = node.get("properties")
    if isinstance(props, dict):
        out["properties"] = {names.get(k, k): _renamed(v, names) for k, v in props.items()}
        if isinstance(node.get("required"), list):
            out["required"] = [names.get(k, k) for k in node["required"]]
    return out


def _inline(node: Any, defs: dict[str, Any], kept: dict[str, Any], within: tuple[str, ...]) -> Any:
    """`node` with every `$ref` to `defs` replaced by the definition, except a reference to a
    definition it is already inside of, which stays a `$ref` (its definition put in `kept`)."""
    if isinstance(node, list):
        return [_inline(item, defs, kept, within) for item in node]
    if not isinstance(node, dict):
        return node
    ref = node.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        name = ref.rpartition("/")[2]
        if name in within:
            if name not in kept:
                kept[name] = {}  # claimed before filling: a definition is written once
                kept[name] = _inline(defs[name], defs, kept, (*within, name))
            return node
        return _inline(defs[name], defs, kept, (*within, name))
    return {key: _inline(value, defs, kept, within) for key, value in node.items()}


ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "present instead of the result when isError is true",
    "properties": {
        "name": {"type": "string"},
        "code": {"type": "integer"},
        "message": {"type": "string"},
        "category": {"type": "string"},
        "severity": {"type": "string"},
        "retryable": {"type": "boolean"},
        "fallbackAvailable": {"type": "boolean"},
        "detail": {"type": "string"},
    },
    "required": ["name", "code", "message", "category", "retryable"],
}


def output_schema(tool: Tool) -> dict[str, Any]:
    """The tool's `outputSchema`: its result's required fields, the fields typed apart, or
    (on a tool error) `{"error": {...}}`.

    The result's own typed schema (`object_schema` of the tool's output Struct, the one
    definition the JSON-RPC schema is made from too) is `$defs/<Struct>`, referenced by no
    keyword: readers and code generators find it there, and the schema's description lists
    each field with its type. The schema a client applies only requires the required
    fields. The MCP Python SDK client checks every structured result against the
    outputSchema with `jsonschema`, whose cost is per subschema it descends into, whatever
    the subschema says: with each field typed, 350 ms for a `list_directory` page of 5,000
    entries, 36 ms for a search page of 1,052 matches (close to half of what `grep -rn` takes
    for the whole search), 0.1 ms of each `run_command` (a sixth of what the server and the
    shell spend on `echo test`); without, 0.03 ms, 0.02 ms and 0.011 ms. Our results are
    encoded from those typed Structs, so the check could only find a field missing, which it
    still does. The fields are not listed as `properties` either: the Node SDK refuses a
    property schema that is not an object, and `{}` costs as much to descend into as a typed
    one.

    Clients that validate the structured content of error results too (the Node SDK does)
    must find the error shape allowed: the result's required fields are one branch of an
    `anyOf` and `error`, typed, the other (tried only when the first fails).
    """
    typed = object_schema(tool.output)
    defs: dict[str, Any] = typed.pop("$defs", {})  # a Struct that contains itself
    name = tool.output.__name__
    required: list[str] = typed.get("required", [])
    listed = "; ".join(
        f"{field} ({_type_words(sub)}{'' if field in required else ', optional'})"
        for field, sub in typed["properties"].items()
    )
    return {
        "type": "object",
        "description": f"The result's fields: {listed}. Each is typed in $defs/{name}; a "
        "client checks that the required ones are present, not their types. A tool error's "
        "result is `error` instead.",
        "anyOf": [
            {"required": required},
            {"required": ["error"], "properties": {"error": ERROR_SCHEMA}},
        ],
        "$defs": {name: typed, **defs},
    }


def _type_words(schema: dict[str, Any]) -> str:
    """A field's JSON type in words: `string`, `integer | null`, `"a" | "b"`, `array of
    Recovery`."""
    if "$ref" in schema:
        return str(schema["$ref"]).rpartition("/")[2]
    if "enum" in schema:
        return " | ".join(json.dumps(value) for value in schema["enum"])
    if "type" not in schema:
        return " | ".join(_type_words(each) for each in schema.get("anyOf", [])) or "any"
    kinds = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
    words = []
    for kind in kinds:
        if kind == "array" and isinstance(schema.get("items"), dict):
            words.append(f"array of {_type_words(schema['items'])}")
        elif kind == "object" and "title" in schema:
            words.append(str(schema["title"]))
        else:
            words.append(str(kind))
    return " | ".join(words)


__all__ = [
    "BY_NAME",
    "TOOLS",
    "Annotations",
    "Tool",
    "object_schema",
    "output_schema",
    "params_view",
    "search_text",
    "snake_names",
    "to_snake",
    "wire_params",
]
