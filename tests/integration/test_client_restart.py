"""A real server process killed with SIGKILL and restarted while the client keeps sending.

The server runs as `python -m lapce_bridge serve` with this module's test-only methods
(`--extra-methods tests.integration.test_client_restart:methods`): each appends a line to a
file, so the file proves how many times each request ran, across every restart.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Any

import pytest

from lapce_bridge.core.errors import BridgeError, Unavailable
from lapce_bridge.ipc.client import BridgeClient
from lapce_bridge.rpc import CallContext, Method, Params, method

REPO = Path(__file__).resolve().parents[2]
EXTRA = "tests.integration.test_client_restart:methods"


def methods(app: Any) -> dict[str, Method]:
    """Test-only side effects, loaded by the server process."""

    def append(params: Params, ctx: CallContext) -> Any:
        with open(params["file"], "a", encoding="utf-8") as fh:
            fh.write(f"{params['value']}\n")
        return params["value"]

    async def hang(params: Params, ctx: CallContext) -> None:
        append({"file": params["file"], "value": "started"}, ctx)
        await asyncio.Event().wait()

    return {"test/append": method(append), "test/hang": method(hang)}


def server_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    return env


def workspace(tmp_path: Path) -> Path:
    path = tmp_path / "ws"
    path.mkdir(exist_ok=True)
    return path


async def spawn(tmp_path: Path, **kw: Any) -> BridgeClient:
    return await BridgeClient.spawn(
        tmp_path / "run" / "bridge.sock",
        server_args=(
            "--extra-methods",
            EXTRA,
            "--state-dir",
            str(tmp_path / "state"),
            "--workspace",
            str(workspace(tmp_path)),
        ),
        env=server_env(),
        stderr_path=tmp_path / "server.log",
        **kw,
    )


def kill(client: BridgeClient) -> int:
    assert client.supervisor is not None
    proc = client.supervisor.process
    assert proc is not None
    assert proc.returncode is None
    os.kill(proc.pid, signal.SIGKILL)
    return proc.pid


async def restarted(client: BridgeClient, killed: int | None) -> None:
    """Until a server other than `killed` runs and the client is connected to it."""
    for _ in range(3000):
        sup = client.supervisor
        proc = sup.process if sup is not None else None
        if client.connected and proc is not None and proc.pid != killed and sup and sup.running:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the server was not restarted")


def _unknown_value(exc: BaseException) -> int:
    """The value of a request answered "outcome unknown"; any other error fails the test."""
    assert isinstance(exc, BridgeError), exc
    data = exc.data or {}
    assert data.get("outcome") == "unknown", exc
    key = str(data.get("idempotencyKey"))
    assert key.startswith("append-"), exc
    return int(key.removeprefix("append-"))


async def test_partition_every_request_answered_exactly_once_in_order(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.txt"
    client = await spawn(tmp_path, max_crashes=20)
    try:
        first_pid = (
            client.supervisor.process.pid if client.supervisor and client.supervisor.process else 0
        )
        total = 150
        answered: list[int] = []
        errors: list[BaseException] = []

        async def send(i: int) -> None:
            try:
                answered.append(
                    await client.send_with_recovery(
                        "test/append",
                        {"file": str(ledger), "value": i, "idempotencyKey": f"append-{i}"},
                    )
                )
            except BridgeError as exc:
                errors.append(exc)

        tasks: list[asyncio.Task[None]] = []
        killed: int | None = None
        for i in range(total):
            tasks.append(asyncio.create_task(send(i)))
            if i in (40, 100):
                await restarted(client, killed)
                await asyncio.sleep(0.02)
                killed = kill(client)  # mid-stream: some sent, some answered, some queued
            if i % 10 == 0:
                await asyncio.sleep(0)
        await asyncio.wait_for(asyncio.gather(*tasks), 60)
        # A kill that lands between a keyed request's journal entry and its outcome leaves
        # that one request "outcome unknown" (at most once, never re-run). Inline handlers
        # run one at a time, so each kill can catch at most one.
        unknown = [_unknown_value(exc) for exc in errors]
        assert len(unknown) <= 2, errors
        assert sorted(answered + unknown) == list(range(total))  # every request answered once
        lines = [int(x) for x in ledger.read_text().split()]
        assert set(answered) <= set(lines)  # every answered request ran
        assert lines == sorted(set(lines))  # none ran twice, and they ran in the order sent
        assert set(lines) <= set(range(total))
        assert client.supervisor is not None
        # Our two kills; the exits list names any other death (none is expected).
        assert client.supervisor.exits.count(-9) >= 2
        assert client.supervisor.starts == 1 + len(client.supervisor.exits)
        assert client.supervisor.process is not None
        assert client.supervisor.process.pid != first_pid
        assert client.reconnects >= 2
    finally:
        await client.close()


async def test_a_keyed_request_interrupted_by_a_crash_is_not_run_again(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.txt"
    client = await spawn(tmp_path, max_crashes=20)
    try:
        hung = asyncio.create_task(
            client.send_with_recovery(
                "test/hang", {"file": str(ledger), "idempotencyKey": "once-only"}
            )
        )
        # The handler has written its line (the file exists a moment before it holds it).
        async with asyncio.timeout(60):
            while not (ledger.exists() and ledger.read_text() == "started\n"):  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        kill(client)
        with pytest.raises(BridgeError) as info:
            await asyncio.wait_for(hung, 30)
        assert info.value.code == -32603
        assert info.value.data["outcome"] == "unknown"
        assert info.value.classification.retryable is False
        assert ledger.read_text() == "started\n"  # the restarted server did not run it again
        # A finished result survives the restart too.
        params = {"file": str(ledger), "value": 7, "idempotencyKey": "kept"}
        assert await client.send_with_recovery("test/append", params) == 7
        killed = kill(client)
        await restarted(client, killed)
        assert await client.send_with_recovery("test/append", params) == 7
        assert ledger.read_text() == "started\n7\n"
    finally:
        await client.close()


async def test_a_crash_looping_server_is_given_up_with_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(Unavailable, match=r"died 2 times within 60 s"):
        await BridgeClient.spawn(
            tmp_path / "run" / "bridge.sock",
            server_args=("--max-message-bytes", "1"),  # refused at start-up: exits at once
            env=server_env(),
            max_crashes=2,
            crash_window=60.0,
        )


async def test_a_death_at_the_crash_limit_is_not_undone_by_a_reconnect(tmp_path: Path) -> None:
    """A client tries to connect the moment its server dies, and each try first asks the
    supervisor to have a server running: one such call between the exit and its watcher's
    verdict must not start a server the verdict gives up on (here at the first death)."""
    client = await spawn(tmp_path, max_crashes=1)
    sup = client.supervisor
    assert sup is not None
    try:
        kill(client)
        given_up: Unavailable | None = None
        deadline = asyncio.get_running_loop().time() + 30
        while given_up is None and asyncio.get_running_loop().time() < deadline:
            try:
                await sup.ensure_running()  # what every connect attempt does first
            except Unavailable as exc:
                given_up = exc
            assert sup.starts == 1, "a server was started past the crash limit"
            await asyncio.sleep(0)  # one loop turn at a time: the exit is seen between two
        assert given_up is not None
        assert "died 1 times" in str(given_up)
        await asyncio.sleep(0.5)
        assert sup.starts == 1
        assert not sup.running
    finally:
        await client.close()


async def start_server(tmp_path: Path, *extra: str) -> tuple[asyncio.subprocess.Process, Path]:
    sock = tmp_path / "run" / "bridge.sock"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "lapce_bridge", "serve", "--socket", str(sock),
        "--state-dir", str(tmp_path / "state"), "--extra-methods", EXTRA,
        "--workspace", str(workspace(tmp_path)), *extra,
        env=server_env(),
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stderr is not None
    ready = await asyncio.wait_for(proc.stderr.readline(), 30)
    assert ready.decode().strip() == f"lapce-bridge: listening on unix:{sock}"
    return proc, sock


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_a_signal_drains_and_removes_the_socket(tmp_path: Path, sig: signal.Signals) -> None:
    proc, sock = await start_server(tmp_path)
    async with BridgeClient(sock) as client:
        assert await client.request("ping") == {"pong": True}
        proc.send_signal(sig)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
    assert not sock.exists()


async def test_a_second_signal_cuts_the_drain_short(tmp_path: Path) -> None:
    proc, sock = await start_server(tmp_path, "--shutdown-grace", "60")
    ledger = tmp_path / "ledger.txt"
    async with BridgeClient(sock) as client:
        hung = asyncio.create_task(client.request("test/hang", {"file": str(ledger)}))
        for _ in range(500):
            if ledger.exists():
                break
            await asyncio.sleep(0.01)
        proc.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.5)
        assert proc.returncode is None  # draining: the hung request may still finish
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 10) == 0
        with pytest.raises(Unavailable, match="shutting down") as info:
            await hung
        assert info.value.data["shuttingDown"] is True


async def test_stdio_transport(tmp_path: Path) -> None:
    from lapce_bridge.ipc.raw import frame

    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "lapce_bridge", "serve", "--stdio",
        "--workspace", str(workspace(tmp_path)), "--state-dir", str(tmp_path / "state"),
        env=server_env(),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        cwd=tmp_path,
    )  # fmt: skip
    assert proc.stdin is not None
    assert proc.stdout is not None
    proc.stdin.write(frame({"jsonrpc": "2.0", "id": 1, "method": "ping"}))
    proc.stdin.write(b"not a frame\r\n\r\n")
    await proc.stdin.drain()
    header = await asyncio.wait_for(proc.stdout.readuntil(b"\r\n\r\n"), 30)
    body = await proc.stdout.readexactly(int(header.split(b":")[1]))
    assert body == b'{"jsonrpc":"2.0","id":1,"result":{"pong":true}}'
    header = await asyncio.wait_for(proc.stdout.readuntil(b"\r\n\r\n"), 30)
    body = await proc.stdout.readexactly(int(header.split(b":")[1]))
    assert b'"code":-32700' in body
    proc.stdin.close()  # the editor went away: the server exits
    assert await asyncio.wait_for(proc.wait(), 30) == 0


async def test_a_second_server_on_the_same_socket_refuses_to_start(tmp_path: Path) -> None:
    proc, sock = await start_server(tmp_path)
    try:
        second = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "lapce_bridge", "serve", "--socket", str(sock),
            "--state-dir", str(tmp_path / "state2"), "--workspace", str(workspace(tmp_path)),
            env=server_env(),
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        _, err = await asyncio.wait_for(second.communicate(), 30)
        assert second.returncode == 1
        assert f"already listening on {sock}" in err.decode()
        async with BridgeClient(sock) as client:  # the first one is untouched
            assert await client.request("ping") == {"pong": True}
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 30)
