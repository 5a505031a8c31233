"""Idle terminals and connections reaped under pressure, and terminals recreated on next use.

Through a real server on a Unix socket, with real bash terminals: the relief the resource
manager calls under high pressure closes what is idle; the terminal comes back, with its id,
cwd and environment, on its next `terminal/execute`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from lapce_bridge.app import App
from lapce_bridge.ipc.raw import RawClient
from lapce_bridge.ipc.server import BridgeServer
from lapce_bridge.terminal.service import TerminalService

pytestmark = pytest.mark.shells


@asynccontextmanager
async def serving(tmp_path: Path) -> AsyncIterator[tuple[App, BridgeServer, Path]]:
    ws = tmp_path / "ws"
    (ws / "sub").mkdir(parents=True)
    path = tmp_path / "run" / "bridge.sock"
    async with App(workspace=ws, state_dir=tmp_path / "state", default_shell="bash") as app:
        server = BridgeServer(app)
        await server.listen_unix(path)
        try:
            yield app, server, path
        finally:
            await server.aclose()


def terminal_service(app: App) -> TerminalService:
    return next(s for s in app.services if isinstance(s, TerminalService))


def relief(app: App, name: str) -> Any:
    assert app.resources is not None
    return next(r for r in app.resources._reliefs if r.name == name)


async def test_a_reaped_terminal_is_recreated_with_its_cwd_and_env(tmp_path: Path) -> None:
    async with serving(tmp_path) as (app, _server, path):
        client = await RawClient.connect_unix(path)
        created = await client.request("terminal/create", {"env": {"LB_KEPT": "yes"}})
        tid = created["result"]["terminalId"]
        first_pid = created["result"]["pid"]
        moved = await client.request(
            "terminal/execute", {"terminalId": tid, "command": "cd sub; export LB_LATER=later"}
        )
        assert moved["result"]["cwd"].endswith("/ws/sub")
        # What the relief does under high pressure, to terminals idle for 5 minutes.
        assert await terminal_service(app).reap_idle(0.0) == 1
        listed = await client.request("terminal/list")
        assert [t["terminalId"] for t in listed["result"]] == []
        refused = await client.request("terminal/sendText", {"terminalId": tid, "text": "x"})
        assert "relieve memory pressure" in refused["error"]["message"]
        again = await client.request(
            "terminal/execute", {"terminalId": tid, "command": "pwd; echo $LB_KEPT $LB_LATER"}
        )
        result = again["result"]
        assert result["terminalId"] == tid
        # The creation env and what the shell exported later, both back.
        assert result["output"].split() == [str(tmp_path / "ws" / "sub"), "yes", "later"]
        listed = await client.request("terminal/list")
        assert [t["terminalId"] for t in listed["result"]] == [tid]
        assert listed["result"][0]["pid"] != first_pid
        await client.close()


async def test_the_default_terminal_comes_back_after_reaping(tmp_path: Path) -> None:
    async with serving(tmp_path) as (app, _server, path):
        client = await RawClient.connect_unix(path)
        first = await client.request("terminal/execute", {"command": "cd sub && export A=1"})
        terminal = relief(app, "terminals")
        assert await terminal.reap_idle() == 0  # not idle for 5 minutes yet: kept
        assert await terminal_service(app).reap_idle(0.0) == 1
        again = await client.request("terminal/execute", {"command": "pwd"})
        assert again["result"]["terminalId"] == first["result"]["terminalId"]
        assert again["result"]["output"].strip() == str(tmp_path / "ws" / "sub")
        await client.close()


async def test_idle_connections_are_closed_under_pressure(tmp_path: Path) -> None:
    async with serving(tmp_path) as (app, server, path):
        idle = await RawClient.connect_unix(path)
        busy = await RawClient.connect_unix(path)
        assert (await idle.request("ping"))["result"] == {"pong": True}
        assert (await busy.request("ping"))["result"] == {"pong": True}
        assert server.statistics().connections == 2
        assert server.reap_idle_connections(0.0) == 2
        assert await idle.at_eof()
        assert await busy.at_eof()
        fresh = await RawClient.connect_unix(path)  # a client reconnects as usual
        assert (await fresh.request("ping"))["result"] == {"pong": True}
        connections = relief(app, "connections")
        assert await connections.reap_idle() == 0  # fresh is not idle for a minute yet
        await fresh.close()
        for c in (idle, busy):
            await c.close()
