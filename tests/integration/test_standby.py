"""The warm standby: a real `serve --standby` process, and a supervisor that keeps one.

Real processes throughout: the standby loads, waits on its stdin, serves when told (a real
socket, a real terminal in the real terminal host), exits when its stdin ends, and refuses
to serve code that changed under it (a real copy of the package, a file of it rewritten).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sys
from pathlib import Path

import lapce_bridge
from lapce_bridge.ipc.client import BridgeClient
from lapce_bridge.ipc.paths import probe
from lapce_bridge.ipc.standby import GO, READY, STALE
from tests.integration.serve_process import server_env


def _args(tmp_path: Path) -> tuple[str, ...]:
    ws = tmp_path / "ws"
    ws.mkdir(exist_ok=True)
    return ("--state-dir", str(tmp_path / "state"), "--workspace", str(ws))


async def _standby(
    tmp_path: Path, *extra: str, env: dict[str, str] | None = None
) -> asyncio.subprocess.Process:
    sock = tmp_path / "run" / "bridge.sock"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "lapce_bridge", "serve", "--socket", str(sock),
        *_args(tmp_path), *extra, "--standby",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env or server_env(),
    )  # fmt: skip
    assert proc.stdout is not None
    async with asyncio.timeout(30):
        assert await proc.stdout.readline() == READY
    return proc


def _package_copy(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A copy of the package, and an environment that imports it from there (so a test can
    rewrite its files, as an upgrade does, under a process that loaded them)."""
    copy = tmp_path / "pkg"
    shutil.copytree(
        Path(lapce_bridge.__file__).parent,
        copy / "lapce_bridge",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    return copy, dict(os.environ, PYTHONPATH=str(copy))


async def _ended(proc: asyncio.subprocess.Process) -> int:
    async with asyncio.timeout(30):
        return await proc.wait()


async def test_a_standby_holds_nothing_until_told_and_exits_when_its_stdin_ends(
    tmp_path: Path,
) -> None:
    proc = await _standby(tmp_path)
    sock = tmp_path / "run" / "bridge.sock"
    assert not sock.exists()  # loaded, but nothing bound
    assert not (tmp_path / "state").exists()  # nor any state opened
    assert proc.stdin is not None
    proc.stdin.close()
    assert await _ended(proc) == 0
    assert not sock.exists()


async def test_a_standby_told_to_serve_serves(tmp_path: Path) -> None:
    proc = await _standby(tmp_path)
    sock = tmp_path / "run" / "bridge.sock"
    assert proc.stdin is not None
    assert proc.stderr is not None
    proc.stdin.write(GO)
    await proc.stdin.drain()
    proc.stdin.close()
    try:
        async with asyncio.timeout(30):
            line = await proc.stderr.readline()
        assert line.decode().strip() == f"lapce-bridge: listening on unix:{sock}"
        client = await BridgeClient(sock).connect()
        try:
            assert await client.request("ping") == {"pong": True}
            tid = (await client.request("terminal/create", {"shell": "bash"}))["terminalId"]
            done = await client.request(
                "terminal/execute", {"terminalId": tid, "command": "echo served"}
            )
            assert done["output"] == "served\n"
            assert done["exitCode"] == 0
        finally:
            await client.close()
    finally:
        proc.terminate()
        assert await _ended(proc) == 0
        from lapce_bridge.host.places import stop_host

        await stop_host(tmp_path / "state", (tmp_path / "ws").resolve())


async def test_a_standby_whose_code_changed_does_not_serve_it(tmp_path: Path) -> None:
    """A copy of the package loaded by the standby; one of its files rewritten meanwhile
    (an upgrade): told to serve, it exits `STALE` and binds nothing."""
    copy, env = _package_copy(tmp_path)
    proc = await _standby(tmp_path, env=env)
    app = copy / "lapce_bridge" / "app.py"
    app.write_text(app.read_text() + "\n# upgraded\n")
    assert proc.stdin is not None
    assert proc.stderr is not None
    proc.stdin.write(GO)
    await proc.stdin.drain()
    assert await _ended(proc) == STALE
    assert b"changed since it loaded" in await proc.stderr.read()
    assert not (tmp_path / "run" / "bridge.sock").exists()


async def test_standby_with_stdio_is_refused(tmp_path: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "lapce_bridge", "serve", "--stdio", "--standby",
        stdin=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env=server_env(),
    )  # fmt: skip
    assert await _ended(proc) == 2
    assert proc.stderr is not None
    assert b"--standby waits on stdin" in await proc.stderr.read()


async def test_a_killed_server_is_replaced_by_its_standby(tmp_path: Path) -> None:
    """SIGKILL of a supervised server: the standby it kept is the new server (same pid),
    the terminal made before is there, and a new standby is made for the next time."""
    sock = tmp_path / "run" / "bridge.sock"
    client = await BridgeClient.spawn(
        sock, server_args=_args(tmp_path), env=server_env(), stderr_path=tmp_path / "log"
    )
    sup = client.supervisor
    assert sup is not None
    try:
        tid = (await client.request("terminal/create", {"shell": "bash"}))["terminalId"]
        assert await sup.standby_ready()
        assert sup.standby is not None
        assert sup.process is not None
        spare, first = sup.standby.pid, sup.process.pid
        os.kill(first, signal.SIGKILL)
        answer = await client.send_with_recovery(
            "terminal/execute", {"terminalId": tid, "command": "echo back"}
        )
        assert answer["output"] == "back\n"
        assert sup.process is not None
        assert sup.process.pid == spare
        assert sup.promotions == 1
        assert sup.exits == [-signal.SIGKILL]
        assert await sup.standby_ready()  # the next one, for the next death
        second = sup.standby
        assert second is not None
        assert second.pid not in (first, spare)
    finally:
        await client.close()
        from lapce_bridge.host.places import stop_host

        await stop_host(tmp_path / "state", (tmp_path / "ws").resolve())
    # Closing the client ends the server and its standby: no process left behind.
    assert second.returncode == 0  # its stdin ended
    assert sup.process is not None
    assert sup.process.returncode is not None
    assert not await asyncio.to_thread(probe, sock, 0.5)


async def test_a_stale_standby_is_no_death_and_a_server_starts_afresh(tmp_path: Path) -> None:
    """The package rewritten under a kept standby (an upgrade), then the server killed: the
    standby exits `STALE`, a server is started afresh (the upgraded code) and the client is
    answered; only the kill counts as a death."""
    copy, env = _package_copy(tmp_path)
    sock = tmp_path / "run" / "bridge.sock"
    client = await BridgeClient.spawn(
        sock,
        server_args=(*_args(tmp_path), "--terminal-host", "off"),
        env=env,
        stderr_path=tmp_path / "log",
    )
    sup = client.supervisor
    assert sup is not None
    try:
        assert await sup.standby_ready()
        assert sup.standby is not None
        assert sup.process is not None
        spare = sup.standby.pid
        app = copy / "lapce_bridge" / "app.py"
        app.write_text(app.read_text() + "\n# upgraded\n")
        os.kill(sup.process.pid, signal.SIGKILL)
        assert await client.send_with_recovery("ping") == {"pong": True}
        assert sup.process is not None
        assert sup.process.pid != spare
        assert sup.exits == [-signal.SIGKILL]
        assert sup.last_exit == STALE
        assert (sup.starts, sup.promotions) == (3, 1)  # first, the standby's try, afresh
        assert "changed since it loaded" in (tmp_path / "log").read_text()
    finally:
        await client.close()
