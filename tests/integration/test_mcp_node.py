"""`lapce-bridge mcp` over stdio, driven by the official Node MCP client
(@modelcontextprotocol/sdk, in tests/interop/mcp.mjs), which also checks every structured
result against the tool's outputSchema."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
from pathlib import Path

import pytest

INTEROP = Path(__file__).resolve().parents[1] / "interop"
NODE = shutil.which("node")

pytestmark = [
    pytest.mark.skipif(
        NODE is None
        or not (INTEROP / "node_modules" / "@modelcontextprotocol" / "sdk").is_dir()
        or shutil.which("bash") is None,
        reason="node, bash or tests/interop/node_modules is absent (run `npm ci` in tests/interop)",
    ),
    # One client session runs a dozen tool calls and two tasks: more than the default 60 s
    # on a loaded machine.
    pytest.mark.timeout(180),
]

CHECKS = [
    "tool names", "schemas", "run_command", "prompt detected", "prompt answered",
    "edit unique", "edit ambiguous refused", "search", "read back", "tasks capability",
    "task runs to its result", "task progress and status", "task cancelled",
]  # fmt: skip


async def test_node_sdk_client_over_stdio(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "calc.py").write_text(
        "def add(a, b):\n    return a + b\n\n\ndef sub(a, b):\n    return a - b\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    env["HOME"] = str(tmp_path)
    env["XDG_STATE_HOME"] = str(tmp_path / "state")
    assert NODE is not None
    proc = await asyncio.create_subprocess_exec(
        NODE, str(INTEROP / "mcp.mjs"), sys.executable, str(ws),
        cwd=INTEROP, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    results = [json.loads(line) for line in out.decode().splitlines() if line.startswith("{")]
    failed = [r for r in results if not r["ok"]]
    assert not failed, (failed, err.decode()[-2000:])
    assert [r["check"] for r in results] == CHECKS, err.decode()[-2000:]
    assert proc.returncode == 0, err.decode()[-2000:]
    assert "lapce-bridge: MCP on stdio" in err.decode()
