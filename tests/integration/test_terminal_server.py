"""terminal/* end to end: a real client, the real server over a Unix socket, real shells."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from lapce_bridge.app import App
from lapce_bridge.ipc.raw import RawClient
from lapce_bridge.ipc.server import BridgeServer


async def _notifications(client: RawClient, method: str, count: int) -> list[Any]:
    found: list[Any] = []
    while len(found) < count:
        msg = await asyncio.wait_for(client.recv(), 10)
        if isinstance(msg, dict) and msg.get("method") == method:
            found.append(msg["params"])
    return found


async def test_execute_stream_errors_and_exit_over_the_wire(tmp_path: Path) -> None:
    workspace = tmp_path / "ws"
    workspace.mkdir()
    # In process, the server's memory is the whole test run's (hundreds of MiB late in a
    # full run): with the default 512 MiB budget, pressure refused terminal/create -32005
    # before its cwd was checked. A budget for the test process keeps admission on.
    async with App(
        workspace=workspace,
        state_dir=tmp_path / "state",
        default_shell="bash",
        memory_budget=4 << 30,
    ) as app:
        server = BridgeServer(app)
        await server.listen_unix(tmp_path / "bridge.sock")
        client = await RawClient.connect_unix(tmp_path / "bridge.sock")
        try:
            reply = await client.request(
                "terminal/execute", {"command": "printf 'a\\nb\\n'; (exit 3)", "stream": True}
            )
            result = reply["result"]
            assert result["output"] == "a\nb\n"
            assert result["exitCode"] == 3
            assert result["cwd"] == str(workspace)
            # The stream may arrive in several chunks; it ends before commandFinished.
            chunks: list[Any] = []
            while True:
                msg = await asyncio.wait_for(client.recv(), 10)
                if msg.get("method") == "terminal/data":
                    chunks.append(msg["params"])
                elif msg.get("method") == "terminal/commandFinished":
                    assert msg["params"]["exitCode"] == 3
                    break
            assert "".join(c["data"] for c in chunks) == "a\nb\n"
            assert {c["executionId"] for c in chunks} == {result["executionId"]}

            bad = await client.request("terminal/execute", {"command": ["ls"]})
            assert bad["error"]["code"] == -32602
            assert bad["error"]["data"]["category"] == "parser"
            assert "'command' must be a string" in bad["error"]["data"]["detail"]

            outside = await client.request("terminal/create", {"cwd": "/"})
            assert outside["error"]["code"] == -32006

            listed = (await client.request("terminal/list"))["result"]
            assert [t["terminalId"] for t in listed] == [result["terminalId"]]
            app_terminals = next(s for s in app.services if hasattr(s, "terminals"))
            app_terminals.terminals[result["terminalId"]].kill()
            exited = await _notifications(client, "terminal/exited", 1)
            assert exited == [
                {"terminalId": result["terminalId"], "exitCode": -9, "willRecover": True}
            ]
            again = (await client.request("terminal/execute", {"command": "echo back"}))["result"]
            assert again["output"] == "back\n"
        finally:
            await client.close()
            await server.aclose()
