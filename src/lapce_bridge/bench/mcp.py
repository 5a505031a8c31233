"""The MCP rows: `run_command` of `echo test`, `ping`, and content search against `grep -rn`.

The MCP rows run through a real `lapce-bridge mcp` process over stdio, driven by the
official MCP Python client, as an agent would drive it. The echo row times every call from
the client's send to its parsed answer and checks each answer item by item (exit code 0,
output `test`, cwd the workspace, where the default terminal starts): a wrong or missing one
counts as lost; its note gives the server process's CPU per call and the median of the
answers' own `duration_ms` (the command's time in the server's terminal, from the request
reaching the dispatcher to the end mark: what of the call is the terminal's). The command
is `echo test` alone, as the issue's figure names it (a `cwd` argument would add a `cd`
line to each command). The server runs with a fresh, empty HOME, as the terminal suite's
terminals do: its shell reads no rc file of the machine's (a pyenv or prompt-framework hook
that forks at every prompt costs milliseconds a command, and would be measured instead);
a first call checks that the shell sees it. The ping row times the protocol's own `ping` on
the same session: the SDK's request path, client and server, with no tool behind it. The
floor row times the same `run_command` call from the same client against a canned server
(`bench.canned_mcp`) that answers at once with the last real answer and the real tool list:
what the client itself (its request path and its `jsonschema` check of the structured
result) and the pipes cost, with no server work at all.

The search rows build 10,000 files of about 10 KB (100 MB; 1,000 in quick mode) with a rare
token in some lines, then alternate our search and `grep -rn` on the same tree (warm page
cache for both) and report the ratio of their medians; all must find the same lines. Once
through a real `lapce-bridge serve` over its Unix socket (`fs/search`, the `BridgeClient`),
once through MCP (`search_files`), whose note says how much of the call the SDK client
spends validating the answer against the tool's outputSchema (timed apart, the way the
SDK validates: `jsonschema`, draft 2020-12).
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import psutil

from lapce_bridge.bench.report import Row, figure_row, latency_row
from lapce_bridge.bench.runner import BenchContext

SUITE = "mcp"
NEEDLE = "NEEDLE_TOKEN"
WORDS = ("alpha", "beta", "gamma", "delta", "return", "def", "class", "import", "value",
         "self", "print", "for", "while", "yield", "lambda")  # fmt: skip


def build_tree(root: Path, files: int, file_bytes: int = 10_000, seed: int = 11) -> int:
    """`files` text files under `root` in 50 x 20 folders; returns the needle lines written."""
    marker = root / ".complete"
    if marker.exists():
        return int(marker.read_text())
    rng = random.Random(seed)
    needles = 0
    for i in range(files):
        folder = root / f"d{i % 50:02d}" / f"s{(i // 50) % 20:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        lines: list[str] = []
        size = 0
        while size < file_bytes:
            line = " ".join(rng.choice(WORDS) for _ in range(8))
            if rng.random() < 0.0005:
                line += f" {NEEDLE}"
                needles += 1
            lines.append(line)
            size += len(line) + 1
        (folder / f"f{i}.py").write_text("\n".join(lines) + "\n")
    marker.write_text(str(needles))
    return needles


def grep_lines(root: Path) -> tuple[float, int]:
    started = time.perf_counter()
    out = subprocess.run(
        ["grep", "-rn", "--exclude=.complete", NEEDLE, "."],
        cwd=root,
        capture_output=True,
        check=False,
    )
    elapsed = time.perf_counter() - started
    return elapsed, out.stdout.count(b"\n")


async def run(ctx: BenchContext) -> list[Row]:
    from mcp import ClientSession, StdioServerParameters
    from mcp.client.stdio import stdio_client

    from lapce_bridge.bench.ipc import server_process
    from lapce_bridge.ipc.client import BridgeClient

    ws = ctx.workdir / "mcp-ws"
    ws.mkdir(parents=True, exist_ok=True)
    rows: list[Row] = []
    files = ctx.n(10_000, 1_000)
    has_grep = shutil.which("grep") is not None
    async with server_process(ctx.workdir, "mcp-serve") as sock:
        # The tree lies in the serve process's workspace, which is inside the MCP one.
        tree = sock.parent / "workspace" / "search-tree"
        needles = await asyncio.to_thread(build_tree, tree, files)
        if has_grep:
            client = await BridgeClient(sock).connect()
            try:
                rows.append(await _rpc_search_row(ctx, client, tree, files, needles))
            finally:
                await client.close(stop_server=False)
    home = ctx.workdir / "mcp-home"  # empty: the machine's rc files are not ours to time
    home.mkdir(exist_ok=True)
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "lapce_bridge", "mcp", "--workspace", str(ctx.workdir), "--shell", "bash"],
        env={**os.environ, "HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config")},
        cwd=str(ws),
    )
    with (ctx.workdir / "mcp-server.log").open("w") as errlog:
        async with (
            stdio_client(params, errlog=errlog) as (read, write),
            ClientSession(read, write) as session,
        ):
            await session.initialize()
            echo, last = await _echo_row(ctx, session, home)
            rows.append(echo)
            rows.append(await _ping_row(ctx, session))
            tools = [
                t.model_dump(by_alias=True, exclude_none=True, mode="json")
                for t in (await session.list_tools()).tools
            ]
            if has_grep:
                rows.append(await _search_row(ctx, session, tree, files, needles))
    canned = ctx.workdir / "mcp-canned.json"
    canned.write_bytes(orjson.dumps({"tools": tools, "call": last}))
    rows.append(await _floor_row(ctx, canned))
    return rows


def _server_cpu() -> float:
    """CPU seconds used so far by our `lapce-bridge mcp` child process (0 if not found)."""
    for child in psutil.Process().children(recursive=True):
        try:
            if "lapce_bridge" in child.cmdline() and "mcp" in child.cmdline():
                times = child.cpu_times()
                return float(times.user + times.system)
        except psutil.Error:
            continue
    return 0.0


async def _floor_row(ctx: BenchContext, canned: Path) -> Row:
    from mcp import ClientSession, StdioServerParameters
    from mcp.client.stdio import stdio_client

    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "lapce_bridge.bench.canned_mcp", str(canned)],
        env=dict(os.environ),
        cwd=str(ctx.workdir),
    )
    calls = ctx.n(10_000, 300)
    samples: list[float] = []
    wrong = 0
    with (ctx.workdir / "mcp-canned.log").open("w") as errlog:
        async with (
            stdio_client(params, errlog=errlog) as (read, write),
            ClientSession(read, write) as session,
        ):
            await session.initialize()
            await session.list_tools()  # the client checks each answer against the schema
            for i in range(20 + calls):
                started = time.perf_counter()
                result = await session.call_tool("run_command", {"command": "echo test"})
                if i >= 20:
                    samples.append(time.perf_counter() - started)
                    got = result.structured_content or {}
                    wrong += result.is_error or got.get("output") != "test\n"
    return latency_row(
        SUITE,
        "run_command echo test: the SDK client alone (canned server)",
        samples,
        note=f"{calls} calls answered at once with the real answer: the client's own cost and "
        f"the pipes', under every tool call; {wrong} answers wrong",
    )


async def _ping_row(ctx: BenchContext, session: Any) -> Row:
    calls = ctx.n(10_000, 300)
    samples: list[float] = []
    for i in range(20 + calls):
        started = time.perf_counter()
        await session.send_ping()
        if i >= 20:
            samples.append(time.perf_counter() - started)
    return latency_row(
        SUITE,
        "ping (MCP stdio): the SDK's request path",
        samples,
        note=f"{calls} pings through the Python MCP client: its request path and the server's, "
        "no tool behind it",
    )


async def _rpc_search_row(
    ctx: BenchContext, client: Any, tree: Path, files: int, needles: int
) -> Row:
    params = {"query": NEEDLE, "path": tree.name, "maxResults": 10_000, "gitignore": False}
    ours: list[float] = []
    theirs: list[float] = []
    found_ours = found_grep = 0
    await client.request("fs/search", params)  # warm: the module is imported on first use
    for _ in range(ctx.n(7, 3)):
        started = time.perf_counter()
        result = await client.request("fs/search", params)
        ours.append(time.perf_counter() - started)
        found_ours = len(result["matches"])
        elapsed, found_grep = await asyncio.to_thread(grep_lines, tree)
        theirs.append(elapsed)
    return _ratio_row(
        f"fs/search / grep -rn, {files} files (JSON-RPC)", "fs/search", ours, theirs,
        (found_ours, found_grep, needles),
    )  # fmt: skip


def _ratio_row(
    name: str, label: str, ours: list[float], theirs: list[float],
    found: tuple[int, int, int], note: str = "",
) -> Row:  # fmt: skip
    ours_ms = statistics.median(ours) * 1000
    grep_ms = statistics.median(theirs) * 1000
    found_ours, found_grep, needles = found
    same = found_ours == found_grep == needles
    return figure_row(
        SUITE,
        name,
        ours_ms / grep_ms,
        "x",
        higher_is_better=False,
        goal=1.0,
        samples=len(ours),
        note=(
            f"{label} {ours_ms:.0f} ms, grep -rn {grep_ms:.0f} ms (medians); "
            f"{found_ours} lines found, grep {found_grep}, written {needles}"
            + ("" if same else "; MISMATCH") + note
        ),
        extra={"search_ms": ours_ms, "grep_ms": grep_ms, "matches": float(found_ours),
               "grep_matches": float(found_grep)},
    )  # fmt: skip


async def _echo_row(ctx: BenchContext, session: Any, home: Path) -> tuple[Row, dict[str, Any]]:
    """The echo row, and the last answer (wire form) for the floor row."""
    probe = await session.call_tool("run_command", {"command": 'printf "%s\\n" "$HOME"'})
    seen = str((probe.structured_content or {}).get("output", "")).strip()
    shell_home = "an empty HOME" if seen == str(home) else f"HOME {seen!r}"
    calls = ctx.n(10_000, 300)
    warmup = 20
    args = {"command": "echo test"}
    samples: list[float] = []
    in_terminal: list[float] = []
    lost = 0
    cpu = 0.0
    for i in range(warmup + calls):
        if i == warmup:
            cpu = _server_cpu()
        started = time.perf_counter()
        result = await session.call_tool("run_command", args)
        elapsed = time.perf_counter() - started
        if i < warmup:
            continue
        samples.append(elapsed)
        got = result.structured_content or {}
        if isinstance(got.get("duration_ms"), int | float):
            in_terminal.append(got["duration_ms"] * 1000)
        if (
            result.is_error
            or got.get("exit_code") != 0
            or got.get("output") != "test\n"
            or got.get("cwd") != str(ctx.workdir)
        ):
            lost += 1
    cpu_us = (_server_cpu() - cpu) / calls * 1e6
    terminal_us = statistics.median(in_terminal) if in_terminal else 0.0
    row = latency_row(
        SUITE,
        "run_command echo test (MCP stdio)",
        samples,
        goal=(1000.0, 5000.0),
        note=f"{calls} calls through the Python MCP client, the server's shell with "
        f"{shell_home}; {lost} answers wrong or lost; "
        f"server process CPU {cpu_us:.0f} us a call (the shell's apart); the command in the "
        f"server's terminal (its duration_ms: from the request reaching the dispatcher to "
        f"the end mark) {terminal_us:.0f} us p50",
    )
    extra = dict(row.extra)
    extra["lost"] = float(lost)
    extra["server_cpu_us"] = cpu_us
    extra["terminal_us"] = terminal_us
    last = result.model_dump(by_alias=True, exclude_none=True, mode="json")
    return replace(row, extra=extra), last


async def _search_row(ctx: BenchContext, session: Any, tree: Path, files: int, needles: int) -> Row:
    rel = str(tree.relative_to(ctx.workdir))
    ours: list[float] = []
    theirs: list[float] = []
    found_ours = found_grep = 0
    got: dict[str, Any] = {}
    args = {"query": NEEDLE, "path": rel, "max_results": 10_000, "gitignore": False}
    await session.call_tool("search_files", args)  # warm, as the JSON-RPC row
    for _ in range(ctx.n(7, 3)):
        started = time.perf_counter()
        result = await session.call_tool("search_files", args)
        ours.append(time.perf_counter() - started)
        got = result.structured_content or {}
        found_ours = len(got.get("matches", []))
        elapsed, found_grep = await asyncio.to_thread(grep_lines, tree)
        theirs.append(elapsed)
    validating = _validation_ms(got)
    return _ratio_row(
        f"search_files / grep -rn, {files} files (MCP stdio)", "search_files", ours, theirs,
        (found_ours, found_grep, needles),
        f"; of each call, the SDK client's outputSchema check of the answer {validating:.0f} ms",
    )  # fmt: skip


def _validation_ms(structured: dict[str, Any]) -> float:
    """How long the SDK client takes to check one answer against the outputSchema (median of
    3, done as `ClientSession.validate_tool_result` does it)."""
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import best_match

    from lapce_bridge.mcp.tools import BY_NAME, output_schema

    validator = Draft202012Validator(output_schema(BY_NAME["search_files"]))
    times = []
    for _ in range(3):
        started = time.perf_counter()
        best_match(validator.iter_errors(structured))
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000
