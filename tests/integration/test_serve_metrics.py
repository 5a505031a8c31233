"""`lapce-bridge serve --metrics-port`: a real server process scraped over HTTP."""

from __future__ import annotations

import asyncio
import signal
import socket
import sys
import urllib.request
from pathlib import Path

import orjson
from prometheus_client.parser import text_string_to_metric_families

from lapce_bridge.ipc.client import BridgeClient
from lapce_bridge.ipc.framing import encode
from lapce_bridge.ipc.raw import BlockingRawClient
from lapce_bridge.metrics_export import GAUGES
from lapce_bridge.testing.server_faults import SPEC
from tests.integration.serve_process import serve


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def test_serve_exposes_prometheus_metrics(tmp_path: Path) -> None:
    sock = tmp_path / "bridge.sock"
    port = _free_port()
    (tmp_path / "ws").mkdir()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "lapce_bridge", "serve", "--socket", str(sock),
        "--workspace", str(tmp_path / "ws"), "--state-dir", str(tmp_path / "state"),
        "--metrics-port", str(port),
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stderr is not None
    try:
        line = await asyncio.wait_for(proc.stderr.readline(), 30)
        assert b"listening on" in line
        client = BlockingRawClient.connect_unix(sock)
        for i in range(3):
            client.send_bytes(encode(orjson.dumps({"jsonrpc": "2.0", "id": i, "method": "ping"})))
            assert client.recv()["result"] == {"pong": True}
        client.close()
        url = f"http://127.0.0.1:{port}/metrics"
        body = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=10).read())
        text = body.decode()
        assert 'lapce_bridge_operation_duration_seconds_count{operation="ping"} 3.0' in text
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0


async def test_every_gauge_and_histogram_carries_the_real_servers_figures(tmp_path: Path) -> None:
    port = _free_port()
    async with serve(
        tmp_path, "--metrics-port", str(port), "--extra-methods", SPEC, "--memory-budget", "256M"
    ) as served:
        client = await BridgeClient(served.socket).connect()
        try:
            ran = await client.request("terminal/execute", {"command": "echo gauged"}, timeout=30)
            assert ran["output"] == "gauged\n"
            await client.request("fs/write", {"path": "f.txt", "content": "kept"})
            assert (await client.request("fs/read", {"path": "f.txt"}))["content"] == "kept"
            await client.request("test/faults/add", {"op": "open", "times": None})
            stale = await client.request("fs/read", {"path": "f.txt"})
            assert stale["stale"] is True
            await client.request("ping")  # (the resource manager sampled once at start)
            got = await client.request("metrics/get")
            health = await client.request("health/get")
            url = f"http://127.0.0.1:{port}/metrics"
            body = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=10).read())
        finally:
            await client.close()
    assert got["counters"]["incidents.cache_fallback"] == 1
    for op in ("terminal/execute", "fs/read", "fs/write", "ping"):
        assert got["operations"][op]["count"] >= 1, op
    assert health["breakers"] == {"fs.disk": "closed"}
    assert [i["kind"] for i in health["incidents"]["open"]] == ["cache_fallback"]
    parsed = {f.name: f for f in text_string_to_metric_families(body.decode())}
    values = {
        suffix: parsed[f"lapce_bridge_{suffix}"].samples[0].value for suffix, _ in GAUGES.values()
    }
    assert 0 < values["memory_pressure_ratio"] < 0.5
    assert values["owned_memory_bytes"] > 10 << 20  # the server's own memory at least
    assert values["memory_budget_bytes"] == 256 << 20
    assert 0 <= values["cpu_ratio"] <= 1
    assert values["quality_level"] == 3
    assert values["terminals"] == 1
    assert values["terminals_busy"] == 0
    assert values["connections"] == 1
    assert values["spool_disk_bytes"] >= 0
    assert values["spool_memory_bytes"] >= 0
    assert values["incidents_open"] == 1
    breaker = {
        s.labels["state"]: s.value
        for s in parsed["lapce_bridge_breaker_state"].samples
        if s.labels["breaker"] == "fs.disk"
    }
    assert breaker == {"closed": 1.0, "open": 0.0, "half_open": 0.0}
    counts = {
        s.labels["operation"]: s.value
        for s in parsed["lapce_bridge_operation_duration_seconds"].samples
        if s.name.endswith("_count")
    }
    for op in ("terminal/execute", "fs/read", "fs/write", "ping"):
        assert counts[op] >= 1, op
    incidents = [
        s.value
        for s in parsed["lapce_bridge_counter"].samples
        if s.labels.get("counter") == "incidents.cache_fallback" and s.name.endswith("_total")
    ]
    assert incidents == [1.0]
    assert parsed["process_resident_memory_bytes"].samples[0].value > 0
