"""`lapce-bridge serve --memory-budget`: a real server sheds load under its own memory pressure.

A command in one of the server's terminals holds real, resident memory past the budget. The
server must refuse new work with -32005 while staying up, step quality down, keep every
output readable (a large one on disk and a small one spilled from memory), and restore
quality once the command is interrupted. Pressure is what the bridge owns against its
budget: the report's figures must account for it without the machine's memory use.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from lapce_bridge.ipc.raw import RawClient

pytestmark = [pytest.mark.shells, pytest.mark.slow]

MiB = 1 << 20
BUDGET = 256 * MiB  # the idle server, its terminal host and two bashes own about a fifth of it
HOG = (
    "python3 -c \"import time; b = bytearray(240 << 20); b[::4096] = b'x' * len(b[::4096]); "
    "print('holding', flush=True); time.sleep(600)\""
)


@asynccontextmanager
async def serve(tmp_path: Path, *extra: str) -> AsyncIterator[tuple[RawClient, Any]]:
    sock = tmp_path / "bridge.sock"
    (tmp_path / "ws").mkdir(exist_ok=True)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "lapce_bridge", "serve", "--socket", str(sock),
        "--workspace", str(tmp_path / "ws"), "--state-dir", str(tmp_path / "state"),
        "--shell", "bash", *extra,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stderr is not None
    try:
        line = await asyncio.wait_for(proc.stderr.readline(), 30)
        assert b"listening on" in line, line
        client = await RawClient.connect_unix(sock)
        try:
            yield client, proc
        finally:
            await client.close()
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            await asyncio.wait_for(proc.wait(), 30)


async def health(client: RawClient) -> dict[str, Any]:
    answer = await client.request("health/get")
    result: dict[str, Any] = answer["result"]
    return result


async def until(client: RawClient, check: Any, within: float, what: str) -> dict[str, Any]:
    """Poll health/get (a sampled figure: there is no event to wait on) until `check` holds."""
    deadline = time.monotonic() + within
    while True:
        report = await health(client)
        if check(report):
            return report
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not seen within {within} s; last report: {report}")
        await asyncio.sleep(0.1)


async def test_a_small_budget_sheds_load_stays_up_and_restores_quality(tmp_path: Path) -> None:
    async with serve(tmp_path, "--memory-budget", f"{BUDGET // MiB}M") as (client, proc):
        calm = await until(client, lambda r: "resources" in r, 10, "a first sample")
        res = calm["resources"]
        assert res["budgetBytes"] == BUDGET
        # The pressure is the bridge's own share of its budget; the machine, with far more
        # than 5 % available here, is not part of it.
        assert res["machineAvailablePercent"] > 5
        assert calm["pressure"] == pytest.approx(
            min(100.0, 100.0 * res["ownedBytes"] / BUDGET), abs=0.01
        )
        assert calm["qualityLevel"] == 3
        # Outputs to keep readable: a large one (on disk) and a small one (in memory).
        big = await client.request(
            "terminal/execute", {"command": "seq 1 200000", "maxOutputBytes": 4096}
        )
        assert big["result"]["truncated"] is True
        small = await client.request("terminal/execute", {"command": "echo kept"})
        small_id = small["result"]["executionId"]
        hog_terminal = (await client.request("terminal/create", {}))["result"]["terminalId"]
        running = await client.request(
            "terminal/execute",
            {"terminalId": hog_terminal, "command": HOG, "maxWaitMs": 3000, "idleTimeoutMs": 3000},
        )
        assert "holding" in running["result"]["output"], running

        loaded = await until(
            client, lambda r: r["pressure"] > 80 and r["qualityLevel"] == 0, 20, "shedding"
        )
        assert loaded["status"] == "unhealthy"
        assert loaded["features"]["shell_integration"] is False
        refused = await client.request("terminal/create", {})
        assert refused["error"]["code"] == -32005
        assert refused["error"]["data"]["retryable"] is True
        refused = await client.request("terminal/execute", {"command": "true"})
        assert refused["error"]["code"] == -32005
        assert (await client.request("ping"))["result"] == {"pong": True}  # stays up
        assert loaded["resources"]["refused"] >= 0
        # Every output stays readable, in full, under pressure.
        whole, offset = [], 0
        while True:
            page = await client.request(
                "terminal/readOutput",
                {"executionId": big["result"]["executionId"], "offset": offset},
            )
            whole.append(page["result"]["data"])
            offset = page["result"]["offset"]
            if page["result"]["eof"]:
                break
        assert "".join(whole).split() == [str(i) for i in range(1, 200_001)]
        kept = await client.request("terminal/readOutput", {"executionId": small_id})
        assert kept["result"]["data"] == "kept\n"

        ended = time.monotonic()
        interrupted = await client.request("terminal/interrupt", {"terminalId": hog_terminal})
        assert "error" not in interrupted, interrupted
        restored = await until(
            client,
            lambda r: r["qualityLevel"] == 3 and r["pressure"] <= 30,
            30,
            "quality restored",
        )
        took = time.monotonic() - ended
        assert restored["resources"]["admission"] == "all"
        created = await client.request("terminal/create", {})
        assert "result" in created, created
        assert took < 30
        assert proc.returncode is None
