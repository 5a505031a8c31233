"""The recovery matrix is the running policy: change a row, and the server and the client change.

Server: the file service's read retries are the filesystem/recoverable row's (a transient EIO,
injected where a healthy disk cannot produce one, is retried or not). Client, against a real
`serve` process: an answer refused before running (-32005) is retried as often as its row
says; reconnecting to a server that is gone gives up after the network/critical row's
attempts with a clear error, and a supervised server is restarted as often as that row
allows. Terminal: whether a dead shell is recreated, and the alert when it is not, are the
terminal/critical row's (a real bash, killed); falling back to raw output for a shell that
prints no end marker is the terminal/recoverable row's.
"""

from __future__ import annotations

import asyncio
import errno
import os
import signal
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from lapce_bridge.app import App
from lapce_bridge.core.errors import (
    ConnectionLost,
    ErrorCategory,
    ErrorSeverity,
    ResourceExhausted,
    Unavailable,
)
from lapce_bridge.core.matrix import DEFAULT_MATRIX, RecoveryMatrix, Strategy
from lapce_bridge.core.retry import RetryPolicy
from lapce_bridge.ipc.client import BridgeClient
from lapce_bridge.ipc.raw import RawClient
from lapce_bridge.ipc.server import BridgeServer
from lapce_bridge.rpc import CallContext, Method, Params, method
from lapce_bridge.testing import Fault, FaultyFs
from tests.integration.serve_process import serve

EXTRA = "tests.integration.test_recovery_matrix:methods"


def methods(app: Any) -> dict[str, Method]:
    """Loaded by the server process: refuses the first `refuse` calls as under pressure."""

    def busy(params: Params, ctx: CallContext) -> int:
        ledger = Path(params["file"])
        with ledger.open("a") as fh:
            fh.write("call\n")
        calls = len(ledger.read_text().split())
        if calls <= params["refuse"]:
            raise ResourceExhausted("memory pressure: try again shortly")
        return calls

    return {"test/busy": method(busy)}


def _with(category: ErrorCategory, severity: ErrorSeverity, retries: int) -> RecoveryMatrix:
    return DEFAULT_MATRIX.with_row(
        replace(DEFAULT_MATRIX.lookup(category, severity), max_retries=retries)
    )


def _fast(attempts: int | None = None) -> RetryPolicy:
    return RetryPolicy(max_attempts=attempts, initial_delay=0.001, max_delay=0.005, jitter=0.0)


@pytest.mark.parametrize(("retries", "answered"), [(3, True), (1, False)])
async def test_a_changed_filesystem_row_changes_the_servers_read_retries(
    tmp_path: Path, retries: int, answered: bool
) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "a.txt").write_text("hello")
    faults = FaultyFs(faults=[Fault("read", errno.EIO, times=2)])  # two transient failures
    matrix = _with(ErrorCategory.FILESYSTEM, ErrorSeverity.RECOVERABLE, retries)
    async with App(workspace=ws, state_dir=tmp_path / "state", matrix=matrix, fs_ops=faults) as app:
        server = BridgeServer(app)
        await server.listen_unix(tmp_path / "bridge.sock")
        client = await RawClient.connect_unix(tmp_path / "bridge.sock")
        try:
            reply = await client.request("fs/read", {"path": "a.txt"})
        finally:
            await client.close()
            await server.aclose()
    if answered:
        assert reply["result"]["content"] == "hello"
        assert faults.outcomes("read")[:2] == ["EIO", "EIO"]
    else:
        assert reply["error"]["code"] == -32004
        assert reply["error"]["data"]["errno"] == "EIO"
        assert faults.outcomes("read") == ["EIO", "EIO"]  # one retry, as the row says


