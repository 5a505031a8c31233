"""`serve` binds its socket before it loads the server: a client that connects while the
server is still starting (a supervisor's reconnect after a restart) waits in the kernel's
queue and is answered once the server is up, instead of being refused; a server that fails
to start takes its socket back.

The start is held in the middle by an extra-methods module (this one) whose import, in the
server process only, waits for a file the test writes once its client is connected.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path
from typing import Any

from lapce_bridge.ipc.raw import RawClient
from tests.integration.serve_process import server_env

RELEASE = "LAPCE_BRIDGE_TEST_RELEASE"

_release = os.environ.get(RELEASE)
if _release is not None:  # imported by the server under test: hold its start
    _deadline = time.monotonic() + 60
    while not os.path.exists(_release) and time.monotonic() < _deadline:
        time.sleep(0.005)


def methods(app: Any) -> dict[str, Any]:
    return {}


async def _start(tmp_path: Path, extra: str, env: dict[str, str]) -> asyncio.subprocess.Process:
    (tmp_path / "ws").mkdir(exist_ok=True)
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "lapce_bridge", "serve", "--socket", str(tmp_path / "b.sock"),
        "--state-dir", str(tmp_path / "state"), "--workspace", str(tmp_path / "ws"),
        "--extra-methods", extra,
        env=env, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip


async def test_a_client_connecting_while_the_server_starts_is_answered_once_it_is_up(
    tmp_path: Path,
) -> None:
    release = tmp_path / "release"
    env = {**server_env(), RELEASE: str(release)}
    proc = await _start(tmp_path, f"{__name__}:methods", env)
    sock = tmp_path / "b.sock"
    try:
        async with asyncio.timeout(30):
            while not sock.exists():  # noqa: ASYNC110 - another process binds it (held in its start)
                await asyncio.sleep(0.005)
            client = await RawClient.connect_unix(sock)  # accepted by the kernel
            asked = asyncio.ensure_future(client.request("initialize", {"protocolVersion": 1}))
            await asyncio.sleep(0.2)
            assert not asked.done()  # the server is not up yet: nobody answers
            assert proc.returncode is None
            release.touch()
            answer = await asked
            assert "ping" in answer["result"]["capabilities"]["methods"]
            pong = await client.request("ping")
            assert pong["result"] == {"pong": True}
            await client.close()
    finally:
        proc.terminate()
        await proc.wait()
    assert proc.stderr is not None
    said = await proc.stderr.read()
    assert b"listening on unix:" in said


async def test_a_server_that_fails_to_start_removes_the_socket_it_bound(tmp_path: Path) -> None:
    proc = await _start(tmp_path, f"{__name__}:no_such_table", server_env())
    async with asyncio.timeout(60):
        assert proc.stderr is not None
        said = await proc.stderr.read()
        assert await proc.wait() != 0
    assert b"no_such_table" in said
    assert not (tmp_path / "b.sock").exists()
