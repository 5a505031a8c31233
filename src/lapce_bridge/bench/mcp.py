"""The MCP rows: `run_command` of `echo test` and `search_files` against `grep -rn`.

Both run through a real `lapce-bridge mcp` process over stdio, driven by the official MCP
Python client, as an agent would drive it. The echo row times every call from the client's
send to its parsed answer and checks each answer item by item (exit code 0, output `test`,
cwd the workspace): a wrong or missing one counts as lost. The search row builds 10,000
files of about 10 KB (100 MB; 1,000 in quick mode) with a rare token in some lines, then
alternates `search_files` and `grep -rn` on the same tree (warm page cache for both), and
reports the ratio of their medians; both must find the same lines.
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
from pathlib import Path
from typing import Any

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

    ws = ctx.workdir / "mcp-ws"
    ws.mkdir(parents=True, exist_ok=True)
    tree = ctx.workdir / "mcp-search-tree"
    files = ctx.n(10_000, 1_000)
    needles = await asyncio.to_thread(build_tree, tree, files)
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "lapce_bridge", "mcp", "--workspace", str(ctx.workdir), "--shell", "bash"],
        env=dict(os.environ),
        cwd=str(ws),
    )
    rows: list[Row] = []
    with (ctx.workdir / "mcp-server.log").open("w") as errlog:
        async with (
            stdio_client(params, errlog=errlog) as (read, write),
            ClientSession(read, write) as session,
        ):
            await session.initialize()
            rows.append(await _echo_row(ctx, session))
            if shutil.which("grep") is not None:
                rows.append(await _search_row(ctx, session, tree, files, needles))
    return rows


async def _echo_row(ctx: BenchContext, session: Any) -> Row:
    calls = ctx.n(10_000, 300)
    warmup = 20
    args = {"command": "echo test", "cwd": str(ctx.workdir)}
    samples: list[float] = []
    lost = 0
    for i in range(warmup + calls):
        started = time.perf_counter()
        result = await session.call_tool("run_command", args)
        elapsed = time.perf_counter() - started
        if i < warmup:
            continue
        samples.append(elapsed)
        got = result.structured_content or {}
        if (
            result.is_error
            or got.get("exit_code") != 0
            or got.get("output") != "test\n"
            or got.get("cwd") != str(ctx.workdir)
        ):
            lost += 1
    row = latency_row(
        SUITE,
        "run_command echo test (MCP stdio)",
        samples,
        goal=(1000.0, 5000.0),
        note=f"{calls} calls through the Python MCP client; {lost} answers wrong or lost",
    )
    extra = dict(row.extra)
    extra["lost"] = float(lost)
    from dataclasses import replace

    return replace(row, extra=extra)


async def _search_row(ctx: BenchContext, session: Any, tree: Path, files: int, needles: int) -> Row:
    rel = tree.name
    ours: list[float] = []
    theirs: list[float] = []
    found_ours = found_grep = 0
    for _ in range(ctx.n(7, 3)):
        started = time.perf_counter()
        result = await session.call_tool(
            "search_files",
            {"query": NEEDLE, "path": rel, "max_results": 10_000, "gitignore": False},
        )
        ours.append(time.perf_counter() - started)
        got = result.structured_content or {}
        found_ours = len(got.get("matches", []))
        elapsed, found_grep = await asyncio.to_thread(grep_lines, tree)
        theirs.append(elapsed)
    ours_ms = statistics.median(ours) * 1000
    grep_ms = statistics.median(theirs) * 1000
    same = found_ours == found_grep == needles
    return figure_row(
        SUITE,
        f"search_files / grep -rn, {files} files",
        ours_ms / grep_ms,
        "x",
        higher_is_better=False,
        goal=1.0,
        samples=len(ours),
        note=(
            f"search_files {ours_ms:.0f} ms, grep -rn {grep_ms:.0f} ms (medians); "
            f"{found_ours} lines found, grep {found_grep}, written {needles}"
            + ("" if same else "; MISMATCH")
        ),
        extra={"search_ms": ours_ms, "grep_ms": grep_ms, "matches": float(found_ours),
               "grep_matches": float(found_grep)},
    )  # fmt: skip
