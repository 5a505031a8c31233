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
import json
import os
import shutil
import signal
import sys
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
from lapce_bridge.core.matrix import DEFAULT_MATRIX, RecoveryMatrix, Strategy, load_matrix
from lapce_bridge.core.retry import RetryPolicy
from lapce_bridge.ipc.client import BridgeClient
from lapce_bridge.ipc.raw import RawClient
from lapce_bridge.ipc.server import BridgeServer
from lapce_bridge.rpc import CallContext, Method, Params, method
from lapce_bridge.testing import Fault, FaultyFs
from tests.integration.serve_process import serve, server_env, until_busy

EXTRA = "tests.integration.test_recovery_matrix:methods"
FAULTS = "lapce_bridge.testing.server_faults:methods"  # shipped: injects errnos into a serve


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


async def test_a_supervised_client_gives_up_reconnecting_after_the_rows_attempts(
    tmp_path: Path,
) -> None:
    """The supervisor restarts the server, which runs but never answers on the socket: the
    client waits out the restart's `start_timeout`, then gives up after the network/critical
    row's attempts (read from the same kind of file `serve` takes) with a clear error."""
    rows = tmp_path / "client-matrix.json"
    rows.write_text(
        json.dumps({"rows": [{"category": "network", "severity": "critical", "maxRetries": 2}]})
    )
    ws = tmp_path / "ws"
    ws.mkdir()
    client = await BridgeClient.spawn(
        tmp_path / "run" / "bridge.sock",
        server_args=("--state-dir", str(tmp_path / "state"), "--workspace", str(ws)),
        env=server_env(),
        matrix=load_matrix(rows),
        retry=_fast(),
    )
    try:
        assert await client.request("ping") == {"pong": True}
        supervisor = client.supervisor
        assert supervisor is not None
        assert supervisor.process is not None
        supervisor.start_timeout = 1.0  # a restart gets a second to listen
        # Its next start listens elsewhere: a live server that never answers here.
        supervisor.args = (*supervisor.args, "--socket", str(tmp_path / "elsewhere.sock"))
        os.kill(supervisor.process.pid, signal.SIGKILL)
        with pytest.raises(ConnectionLost, match=r"gave up reconnecting .* after 3 attempts"):
            await asyncio.wait_for(client.send_with_recovery("ping"), 60)
        assert supervisor.starts == 2  # restarted once, and running: not a crash loop
        assert supervisor.running
    finally:
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


def _rows(tmp_path: Path, *rows: dict[str, Any]) -> tuple[str, str]:
    """`serve`'s option for a matrix file holding `rows` (TOML, as a user writes it)."""
    path = tmp_path / "matrix.toml"
    lines: list[str] = []
    for row in rows:
        lines.append("[[rows]]")
        lines.extend(f"{key} = {json.dumps(value)}" for key, value in row.items())
    path.write_text("\n".join(lines) + "\n")
    return ("--recovery-matrix", str(path))


@pytest.mark.parametrize("retries", [0, 2])
async def test_a_matrix_file_sets_a_real_serves_read_retries(tmp_path: Path, retries: int) -> None:
    row = {"category": "filesystem", "severity": "recoverable", "maxRetries": retries}
    args = ("--extra-methods", FAULTS, *_rows(tmp_path, row))
    async with serve(tmp_path, *args) as srv:
        (srv.workspace / "a.txt").write_text("hello")
        client = await RawClient.connect_unix(srv.socket)
        try:
            await client.request("test/faults/add", {"op": "read", "times": None})  # EIO, always
            reply = await client.request("fs/read", {"path": "a.txt"})
            assert reply["error"]["data"]["errno"] == "EIO", reply
            failed = await client.request("test/faults/count", {"op": "read", "outcome": "EIO"})
            assert failed["result"] == 1 + retries  # the first read, then the row's retries
        finally:
            await client.close()


@pytest.mark.parametrize("fallback", [None, "none"])
async def test_a_matrix_file_decides_whether_a_failing_disk_is_answered_from_the_cache(
    tmp_path: Path, fallback: str | None
) -> None:
    row = {"category": "filesystem", "severity": "recoverable", "fallback": fallback}
    args = ("--extra-methods", FAULTS, *(_rows(tmp_path, row) if fallback else ()))
    async with serve(tmp_path, *args) as srv:
        target = srv.workspace / "a.txt"
        target.write_text("first")
        client = await RawClient.connect_unix(srv.socket)
        try:
            assert (await client.request("fs/read", {"path": "a.txt"}))["result"]["content"] == (
                "first"
            )
            target.write_text("second, longer")  # the cached copy is out of date now
            await client.request("test/faults/add", {"op": "read", "times": None})
            reply = await client.request("fs/read", {"path": "a.txt"})
            if fallback is None:  # the default row: cache_previous
                assert (reply["result"]["content"], reply["result"]["stale"]) == ("first", True)
            else:
                assert reply["error"]["data"]["errno"] == "EIO", reply
        finally:
            await client.close()


@pytest.mark.shells
@pytest.mark.parametrize(("retries", "recreated"), [(None, True), (0, False)])
async def test_a_matrix_file_decides_whether_a_dead_shell_comes_back(
    tmp_path: Path, retries: int | None, recreated: bool
) -> None:
    row = {"category": "terminal", "severity": "critical", "maxRetries": retries}
    args = _rows(tmp_path, row) if retries is not None else ()  # None: the default row
    async with serve(tmp_path, *args) as srv:
        client = await RawClient.connect_unix(srv.socket)
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
                assert "is gone" in reply["error"]["message"], reply
        finally:
            await client.close()


