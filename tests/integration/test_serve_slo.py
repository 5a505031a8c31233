"""SLOs survive restarts of a real `lapce-bridge serve`; a crash is a server_restart incident."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Any

from lapce_bridge.ipc.raw import RawClient


async def start(tmp_path: Path) -> tuple[asyncio.subprocess.Process, RawClient, bytes]:
    """A server, a client, and what the server logged before it listened."""
    sock = tmp_path / "bridge.sock"
    (tmp_path / "ws").mkdir(exist_ok=True)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "lapce_bridge", "serve", "--socket", str(sock),
        "--workspace", str(tmp_path / "ws"), "--state-dir", str(tmp_path / "state"),
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stderr is not None
    logged: list[bytes] = []
    while not logged or b"listening on" not in logged[-1]:  # log lines may come first
        logged.append(await asyncio.wait_for(proc.stderr.readline(), 30))
        assert logged[-1], logged
    return proc, await RawClient.connect_unix(sock), b"".join(logged)


async def slos(client: RawClient) -> dict[str, Any]:
    report: dict[str, Any] = (await client.request("health/get"))["result"]
    return report


async def test_slos_survive_a_restart_and_a_crash_is_an_incident(tmp_path: Path) -> None:
    proc, client, logged = await start(tmp_path)
    for _ in range(20):
        assert (await client.request("ping"))["result"] == {"pong": True}
    first = await slos(client)
    assert first["slos"]["availability"]["calls"] == 20  # the health/get itself not yet
    since = first["slos"]["since"]
    await client.close()
    proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(proc.wait(), 30) == 0

    proc, client, logged = await start(tmp_path)
    report = await slos(client)
    availability = report["slos"]["availability"]
    assert availability["calls"] == 21  # the 20 pings and the first health/get, kept
    assert availability["failures"] == 0
    assert report["slos"]["since"] == since
    assert report["incidents"]["recent"] == []  # a clean stop is no incident
    await client.close()
    os.kill(proc.pid, signal.SIGKILL)  # no chance to close the store
    await asyncio.wait_for(proc.wait(), 30)

    proc, client, logged = await start(tmp_path)
    try:
        report = await slos(client)
        # What the killed server counted before its last write is kept; the restart itself
        # is an incident, from its last heartbeat to this start.
        assert report["slos"]["availability"]["calls"] >= 21
        restarts = [i for i in report["incidents"]["recent"] if i["kind"] == "server_restart"]
        assert len(restarts) == 1
        assert restarts[0]["recovered"] is True
        assert restarts[0]["durationMs"] >= 0
        assert report["slos"]["recoveryTime"]["incidents"] == 1
        # The default log level tells of it too (once the services are open, behind the
        # listener: before health/get is answered).
        assert proc.stderr is not None
        while b"incident 1 recovered after" not in logged:
            line = await asyncio.wait_for(proc.stderr.readline(), 30)
            assert line, logged
            logged += line
        assert b"WARNING lapce_bridge.app: incident 1 recovered after" in logged
        assert b"server_restart" in logged
    finally:
        await client.close()
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 30)