async def test_a_changed_resource_row_changes_the_clients_retries(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.txt"
    async with serve(tmp_path, "--extra-methods", EXTRA) as srv:
        async with BridgeClient(srv.socket, retry=_fast()) as client:
            # The default row (throttle_operations, unbounded) retries: the third call runs.
            assert await client.request("test/busy", {"file": str(ledger), "refuse": 2}) == 3
            assert client.retried == 2
        ledger.unlink()
        no_retry = _with(ErrorCategory.RESOURCE, ErrorSeverity.RECOVERABLE, 0)
        async with BridgeClient(srv.socket, retry=_fast(), matrix=no_retry) as client:
            with pytest.raises(ResourceExhausted):
                await client.request("test/busy", {"file": str(ledger), "refuse": 2})
            assert client.retried == 0
            assert ledger.read_text().split() == ["call"]
            # The recovery path follows the same row.
            with pytest.raises(ResourceExhausted):
                await client.send_with_recovery("test/busy", {"file": str(ledger), "refuse": 2})
        ledger.unlink()
        one_retry = _with(ErrorCategory.RESOURCE, ErrorSeverity.RECOVERABLE, 1)
        async with BridgeClient(srv.socket, retry=_fast(), matrix=one_retry) as client:
            answer = await client.send_with_recovery(
                "test/busy", {"file": str(ledger), "refuse": 1}
            )
            assert answer == 2
            assert client.retried == 1


@pytest.mark.parametrize("retries", [1, 3])
async def test_reconnecting_gives_up_after_the_rows_attempts(tmp_path: Path, retries: int) -> None:
    matrix = _with(ErrorCategory.NETWORK, ErrorSeverity.CRITICAL, retries)
    async with serve(tmp_path) as srv:
        client = BridgeClient(srv.socket, retry=_fast(), matrix=matrix, outage_grace=0.0)
        await client.connect()
        srv.proc.terminate()
        await srv.proc.wait()
        with pytest.raises(ConnectionLost, match="gave up reconnecting") as info:
            await client.send_with_recovery("ping")
        assert info.value.data["attempts"] == 1 + retries
        await client.close()


@pytest.mark.parametrize("retries", [1, 2])
async def test_a_changed_network_row_bounds_the_supervisors_restarts(
    tmp_path: Path, retries: int
) -> None:
    matrix = _with(ErrorCategory.NETWORK, ErrorSeverity.CRITICAL, retries)
    with pytest.raises(Unavailable, match=rf"died {1 + retries} times within 60 s"):
        await BridgeClient.spawn(
            tmp_path / "run" / "bridge.sock",
            server_args=("--max-message-bytes", "1"),  # refused at start-up: exits at once
            matrix=matrix,
        )


async def _notification(client: RawClient, name: str) -> dict[str, Any]:
    while True:
        msg = await asyncio.wait_for(client.recv(), 30)
        if msg.get("method") == name:
            params: dict[str, Any] = msg["params"]
            return params


@pytest.mark.shells
@pytest.mark.parametrize(("retries", "recreated"), [(1, True), (0, False)])
async def test_a_changed_terminal_row_decides_whether_a_dead_shell_comes_back(
    tmp_path: Path, retries: int, recreated: bool
) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    matrix = _with(ErrorCategory.TERMINAL, ErrorSeverity.CRITICAL, retries)
    async with App(workspace=ws, state_dir=tmp_path / "state", matrix=matrix) as app:
        server = BridgeServer(app)
        await server.listen_unix(tmp_path / "bridge.sock")
        client = await RawClient.connect_unix(tmp_path / "bridge.sock")
        try:
            created = await client.request("terminal/create", {"shell": "bash"})
            tid, pid = created["result"]["terminalId"], created["result"]["pid"]
            os.kill(pid, signal.SIGKILL)  # the shell dies: terminal/critical
            exited = await _notification(client, "terminal/exited")
            assert exited["terminalId"] == tid
            assert exited["willRecover"] is recreated
            if not recreated:  # the row's fallback, alert_user, carried out
                alert = await _notification(client, "health/alert")
                assert alert["kind"] == "TerminalFailed"
                assert tid in alert["detail"]
            reply = await client.request(
                "terminal/execute", {"terminalId": tid, "command": "echo back"}
            )
            if recreated:
                assert reply["result"]["output"] == "back\n", reply
            else:
                assert "error" in reply, reply
        finally:
            await client.close()
            await server.aclose()


@pytest.mark.shells
@pytest.mark.parametrize("fallback", [Strategy.RAW_OUTPUT_MODE, Strategy.NONE])
async def test_a_changed_terminal_row_decides_the_fallback_for_a_shell_without_marks(
    tmp_path: Path, fallback: Strategy
) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    rc = tmp_path / "rc.sh"
    rc.write_text("printf() { :; }\n")  # dash reads $ENV: no end mark can ever be printed
    row = DEFAULT_MATRIX.lookup(ErrorCategory.TERMINAL, ErrorSeverity.RECOVERABLE)
    matrix = DEFAULT_MATRIX.with_row(replace(row, fallback=fallback))
    async with App(workspace=ws, state_dir=tmp_path / "state", matrix=matrix) as app:
        server = BridgeServer(app)
        await server.listen_unix(tmp_path / "bridge.sock")
        client = await RawClient.connect_unix(tmp_path / "bridge.sock")
        try:
            created = await client.request(
                "terminal/create", {"shell": "dash", "env": {"HOME": str(ws), "ENV": str(rc)}}
            )
            if fallback is Strategy.RAW_OUTPUT_MODE:
                tid = created["result"]["terminalId"]
                reply = await client.request(
                    "terminal/execute", {"terminalId": tid, "command": "echo raw"}
                )
                assert reply["result"]["output"] == "raw\n", reply
                assert [r["action"] for r in reply["result"]["recoveries"]] == ["raw_output_mode"]
            else:
                assert "raw_output_mode" in created["error"]["message"], created
                assert "none" in created["error"]["message"]
        finally:
            await client.close()
            await server.aclose()
