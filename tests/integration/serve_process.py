"""A real `lapce-bridge serve` process for tests: started, awaited until it listens, stopped."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from lapce_bridge.ipc.raw import RawClient

REPO = Path(__file__).resolve().parents[2]


def server_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    return env


@dataclass
class Served:
    proc: asyncio.subprocess.Process
    socket: Path
    workspace: Path


@contextlib.asynccontextmanager
async def serve(tmp_path: Path, *args: str, prefix: tuple[str, ...] = ()) -> AsyncIterator[Served]:
    """`python -m lapce_bridge serve` on a socket in `tmp_path`, with the default policies;
    `prefix`: a command that runs it (`sh -c '...; exec "$@"' sh`)."""
    sock = tmp_path / "run" / "bridge.sock"
    ws = tmp_path / "ws"
    ws.mkdir(exist_ok=True)
    proc = await asyncio.create_subprocess_exec(
        *prefix, sys.executable, "-m", "lapce_bridge", "serve", "--socket", str(sock),
        "--state-dir", str(tmp_path / "state"), "--workspace", str(ws), *args,
        env=server_env(),
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        async with asyncio.timeout(30):
            ready = await proc.stderr.readline()
            # After a crash the new server first logs the incident (a line at WARNING).
            while b" WARNING " in ready:
                ready = await proc.stderr.readline()
        assert ready.decode().strip() == f"lapce-bridge: listening on unix:{sock}", ready
        yield Served(proc, sock, ws)
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 20)
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def until_written(client: RawClient, execution_id: str, offset: int) -> None:
    """Wait (polling readOutput, a state no notification announces to this client) until a
    command's output reaches `offset` bytes, or it ended."""
    while True:
        page = await client.request(
            "terminal/readOutput", {"executionId": execution_id, "offset": offset, "limit": 1}
        )
        if page["result"]["data"] or page["result"]["eof"]:
            return
        await asyncio.sleep(0.01)


async def until_busy(client: RawClient, terminal_id: str) -> None:
    """Wait (polling terminal/list) until a terminal runs a command handed to it."""
    async with asyncio.timeout(30):
        while True:
            listed = (await client.request("terminal/list"))["result"]
            if any(t["terminalId"] == terminal_id and t["busy"] for t in listed):
                return
            await asyncio.sleep(0.01)


__all__ = ["REPO", "Served", "serve", "server_env", "until_busy", "until_written"]
