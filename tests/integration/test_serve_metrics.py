"""`lapce-bridge serve --metrics-port`: a real server process scraped over HTTP."""

from __future__ import annotations

import asyncio
import signal
import socket
import sys
import urllib.request
from pathlib import Path

import orjson

from lapce_bridge.ipc.framing import encode
from lapce_bridge.ipc.raw import BlockingRawClient


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
