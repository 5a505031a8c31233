"""Who owns a terminal, end to end: real clients over a Unix socket, the real dispatcher, real
shells; once more through a real `lapce-bridge serve` process."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson

from lapce_bridge.app import App
from lapce_bridge.ipc.raw import RawClient
from lapce_bridge.ipc.server import BridgeServer
from lapce_bridge.terminal.service import TerminalService
from lapce_bridge.testing import FakeClock

REPO = Path(__file__).resolve().parents[2]


@asynccontextmanager
async def served(
    tmp_path: Path, clock: FakeClock | None = None
) -> AsyncIterator[tuple[App, TerminalService, Path]]:
    workspace = tmp_path / "ws"
    (workspace / "sub").mkdir(parents=True)
    async with App(
        workspace=workspace, state_dir=tmp_path / "state", default_shell="bash", clock=clock
    ) as app:
        server = BridgeServer(app)
        sock = await server.listen_unix(tmp_path / "bridge.sock")
        svc = next(s for s in app.services if isinstance(s, TerminalService))
        try:
            yield app, svc, sock
        finally:
            await server.aclose()


async def result(client: RawClient, method: str, params: Any = None) -> Any:
    reply = await client.request(method, params)
    assert "result" in reply, reply
    return reply["result"]


async def error(client: RawClient, method: str, params: Any = None) -> dict[str, Any]:
    reply = await client.request(method, params)
    assert "error" in reply, reply
    found: dict[str, Any] = reply["error"]
    return found


async def test_two_connections_keep_separate_default_terminals(tmp_path: Path) -> None:
    async with served(tmp_path) as (_, _, sock):
        workspace = tmp_path / "ws"
        a = await RawClient.connect_unix(sock)
        b = await RawClient.connect_unix(sock)
        try:
            moved = await result(a, "terminal/execute", {"command": "cd sub && pwd"})
            assert moved["output"] == f"{workspace}/sub\n"
            other = await result(b, "terminal/execute", {"command": "pwd; cat ../ws/sub/x 2>&1"})
            assert other["output"].startswith(f"{workspace}\n")
            assert other["cwd"] == str(workspace)
            assert other["terminalId"] != moved["terminalId"]
            again = await result(a, "terminal/execute", {"command": "pwd"})
            assert again["output"] == f"{workspace}/sub\n"
            assert again["terminalId"] == moved["terminalId"]
            listed = {t["terminalId"]: t for t in await result(b, "terminal/list")}
            assert listed[other["terminalId"]]["mine"] is True
            assert listed[other["terminalId"]]["default"] is True
            assert listed[moved["terminalId"]]["mine"] is False
            assert listed[moved["terminalId"]]["default"] is False
        finally:
            await a.close()
            await b.close()


async def test_named_terminals_are_addressed_by_name(tmp_path: Path) -> None:
    async with served(tmp_path) as (_, _, sock):
        a = await RawClient.connect_unix(sock)
        b = await RawClient.connect_unix(sock)
        try:
            made = await result(a, "terminal/create", {"name": "dev server", "cwd": "sub"})
            assert made["name"] == "dev server"
            ran = await result(
                b, "terminal/execute", {"terminalId": "dev server", "command": "pwd"}
            )
            assert ran["terminalId"] == made["terminalId"]
            assert ran["output"] == f"{tmp_path / 'ws' / 'sub'}\n"
            dup = await error(b, "terminal/create", {"name": "dev server"})
            assert dup["code"] == -32602
            assert dup["data"]["terminalId"] == made["terminalId"]
            looks_like_id = await error(a, "terminal/create", {"name": "t99"})
            assert looks_like_id["code"] == -32602
            await result(b, "terminal/close", {"terminalId": "dev server"})
            gone = await error(
                a, "terminal/execute", {"terminalId": "dev server", "command": "pwd"}
            )
            assert gone["code"] == -32602
            assert "unknown terminalId 'dev server'" in gone["data"]["detail"]
        finally:
            await a.close()
            await b.close()


async def test_results_report_the_cwd_when_they_are_answered(tmp_path: Path) -> None:
    async with served(tmp_path) as (_, _, sock):
        client = await RawClient.connect_unix(sock)
        try:
            tid = (await result(client, "terminal/create", {}))["terminalId"]
            asked = await result(
                client,
                "terminal/execute",
                {
                    "terminalId": tid,
                    "command": "cd sub && echo in && read -p 'x? ' v",
                    "idleTimeoutMs": 2000,
                },
            )
            assert asked["status"] == "waiting_for_input"
            assert asked["output"] == "in\nx? "
            assert asked["cwd"] == str(tmp_path / "ws" / "sub")
            listed = {t["terminalId"]: t for t in await result(client, "terminal/list")}
            assert listed[tid]["cwd"] == str(tmp_path / "ws" / "sub")
            await result(client, "terminal/sendText", {"terminalId": tid, "text": "\n"})
        finally:
            await client.close()


async def test_send_text_needs_a_running_command_or_at_prompt(tmp_path: Path) -> None:
    async with served(tmp_path) as (_, _, sock):
        client = await RawClient.connect_unix(sock)
        try:
            tid = (await result(client, "terminal/create", {}))["terminalId"]
            idle = await error(client, "terminal/sendText", {"terminalId": tid, "text": "ls\n"})
            assert idle["code"] == -32003
            assert "running nothing" in idle["data"]["detail"]
            assert "atPrompt" in idle["data"]["detail"]
            assert idle["data"]["retryable"] is False
            assert idle["data"]["fault"] == "caller"  # the caller's mistake: no SLO failure
            # Typed at the prompt on purpose, and left unfinished: it must not join the next
            # command's line.
            await result(
                client,
                "terminal/sendText",
                {"terminalId": tid, "text": "echo LEAK", "atPrompt": True},
            )
            clean = await result(
                client, "terminal/execute", {"terminalId": tid, "command": "echo clean"}
            )
            assert clean["output"] == "clean\n"
            assert clean["exitCode"] == 0
            # Left unfinished while a command ran that never read it.
            slow = await result(
                client,
                "terminal/execute",
                {"terminalId": tid, "command": "echo go; sleep 1", "idleTimeoutMs": 300},
            )
            assert slow["status"] in ("waiting_for_input", "running")
            await result(client, "terminal/sendText", {"terminalId": tid, "text": "rm -rf x"})
            finished = await result(
                client, "terminal/wait", {"executionId": slow["executionId"], "timeoutMs": 10_000}
            )
            assert finished["output"] == "go\nrm -rf x"  # the tty echoed what was typed
            after = await result(
                client, "terminal/execute", {"terminalId": tid, "command": "echo ok"}
            )
            assert after["output"] == "ok\n"
            assert after["exitCode"] == 0
        finally:
            await client.close()


async def test_quotas_reaping_and_eviction(tmp_path: Path) -> None:
    clock = FakeClock(1000.0)
    async with served(tmp_path, clock) as (_, svc, sock):
        svc.max_terminals = 3
        svc.owners.per_connection = 2
        a = await RawClient.connect_unix(sock)
        b = await RawClient.connect_unix(sock)
        c = await RawClient.connect_unix(sock)
        try:
            kept = (await result(a, "terminal/create", {"name": "build"}))["terminalId"]
            plain = (await result(a, "terminal/execute", {"command": "echo a"}))["terminalId"]
            over = await error(a, "terminal/create", {})
            assert over["code"] == -32005
            assert "at most 2 each" in over["data"]["detail"]
            assert over["data"]["retryable"] is False
            assert over["data"]["fault"] == "caller"  # close a terminal: not the server's fault
            mine = (await result(b, "terminal/create", {}))["terminalId"]
            full = await error(b, "terminal/create", {})
            assert full["code"] == -32005
            assert "at most 3 terminals" in full["data"]["detail"]

            await a.close()
            for _ in range(500):  # the server notices the closed connection (real I/O)
                if len(svc.owners.orphans()) == 2:
                    break
                await asyncio.sleep(0.01)
            assert sorted(svc.owners.orphans()) == sorted([kept, plain])
            await clock.advance(29.0)
            assert set(svc.terminals) == {kept, plain, mine}
            await clock.advance(1.0)
            for _ in range(500):
                if plain not in svc.terminals:
                    break
                await asyncio.sleep(0.01)
            assert set(svc.terminals) == {kept, mine}  # the named one outlives its creator

            theirs = (await result(b, "terminal/create", {}))["terminalId"]
            # At the maximum again: the idle orphan makes room for a newcomer.
            newcomer = (await result(c, "terminal/execute", {"command": "echo c"}))["terminalId"]
            assert set(svc.terminals) == {mine, theirs, newcomer}
            listed = [t["name"] for t in await result(c, "terminal/list")]
            assert "build" not in listed
        finally:
            await b.close()
            await c.close()


async def test_serve_keeps_each_connection_in_its_own_terminal(tmp_path: Path) -> None:
    workspace = tmp_path / "ws"
    (workspace / "sub").mkdir(parents=True)
    sock = tmp_path / "run" / "bridge.sock"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO / "src"), env.get("PYTHONPATH")) if p)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "lapce_bridge", "serve", "--socket", str(sock),
        "--state-dir", str(tmp_path / "state"), "--workspace", str(workspace),
        env=env, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stderr is not None
    try:
        ready = await asyncio.wait_for(proc.stderr.readline(), 30)
        assert ready.decode().strip() == f"lapce-bridge: listening on unix:{sock}"
        a = await RawClient.connect_unix(sock)
        b = await RawClient.connect_unix(sock)
        try:
            await result(a, "terminal/execute", {"command": "cd sub; export WHO=a"})
            seen = await result(b, "terminal/execute", {"command": 'pwd; echo "who=$WHO"'})
            assert seen["output"] == f"{workspace}\nwho=\n"
            mine = await result(a, "terminal/execute", {"command": 'pwd; echo "who=$WHO"'})
            assert mine["output"] == f"{workspace}/sub\nwho=a\n"
            idle = await error(
                b, "terminal/sendText", {"terminalId": seen["terminalId"], "text": "x"}
            )
            assert idle["code"] == -32003
        finally:
            await a.close()
            await b.close()
    finally:
        proc.terminate()
        assert await asyncio.wait_for(proc.wait(), 30) == 0


async def test_every_size_a_client_asks_for_has_a_ceiling(tmp_path: Path) -> None:
    async with served(tmp_path) as (_, svc, sock):
        client = await RawClient.connect_unix(sock)
        try:
            # 5 MiB of a control character JSON escapes six-fold (\u0001): 30 MiB as JSON.
            size = 5 << 20
            ran = await result(
                client,
                "terminal/execute",
                {"command": f"head -c {size} /dev/zero | tr '\\0' '\\1'", "maxOutputBytes": 1024},
            )
            assert ran["outputBytes"] == size
            assert ran["truncated"] is True
            huge = await error(
                client, "terminal/readOutput", {"executionId": ran["executionId"], "limit": 1 << 40}
            )
            assert huge["code"] == -32602
            assert huge["data"]["limit"] == 4 << 20
            offset, pages, total = 0, 0, 0
            while True:
                msg_id = client.request_nowait(
                    "terminal/readOutput",
                    {"executionId": ran["executionId"], "offset": offset, "limit": 4 << 20},
                )
                raw_len = len(orjson.dumps(page := await client.response(msg_id)))
                assert raw_len <= svc.max_message_bytes
                got = page["result"]
                assert set(got["data"]) <= {"\x01"}
                total += len(got["data"])
                pages += 1
                offset = got["offset"]
                if got["eof"]:
                    break
            assert total == size  # nothing lost, nothing repeated
            assert pages >= 2  # 4 MiB pages of it do not fit a 16 MiB message: shortened
            for params, name in (
                ({"command": "true", "maxOutputBytes": 1 << 40}, "maxOutputBytes"),
                ({"command": "true", "timeoutMs": 1e300}, "timeoutMs"),
                ({"command": "true", "idleTimeoutMs": 1 << 62}, "idleTimeoutMs"),
            ):
                refused = await error(client, "terminal/execute", params)
                assert refused["code"] == -32602
                assert name in refused["data"]["detail"]
            fits = await result(
                client, "terminal/execute", {"command": "echo ok", "maxOutputBytes": 2 << 20}
            )
            assert fits["output"] == "ok\n"
        finally:
            await client.close()


async def test_a_client_back_after_a_reconnect_keeps_the_terminal_it_uses(tmp_path: Path) -> None:
    clock = FakeClock(1000.0)
    async with served(tmp_path, clock) as (_, svc, sock):
        first = await RawClient.connect_unix(sock)
        tid = (await result(first, "terminal/execute", {"command": "export KEEP=1"}))["terminalId"]
        await first.close()
        for _ in range(500):  # the server notices the closed connection (real I/O)
            if svc.owners.orphans() == [tid]:
                break
            await asyncio.sleep(0.01)
        assert svc.owners.orphans() == [tid]
        again = await RawClient.connect_unix(sock)
        try:
            back = await result(
                again, "terminal/execute", {"terminalId": tid, "command": 'echo "keep=$KEEP"'}
            )
            assert back["output"] == "keep=1\n"
            await clock.advance(60.0)
            assert tid in svc.terminals  # adopted: past the grace, still there
            listed = {t["terminalId"]: t for t in await result(again, "terminal/list")}
            assert listed[tid]["mine"] is True
        finally:
            await again.close()


async def test_a_named_session_gets_its_default_terminal_back(tmp_path: Path) -> None:
    async with served(tmp_path) as (_, _, sock):
        workspace = tmp_path / "ws"
        first = await RawClient.connect_unix(sock)
        await result(first, "initialize", {"protocolVersion": 1, "session": "editor-1"})
        before = await result(first, "terminal/execute", {"command": "cd sub; export X=1"})
        await first.close()
        stranger = await RawClient.connect_unix(sock)
        back = await RawClient.connect_unix(sock)
        try:
            other = await result(stranger, "terminal/execute", {"command": 'pwd; echo "x=$X"'})
            assert other["output"] == f"{workspace}\nx=\n"
            await result(back, "initialize", {"protocolVersion": 1, "session": "editor-1"})
            again = await result(back, "terminal/execute", {"command": 'pwd; echo "x=$X"'})
            assert again["terminalId"] == before["terminalId"]
            assert again["output"] == f"{workspace}/sub\nx=1\n"
            bad = await error(back, "initialize", {"protocolVersion": 1, "session": 7})
            assert bad["code"] == -32602
        finally:
            await stranger.close()
            await back.close()
