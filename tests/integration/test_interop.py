"""A third-party client (npm `vscode-jsonrpc`, in Node) drives a real server over its socket."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from lapce_bridge.app import App
from lapce_bridge.ipc.server import BridgeServer
from lapce_bridge.rpc import CallContext, Params, method

INTEROP = Path(__file__).resolve().parents[1] / "interop"
NODE = shutil.which("node")

pytestmark = pytest.mark.skipif(
    NODE is None or not (INTEROP / "node_modules" / "vscode-jsonrpc").is_dir(),
    reason="node or tests/interop/node_modules is absent (run `npm ci` in tests/interop)",
)


async def test_vscode_jsonrpc_client(tmp_path: Path) -> None:
    workspace = tmp_path / "ws"
    workspace.mkdir()
    (workspace / "hello.txt").write_text("hello from the workspace\n")
    cancelled: list[bool] = []

    async def slow(params: Params, ctx: CallContext) -> str:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise
        return "not cancelled"

    extra = {"test/slow": method(slow)}
    sock = tmp_path / "run" / "bridge.sock"
    async with App(workspace=workspace, state_dir=tmp_path / "state", extra_methods=extra) as app:
        has_terminal = "terminal/execute" in app.methods
        has_fs = "fs/read" in app.methods
        slow_call: dict[str, Any] = (
            {"method": "terminal/execute", "params": {"command": "sleep 30"}}
            if has_terminal
            else {"method": "test/slow", "params": {}}
        )
        config = {
            "socket": str(sock),
            "file": "hello.txt",
            "slow": slow_call,
            "terminal": has_terminal,
        }
        async with BridgeServer(app) as server:
            await server.listen_unix(sock)
            assert NODE is not None
            proc = await asyncio.create_subprocess_exec(
                NODE,
                str(INTEROP / "interop.mjs"),
                json.dumps(config),
                cwd=INTEROP,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            stdout, stderr = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, stderr.decode()
    out = json.loads(stdout)

    assert out["initialize"]["protocolVersion"] == 1
    assert out["initialize"]["serverInfo"]["name"] == "lapce-bridge"
    assert out["ping"] == {"pong": True}
    assert out["unknown"]["error"]["code"] == -32601
    assert out["cancelled"]["error"]["code"] == -32800
    assert out["pingAfter"] == {"pong": True}
    if has_fs:
        assert out["fsRead"]["content"] == "hello from the workspace\n"
    else:  # the file service is not part of this tree: the method is honestly absent
        assert out["fsRead"]["error"]["code"] == -32601
    if has_terminal:
        assert out["execute"]["exitCode"] == 0
        assert out["execute"]["output"].strip() == "interop-42"
        streamed = out["streamed"]
        assert streamed["exitCode"] == 0
        assert streamed["sameExecution"]
        assert streamed["notifications"] >= 1
        lines = [ln for ln in streamed["streamedText"].splitlines() if ln.startswith("line-")]
        assert lines == [f"line-{i}" for i in range(1, 2001)]
    else:
        assert cancelled == [True]  # the server-side handler really was cancelled
        pytest.skip("terminal/execute steps not run: lapce_bridge.terminal.service is absent")
