"""The assembled server, driven as a user drives it: a real `serve` process, a real shell.

Each test here is a behaviour the parts had alone and the wiring lost: one name per method,
long commands governed by their own limits, a notification's work owned by its connection,
and a caller's mistakes never counted against the server's health.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from lapce_bridge.app import App
from lapce_bridge.core.errors import BridgeTimeout
from lapce_bridge.core.health import DEFAULT_TARGETS
from lapce_bridge.ipc.client import BridgeClient
from lapce_bridge.ipc.raw import RawClient
from lapce_bridge.ipc.server import BridgeServer
from lapce_bridge.rpc import CallContext, Method, Params, method
from lapce_bridge.testing import FakeClock
from tests.integration.serve_process import serve, until_busy

EXTRA = "tests.integration.test_assembled_server:methods"


def methods(app: Any) -> dict[str, Method]:
    """Test-only methods the server process loads: a ledger proves what ran and how it ended."""

    async def linger(params: Params, ctx: CallContext) -> None:
        ledger = Path(params["file"])
        _note(ledger, "started")
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            _note(ledger, "cancelled")
            raise

    async def brief(params: Params, ctx: CallContext) -> None:
        ledger = Path(params["file"])
        _note(ledger, "started")
        await asyncio.sleep(params["seconds"])
        _note(ledger, "finished")

    def unencodable(params: Params, ctx: CallContext) -> object:
        return {"value": object()}  # no JSON for it: the server's bug, not the caller's

    return {
        "test/linger": method(linger),
        "test/brief": method(brief),
        "test/unencodable": method(unencodable),
    }


def _note(ledger: Path, line: str) -> None:
    with ledger.open("a") as fh:
        fh.write(f"{line}\n")


async def _until(predicate: Any, within: float = 10.0) -> None:
    async with asyncio.timeout(within):
        while not predicate():  # noqa: ASYNC110 - another process writes what we wait for
            await asyncio.sleep(0.02)


async def test_every_served_method_has_a_timeout_and_a_health_target(tmp_path: Path) -> None:
    async with App(workspace=tmp_path, state_dir=tmp_path / "state", default_shell="bash") as app:
        server = BridgeServer(app)
        try:
            served = set(server.methods)
            assert {"terminal/execute", "terminal/wait", "fs/read", "ping"} <= served
            assert [m for m in sorted(served) if not app.timeouts.configured(m)] == []
            assert [m for m in sorted(served) if m not in DEFAULT_TARGETS] == []
            assert [m for m in sorted(served) if m not in app.health.targets] == []
        finally:
            await server.aclose()


async def test_operations_are_recorded_under_the_method_name(tmp_path: Path) -> None:
    async with serve(tmp_path) as srv:
        client = await RawClient.connect_unix(srv.socket)
        try:
            done = await client.request("terminal/execute", {"command": "echo hi"})
            assert done["result"]["output"] == "hi\n"
            await client.request("terminal/list")
            metrics = (await client.request("metrics/get"))["result"]["operations"]
            assert {"terminal/execute", "terminal/list"} <= set(metrics)
            assert not [op for op in metrics if op.startswith("terminal.")]
            health = (await client.request("health/get"))["result"]["operations"]
            assert health["terminal/execute"]["targetP99Us"] == 10_000.0  # the specification's
            assert health["terminal/list"]["targetP99Us"] is not None
        finally:
            await client.close()


async def test_a_command_outlives_a_short_dispatcher_default(tmp_path: Path) -> None:
    async with serve(
        tmp_path, "--timeout", "terminal/execute=0.5", "--timeout", "terminal/wait=0.5"
    ) as srv:
        client = await RawClient.connect_unix(srv.socket)
        try:
            await client.request("terminal/execute", {"command": "true"})  # the shell is up
            reply = await client.request(
                "terminal/execute", {"command": "sleep 1.5; echo done", "timeoutMs": 20_000}
            )
            assert "error" not in reply, reply
            assert reply["result"]["status"] == "completed"
            assert reply["result"]["output"] == "done\n"
            assert reply["result"]["durationMs"] >= 1500

            # maxWaitMs answers `running`; terminal/wait (its own timeoutMs longer than the
            # dispatcher's 0.5 s) later returns the final result.
            running = await client.request(
                "terminal/execute",
                {
                    "command": "for i in 1 2 3 4 5 6 7 8 9 10; do echo $i; sleep 0.2; done",
                    "maxWaitMs": 700,
                },
            )
            assert running["result"]["status"] == "running", running
            final = await client.request(
                "terminal/wait",
                {"executionId": running["result"]["executionId"], "timeoutMs": 20_000},
            )
            assert "error" not in final, final
            assert final["result"]["status"] == "completed"
            assert final["result"]["exitCode"] == 0
            assert final["result"]["output"].split() == [str(i) for i in range(1, 11)]
        finally:
            await client.close()
        # BridgeClient, as it comes: no limit of its own cuts the command short.
        async with BridgeClient(srv.socket) as bridge:
            done = await bridge.request(
                "terminal/execute", {"command": "sleep 1.5; echo done", "timeoutMs": 20_000}
            )
            assert (done["status"], done["output"], done["exitCode"]) == ("completed", "done\n", 0)


async def test_a_client_timeout_leaves_the_command_running_and_findable(tmp_path: Path) -> None:
    async with serve(tmp_path) as srv, BridgeClient(srv.socket) as client:
        await client.request("terminal/execute", {"command": "true"})  # the shell is up
        params = {"command": "sleep 1.5; echo done"}
        with pytest.raises(BridgeTimeout) as info:
            await client.request("terminal/execute", params, timeout=0.3)
        key = info.value.data["idempotencyKey"]
        assert info.value.data["cancelled"] is False
        # The same request with the key the error gave finds the same run: its result,
        # uninterrupted, and the command ran once.
        found = await client.request("terminal/execute", {**params, "idempotencyKey": key})
        assert (found["status"], found["output"], found["exitCode"]) == ("completed", "done\n", 0)
        assert found["durationMs"] >= 1500


async def test_a_notifications_work_is_cancelled_when_its_connection_closes(
    tmp_path: Path,
) -> None:
    ledger = tmp_path / "ledger.txt"
    async with serve(tmp_path, "--extra-methods", EXTRA) as srv:
        client = await RawClient.connect_unix(srv.socket)
        client.notify("test/linger", {"file": str(ledger)})
        await _until(lambda: ledger.exists() and "started" in ledger.read_text())
        await client.close()
        await _until(lambda: "cancelled" in ledger.read_text())


async def test_a_notifications_work_is_drained_at_shutdown_within_the_grace(
    tmp_path: Path,
) -> None:
    """`shutdown` waits for a notification's work that ends within the grace, and cancels
    what outlives it; the process then exits cleanly."""
    brief, linger = tmp_path / "brief.txt", tmp_path / "linger.txt"
    async with serve(tmp_path, "--extra-methods", EXTRA, "--shutdown-grace", "2") as srv:
        client = await RawClient.connect_unix(srv.socket)
        try:
            client.notify("test/brief", {"file": str(brief), "seconds": 0.5})
            client.notify("test/linger", {"file": str(linger)})
            await _until(lambda: brief.exists() and linger.exists())
            await _until(lambda: "started" in linger.read_text())
            reply = await client.request("shutdown")
            assert reply["result"] is None, reply
            async with asyncio.timeout(30):
                assert await srv.proc.wait() == 0
        finally:
            await client.close()
    assert brief.read_text().split() == ["started", "finished"]  # drained
    assert linger.read_text().split() == ["started", "cancelled"]  # outlived the grace


async def test_an_unencodable_result_is_the_servers_fault(tmp_path: Path) -> None:
    async with serve(tmp_path, "--extra-methods", EXTRA) as srv:
        client = await RawClient.connect_unix(srv.socket)
        try:
            reply = await client.request("test/unencodable")
            error = reply["error"]
            assert error["code"] == -32603, reply
            assert (error["data"]["fault"], error["data"]["retryable"]) == ("server", False)
            assert (await client.request("ping"))["result"] == {"pong": True}
            ops = (await client.request("metrics/get"))["result"]["operations"]
            assert ops["test/unencodable"]["errors"] == 1
        finally:
            await client.close()


async def test_caller_errors_are_marked_as_theirs_and_never_count_as_failures(
    tmp_path: Path,
) -> None:
    outside = tmp_path / "secret.txt"
    outside.write_text("not yours")
    async with serve(tmp_path) as srv:
        client = await RawClient.connect_unix(srv.socket)
        answered: dict[tuple[str, str, str], int] = {}

        def tally(op: str, reply: dict[str, Any]) -> dict[str, Any]:
            data = reply["error"]["data"]
            key = (op, data["category"], data["fault"])
            answered[key] = answered.get(key, 0) + 1
            return reply

        try:
            for _ in range(12):
                reply = tally("fs/read", await client.request("fs/read", {"path": str(outside)}))
                assert reply["error"]["code"] == -32006
                assert reply["error"]["data"]["fault"] == "caller"
                missing = tally("fs/read", await client.request("fs/read", {"path": "missing.txt"}))
                assert missing["error"]["data"]["fault"] == "caller"
                bad = tally(
                    "terminal/execute",
                    await client.request("terminal/execute", {"command": 3}),
                )
                assert (bad["error"]["code"], bad["error"]["data"]["fault"]) == (-32602, "caller")
            # A method that does not exist, a write over a newer file, a busy terminal.
            unknown = tally("other", await client.request("no/such"))
            assert (unknown["error"]["code"], unknown["error"]["data"]["fault"]) == (
                -32601,
                "caller",
            )
            (srv.workspace / "c.txt").write_text("theirs")
            stale = {"path": "c.txt", "content": "mine", "expectedMtimeNs": 1}
            conflict = tally("fs/write", await client.request("fs/write", stale))
            assert conflict["error"]["data"]["fault"] == "caller", conflict
            assert (srv.workspace / "c.txt").read_text() == "theirs"
            tid = (await client.request("terminal/create", {"shell": "bash"}))["result"][
                "terminalId"
            ]
            running = client.request_nowait(
                "terminal/execute", {"terminalId": tid, "command": "sleep 1"}
            )
            await until_busy(client, tid)
            busy = tally(
                "terminal/execute",
                await client.request("terminal/execute", {"terminalId": tid, "command": "true"}),
            )
            assert (busy["error"]["code"], busy["error"]["data"]["fault"]) == (-32003, "caller")
            assert (await client.response(running))["result"]["exitCode"] == 0
            health = (await client.request("health/get"))["result"]
            failing = [a for a in health["alerts"] if a["kind"] != "HighLatency"]
            assert failing == []  # latency on two shared cores is not what this test is about
            for op in ("fs/read", "fs/write", "terminal/execute"):
                assert health["operations"][op]["failureRate"] == 0.0, op
            assert health["slo"]["errorRate"] == 0.0
            snapshot = (await client.request("metrics/get"))["result"]
            assert snapshot["operations"]["fs/read"]["count"] == 24
            # Every error answer counted by its classification, as the client saw it.
            counted = {
                (e["operation"], e["category"], e["fault"]): e["count"] for e in snapshot["errors"]
            }
            assert counted == answered
        finally:
            await client.close()


async def test_twelve_reads_outside_the_workspace_leave_health_healthy(tmp_path: Path) -> None:
    # Virtual time: every duration is zero, so only failures could change the status.
    ws = tmp_path / "ws"
    ws.mkdir()
    (tmp_path / "secret.txt").write_text("not yours")
    async with App(workspace=ws, state_dir=tmp_path / "state", clock=FakeClock()) as app:
        server = BridgeServer(app)
        await server.listen_unix(tmp_path / "bridge.sock")
        client = await RawClient.connect_unix(tmp_path / "bridge.sock")
        try:
            for _ in range(12):
                reply = await client.request("fs/read", {"path": "../secret.txt"})
                assert reply["error"]["code"] == -32006
            health = (await client.request("health/get"))["result"]
            assert health["status"] == "healthy", health
            assert health["alerts"] == []
            assert health["operations"]["fs/read"]["calls"] == 12
        finally:
            await client.close()
            await server.aclose()
