"""A terminal request relayed to the host with no Task of the server's (`Method.relay`) is in
flight like any other: a client's `$/cancelRequest` answers it -32800, the dispatcher's limit
-32001, the server shutting down "shutting down", a client that leaves nothing; each time the
host is told, so the command it ran for that request stops there. A real dispatcher (in-memory
transport, on virtual time for its limits) over the proxy and a real host with real bash."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from lapce_bridge.core.errors import BridgeTimeout, Cancelled, Unavailable
from lapce_bridge.host.proxy import HostProxy
from lapce_bridge.mcp.channel import Channel
from lapce_bridge.rpc import request_limit
from lapce_bridge.testing.clock import FakeClock
from lapce_bridge.testing.memory import MemoryClient, MemoryServer
from tests.integration.test_terminal_host import host_stopped_after

pytestmark = pytest.mark.timeout(120)


@contextlib.asynccontextmanager
async def relaying(
    tmp_path: Path,
) -> AsyncIterator[tuple[HostProxy, MemoryServer, MemoryClient, str]]:
    """A dispatcher on a virtual clock over a proxy attached to a real host, a client, and
    a terminal of its (made before the host was attached: that first request waited for it
    in a task of its own; every later one is relayed)."""
    workspace = tmp_path / "ws"
    workspace.mkdir()
    async with (
        host_stopped_after(tmp_path),
        HostProxy(workspace=workspace, state_dir=tmp_path / "state", default_shell="bash") as proxy,
    ):
        server = MemoryServer(proxy.methods(), clock=FakeClock())
        client = server.connect()
        made = await client.request("terminal/create", {})
        try:
            yield proxy, server, client, made["terminalId"]
        finally:
            await server.aclose()


def relayed(client: MemoryClient) -> list[asyncio.Future[Any]]:
    """What the client's connection has in flight, none of it a Task."""
    inflight = client.connection.inflight_tasks()
    assert inflight
    assert not [f for f in inflight if isinstance(f, asyncio.Task)]
    return inflight


async def running(client: MemoryClient, tid: str) -> None:
    """Until the terminal runs a command (in the host)."""
    async with asyncio.timeout(30):
        while True:
            busy = [t["terminalId"] for t in await client.request("terminal/list") if t["busy"]]
            if busy:
                break
            await asyncio.sleep(0.02)
    assert busy == [tid]


async def freed(client: MemoryClient, tid: str) -> None:
    """The terminal takes the next command at once: the one before was stopped in the host."""
    started = time.monotonic()  # (the dispatcher's clock is virtual, the host's real)
    after = await client.request("terminal/execute", {"terminalId": tid, "command": "echo free"})
    assert (after["output"], after["exitCode"]) == ("free\n", 0)
    assert time.monotonic() - started < 20.0


async def test_a_relayed_request_is_answered_and_cancelled_by_id(tmp_path: Path) -> None:
    async with relaying(tmp_path) as (_, server, client, tid):
        done = await client.request("terminal/execute", {"terminalId": tid, "command": "echo hi"})
        assert (done["output"], done["exitCode"]) == ("hi\n", 0)
        assert client.writes[-1] == ["terminal/commandFinished", "answer"]

        asked = client.send("terminal/execute", {"terminalId": tid, "command": "sleep 30"})
        await running(client, tid)
        relayed(client)
        client.cancel(asked)
        with pytest.raises(Cancelled):
            await asked
        assert client.connection.inflight == 0
        await freed(client, tid)
        assert ("terminal/execute", True) in [(n, ok) for n, _, ok in server.observed]


async def test_a_relayed_request_past_its_limit_is_answered_32001(tmp_path: Path) -> None:
    async with relaying(tmp_path) as (_, server, client, tid):
        params = {"terminalId": tid, "command": "sleep 30"}
        execute = server.state.methods["terminal/execute"]
        limit = request_limit(
            server.state.timeouts.timeout_for("terminal/execute"), execute, params
        )
        assert limit is not None
        asked = client.send("terminal/execute", params)
        await running(client, tid)
        relayed(client)
        clock = server.clock
        assert isinstance(clock, FakeClock)
        await clock.advance(limit - 1.0)
        assert not asked.done()
        await clock.advance(2.0)
        with pytest.raises(BridgeTimeout) as raised:
            await asked
        assert raised.value.data["operation"] == "terminal/execute"
        assert server.state.timeouts.statistics().expired == {"terminal/execute": 1}
        assert ("terminal/execute", BridgeTimeout) in [(n, type(e)) for n, e in server.errors]
        await freed(client, tid)


async def idle(client: MemoryClient) -> None:
    """Until no terminal runs a command."""
    async with asyncio.timeout(30):
        while True:
            if not [t for t in await client.request("terminal/list") if t["busy"]]:
                break
            await asyncio.sleep(0.02)


async def test_a_relayed_request_of_a_client_that_left_is_stopped_in_the_host(
    tmp_path: Path,
) -> None:
    async with relaying(tmp_path) as (_, server, client, tid):
        asked = client.send("terminal/execute", {"terminalId": tid, "command": "sleep 30"})
        await running(client, tid)
        waited = relayed(client)
        client.close()
        assert all(f.done() for f in waited)
        asked.exception()  # the client's own end: the connection was lost
        await idle(server.connect())  # the orphaned terminal's command stopped in the host


async def test_a_relayed_request_left_at_shutdown_is_answered_shutting_down(
    tmp_path: Path,
) -> None:
    async with relaying(tmp_path) as (proxy, server, client, tid):
        asked = client.send("terminal/execute", {"terminalId": tid, "command": "sleep 30"})
        await running(client, tid)
        server.state.shutting_down = True
        for waiter in relayed(client):  # what the server's shutdown does past its grace
            waiter.cancel()
        with pytest.raises(Unavailable) as raised:
            await asked
        assert raised.value.data["shuttingDown"] is True
        assert client.connection.inflight == 0
        other = MemoryServer(proxy.methods())  # a server of the same host, not stopping
        await idle(other.connect())  # the command was stopped in the host
        await other.aclose()


async def test_a_relayed_request_of_an_outlet_without_frames_is_answered_unframed(
    tmp_path: Path,
) -> None:
    """An MCP call's outlet takes answers, not frames: the host is not asked to frame it."""
    async with relaying(tmp_path) as (_, server, _client, tid):
        channel = Channel(server.state, 99)
        done = await channel.call("terminal/execute", {"terminalId": tid, "command": "echo mcp"})
        assert (done["output"], done["exitCode"]) == ("mcp\n", 0)
        listed = await channel.call("terminal/list", {})
        assert tid in [t["terminalId"] for t in listed]
        channel.close()
