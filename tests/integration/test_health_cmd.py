"""`lapce-bridge health` against a running `lapce-bridge serve`, and the server's log lines."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import orjson

from lapce_bridge.ipc.raw import RawClient


async def serve(tmp_path: Path, *extra: str) -> tuple[asyncio.subprocess.Process, Path]:
    sock = tmp_path / "bridge.sock"
    (tmp_path / "ws").mkdir(exist_ok=True)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "lapce_bridge", "serve", "--socket", str(sock),
        "--workspace", str(tmp_path / "ws"), "--state-dir", str(tmp_path / "state"), *extra,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stderr is not None
    line = await asyncio.wait_for(proc.stderr.readline(), 30)
    assert b"listening on" in line, line
    return proc, sock


async def health(*args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "lapce_bridge", "health", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={"COLUMNS": "160", "PATH": "/usr/bin:/bin", "PYTHONPATH": ":".join(sys.path)},
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, (out + err).decode()


async def test_health_shows_a_running_server(tmp_path: Path) -> None:
    proc, sock = await serve(tmp_path)
    try:
        client = await RawClient.connect_unix(sock)
        for _ in range(12):
            assert (await client.request("ping"))["result"] == {"pong": True}
        code, text = await health("--socket", str(sock))
        assert code == 0, text
        for expected in (
            "status healthy",
            "pressure",
            "ping",
            "500 us",  # the specification's p99 target for a ping
            "availability",
            "recovery time",
            "data loss",
            "no active alerts",
        ):
            assert expected in text, (expected, text)
        code, text = await health("--socket", str(sock), "--json")
        assert code == 0
        report = orjson.loads(text)
        assert report["status"] == "healthy"
        assert report["operations"]["ping"]["calls"] == 12
        assert report["slos"]["availability"]["calls"] >= 12
        await client.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
    code, text = await health("--socket", str(sock))
    assert code == 3
    assert "no server answers" in text


async def test_json_log_lines_tell_of_start_pressure_and_stop(tmp_path: Path) -> None:
    proc, sock = await serve(tmp_path, "--log-format", "json", "--memory-budget", "16M")
    assert proc.stderr is not None
    client = await RawClient.connect_unix(sock)
    # 16 MiB is less than the server itself: it refuses new terminals, and says so once.
    refused = None
    for _ in range(100):
        refused = await client.request("terminal/create", {})
        if "error" in refused:
            break
        await asyncio.sleep(0.1)  # the first sample comes within a second of the start
    assert refused is not None
    assert refused["error"]["code"] == -32005
    await client.close()
    proc.send_signal(signal.SIGTERM)
    rest = await asyncio.wait_for(proc.stderr.read(), 30)
    assert await proc.wait() == 0
    entries = [orjson.loads(line) for line in rest.splitlines() if line.startswith(b"{")]
    messages = [e["message"] for e in entries]
    assert all({"ts", "level", "logger", "message"} <= set(e) for e in entries)
    assert any(m.startswith("pressure ") and "critical" in m for m in messages), messages
    assert any(m.startswith("refusing terminal/create") for m in messages), messages
    assert any(m.startswith("shutting down: signal SIGTERM") for m in messages), messages
    assert any(m.startswith("stopped") for m in messages), messages
    assert entries[0]["ts"].endswith("Z")
