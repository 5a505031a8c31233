"""A real `serve --stdio` keeps its state private: folder 0700, spooled output 0600."""

from __future__ import annotations

import asyncio
import os
import stat
import sys
from pathlib import Path
from typing import Any

import orjson

from lapce_bridge.ipc.raw import frame

REPO = Path(__file__).resolve().parents[2] / "src"


async def call(proc: asyncio.subprocess.Process, msg_id: int, method: str, params: Any) -> Any:
    assert proc.stdin is not None
    assert proc.stdout is not None
    proc.stdin.write(frame({"jsonrpc": "2.0", "id": msg_id, "method": method, "params": params}))
    await proc.stdin.drain()
    while True:  # notifications (terminal/commandFinished, ...) may come first
        header = await asyncio.wait_for(proc.stdout.readuntil(b"\r\n\r\n"), 60)
        body = orjson.loads(await proc.stdout.readexactly(int(header.split(b":")[1])))
        if body.get("id") == msg_id:
            assert "error" not in body, body
            return body["result"]


async def test_stdio_state_and_spools_are_private(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    env["XDG_STATE_HOME"] = str(tmp_path / "xdg")  # the default state folder, no --state-dir
    old = os.umask(0o022)  # the usual umask, under which files used to come out 0644
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "lapce_bridge", "serve", "--stdio", "--workspace", str(ws),
            env=env, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL, cwd=tmp_path,
        )  # fmt: skip
    finally:
        os.umask(old)
    try:
        await call(proc, 1, "initialize", {"protocolVersion": 1})
        result = await call(
            proc,
            2,
            "terminal/execute",
            {"command": "head -c 300000 /dev/zero | tr '\\0' s", "maxOutputBytes": 1024},
        )
        assert result["truncated"] is True  # the whole output went to a spool file
        state = tmp_path / "xdg" / "lapce-bridge"
        assert stat.S_IMODE(state.stat().st_mode) == 0o700
        spools = list(state.rglob("*.out"))
        assert spools, sorted(str(p) for p in state.rglob("*"))
        for spool in spools:
            assert stat.S_IMODE(spool.stat().st_mode) == 0o600
            assert stat.S_IMODE(spool.parent.stat().st_mode) == 0o700
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        await asyncio.wait_for(proc.wait(), 60)
