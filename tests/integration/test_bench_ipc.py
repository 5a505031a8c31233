"""The IPC bench clients measure what they claim even when the server sends notifications."""

from __future__ import annotations

import asyncio
from pathlib import Path

from lapce_bridge.app import App
from lapce_bridge.bench.ipc import echo_floor, ping_round_trips, pipelined_rate
from lapce_bridge.ipc.server import BridgeServer


async def _noisy(server: BridgeServer, stop: asyncio.Event) -> None:
    # Health alerts are broadcast to every client; the bench's clients must skip them.
    while not stop.is_set():
        server.broadcast("health/alert", {"kind": "HighLatency", "operation": "ping", "detail": ""})
        await asyncio.sleep(0.001)


async def test_bench_clients_skip_notifications(tmp_path: Path) -> None:
    sock = tmp_path / "bridge.sock"
    async with App(workspace=tmp_path, services=False) as app:
        server = BridgeServer(app)
        await server.listen_unix(sock)
        stop = asyncio.Event()
        noise = asyncio.ensure_future(_noisy(server, stop))
        try:
            samples = await asyncio.to_thread(ping_round_trips, sock, 300, 10)
            rate = await asyncio.to_thread(pipelined_rate, sock, 2000)
        finally:
            stop.set()
            await noise
            await server.aclose()
    assert len(samples) == 300
    assert all(s > 0 for s in samples)
    assert rate > 0


async def test_echo_floor_counts_every_echoed_ping(tmp_path: Path) -> None:
    # The echo server answers with the request itself, which names a method: the client
    # must not take it for a notification and wait for another answer.
    samples = await echo_floor(tmp_path, 200)
    assert len(samples) == 200
    assert all(s > 0 for s in samples)