@pytest.mark.shells
async def test_a_matrix_file_sets_how_often_a_dead_shell_is_recreated(tmp_path: Path) -> None:
    """A shell that cannot start again (its executable now exits at once): the re-creation is
    tried as often as the terminal/critical row says, then the terminal gives up, alerting."""
    starts: dict[int, int] = {}
    for retries in (1, 3):
        run = tmp_path / f"r{retries}"
        bin_dir, log, broken = run / "bin", run / "starts.log", run / "broken"
        bin_dir.mkdir(parents=True)
        wrapper = bin_dir / "bash"  # named bash: started as bash, with our integration
        wrapper.write_text(
            f"#!/bin/sh\necho start >> {log}\n[ -e {broken} ] && exit 7\n"
            f'exec {shutil.which("bash")} "$@"\n'
        )
        wrapper.chmod(0o755)
        row = {"category": "terminal", "severity": "critical", "maxRetries": retries}
        async with serve(run, *_rows(run, row)) as srv:
            client = await RawClient.connect_unix(srv.socket)
            try:
                created = await client.request("terminal/create", {"shell": str(wrapper)})
                tid, pid = created["result"]["terminalId"], created["result"]["pid"]
                before = len(log.read_text().split())
                broken.touch()
                os.kill(pid, signal.SIGKILL)
                assert (await _notification(client, "terminal/exited"))["willRecover"] is True
                gave_up = await _notification(client, "terminal/exited")
                assert (gave_up["terminalId"], gave_up["willRecover"]) == (tid, False)
                alert = await _notification(client, "health/alert")
                assert alert["kind"] == "TerminalFailed"
                starts[retries] = len(log.read_text().split()) - before
            finally:
                await client.close()
    assert starts[1] >= 1
    assert starts[3] == 3 * starts[1]  # each re-creation climbs the same ladder


@pytest.mark.shells
@pytest.mark.parametrize(("retries", "ran"), [(None, True), (0, False)])
async def test_a_matrix_file_decides_whether_a_command_the_shell_never_started_runs_again(
    tmp_path: Path, retries: int | None, ran: bool
) -> None:
    """The shell is stopped (it provably reads nothing), handed a command, then killed: the
    terminal/recoverable row's `retry_command` runs it on the new shell, or (no retries) it
    is answered interrupted."""
    row = {"category": "terminal", "severity": "recoverable", "maxRetries": retries}
    args = _rows(tmp_path, row) if retries is not None else ()
    async with serve(tmp_path, *args) as srv:
        client = await RawClient.connect_unix(srv.socket)
        watcher = await RawClient.connect_unix(srv.socket)
        try:
            created = await client.request("terminal/create", {"shell": "bash"})
            tid, pid = created["result"]["terminalId"], created["result"]["pid"]
            os.kill(pid, signal.SIGSTOP)
            sent = client.request_nowait(
                "terminal/execute", {"terminalId": tid, "command": "echo ran"}
            )
            await until_busy(watcher, tid)
            os.kill(pid, signal.SIGKILL)
            result = (await asyncio.wait_for(client.response(sent), 30))["result"]
            actions = [r["action"] for r in result["recoveries"]]
            if ran:
                assert (result["status"], result["output"]) == ("completed", "ran\n"), result
                assert "retry_command" in actions
            else:
                assert (result["status"], result["output"]) == ("interrupted", ""), result
                assert "retry_command" not in actions
            again = await client.request(
                "terminal/execute", {"terminalId": tid, "command": "echo ok"}
            )
            assert again["result"]["output"] == "ok\n"  # the shell itself was recreated
        finally:
            await client.close()
            await watcher.close()


@pytest.mark.shells
@pytest.mark.parametrize("fallback", [Strategy.RAW_OUTPUT_MODE, Strategy.NONE])
async def test_a_matrix_file_decides_the_fallback_for_a_shell_without_marks(
    tmp_path: Path, fallback: Strategy
) -> None:
    rc = tmp_path / "rc.sh"
    rc.write_text("printf() { :; }\n")  # dash reads $ENV: no end mark can ever be printed
    row = {"category": "terminal", "severity": "recoverable", "fallback": fallback.value}
    async with serve(tmp_path, *_rows(tmp_path, row)) as srv:
        client = await RawClient.connect_unix(srv.socket)
        try:
            created = await client.request(
                "terminal/create",
                {"shell": "dash", "env": {"HOME": str(srv.workspace), "ENV": str(rc)}},
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


async def test_a_bad_matrix_file_stops_serve_before_it_listens(tmp_path: Path) -> None:
    path = tmp_path / "matrix.json"
    path.write_text(json.dumps({"rows": [{"category": "terminal", "severity": "fatal"}]}))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "lapce_bridge", "serve", "--socket", str(tmp_path / "b.sock"),
        "--recovery-matrix", str(path),
        env=server_env(), stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 2
    assert err.decode().strip() == (
        f"lapce-bridge serve: error: --recovery-matrix: {path}: row 1: unknown severity "
        "'fatal' (one of critical, recoverable, warning, info)"
    )
    assert not (tmp_path / "b.sock").exists()
