"""The terminal/* methods of TerminalService over real shells, and `lapce-bridge exec`."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import pytest_asyncio

from lapce_bridge.core.errors import InvalidParams, PermissionDenied, TerminalError
from lapce_bridge.terminal.service import TerminalService
from lapce_bridge.testing.memory import MemoryClient, MemoryServer

pytestmark = pytest.mark.asyncio(loop_scope="module")


_servers: dict[int, MemoryServer] = {}


def connect(svc: TerminalService) -> MemoryClient:
    """A client of the service through the real dispatcher (in-memory transport)."""
    server = _servers.get(id(svc))
    if server is None:
        server = _servers[id(svc)] = MemoryServer(svc.methods(), clock=svc.clock)
    return server.connect()


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    ws = tmp_path_factory.mktemp("ws")
    (ws / "sub").mkdir()
    return ws


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def service(
    workspace: Path, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[tuple[TerminalService, list[tuple[str, Any]]]]:
    events: list[tuple[str, Any]] = []
    flags = {"shell_integration": True}
    async with TerminalService(
        workspace=workspace,
        state_dir=tmp_path_factory.mktemp("state"),
        broadcast=lambda m, p: events.append((m, p)),
        features=lambda name: flags.get(name, True),
        default_shell="bash",
    ) as svc:
        yield svc, events


async def call(
    svc: TerminalService, name: str, params: dict[str, Any], ctx: MemoryClient | None = None
) -> Any:
    return await (ctx or connect(svc)).request(name, params)


async def test_execute_on_the_default_terminal(
    service: tuple[TerminalService, list[Any]], workspace: Path
) -> None:
    svc, _ = service
    ctx = connect(svc)
    result = await call(svc, "terminal/execute", {"command": "echo hi; pwd"}, ctx)
    assert result["output"] == f"hi\n{workspace}\n"
    assert result["exitCode"] == 0
    assert result["status"] == "completed"
    assert result["durationMs"] > 0
    assert set(result) == {
        "executionId", "terminalId", "exitCode", "output", "outputBytes", "truncated", "cwd",
        "durationMs", "status", "mode", "shell", "recoveries",
    }  # fmt: skip
    finished = [p for m, p in ctx.notes if m == "terminal/commandFinished"]
    assert finished == [
        {
            "terminalId": result["terminalId"],
            "executionId": result["executionId"],
            "exitCode": 0,
            "cwd": str(workspace),
        }
    ]
    # The notification rides with the result: one write (one wake-up of the client), and
    # it still comes first.
    assert ctx.writes[-1] == ["terminal/commandFinished", "answer"]
    again = await call(svc, "terminal/execute", {"command": "true"}, ctx)  # same connection
    assert again["terminalId"] == result["terminalId"]
    # Another connection's default terminal is its own, never this one.
    other = await call(svc, "terminal/execute", {"command": "true"})
    assert other["terminalId"] != result["terminalId"]


async def test_a_connections_default_terminal_is_opened_once_and_again_after_it_closes(
    service: tuple[TerminalService, list[Any]],
) -> None:
    """Two first calls at once share the one default terminal opened for them; later calls
    take it without waiting for anything; once it is closed, the next call opens another."""
    svc, _ = service
    ctx = connect(svc)
    both: tuple[Any, ...] = await asyncio.gather(
        call(svc, "terminal/execute", {"command": "echo 1"}, ctx),
        call(svc, "terminal/execute", {"command": "echo 2"}, ctx),
        return_exceptions=True,
    )
    # One ran, the other ran after it or found the one terminal busy: never a second one.
    ids = {r["terminalId"] if isinstance(r, dict) else r.data["terminalId"] for r in both}
    assert len(ids) == 1
    (tid,) = ids
    again = await call(svc, "terminal/execute", {"command": "echo 3"}, ctx)
    assert (again["terminalId"], again["output"]) == (tid, "3\n")
    await call(svc, "terminal/close", {"terminalId": tid}, ctx)
    reopened = await call(svc, "terminal/execute", {"command": "echo 4"}, ctx)
    assert reopened["terminalId"] != tid
    assert reopened["output"] == "4\n"


async def test_a_command_given_no_options_runs_with_the_defaults_checked_for_the_limit(
    service: tuple[TerminalService, list[Any]],
) -> None:
    """A command given no option runs with the defaults (256 KiB of output kept, streamed
    not), checked again when the message limit changes: under a limit too small for the
    default output size it is refused as before, and runs again once the limit is back;
    options given are taken as given."""
    svc, _ = service
    ctx = connect(svc)
    long = "head -c 300000 /dev/zero | tr '\\0' x"
    done = await call(svc, "terminal/execute", {"command": long}, ctx)
    assert (done["outputBytes"], done["truncated"]) == (300_000, True)
    assert len(done["output"]) < 256 * 1024 + 200
    limit = svc.max_message_bytes
    svc.max_message_bytes = 1 << 20  # room for 174,080 bytes of output, not 256 KiB
    try:
        with pytest.raises(InvalidParams, match=r"maxOutputBytes.*may be at most 174080"):
            await call(svc, "terminal/execute", {"command": "echo refused"}, ctx)
        small = await call(
            svc, "terminal/execute", {"command": "echo fits", "maxOutputBytes": 64}, ctx
        )
        assert small["output"] == "fits\n"
    finally:
        svc.max_message_bytes = limit
    again = await call(svc, "terminal/execute", {"command": "echo back"}, ctx)
    assert again["output"] == "back\n"


async def test_stream_sends_all_output_as_data(service: tuple[TerminalService, list[Any]]) -> None:
    svc, _ = service
    ctx = connect(svc)
    result = await call(
        svc,
        "terminal/execute",
        {"command": "seq 1 20000", "stream": True, "maxOutputBytes": 64},
        ctx,
    )
    streamed = "".join(p["data"] for m, p in ctx.notes if m == "terminal/data")
    assert streamed == "".join(f"{i}\n" for i in range(1, 20001))
    assert all(
        p["executionId"] == result["executionId"] for m, p in ctx.notes if m == "terminal/data"
    )
    assert result["truncated"] is True
    # the last notification is commandFinished, after all the data
    assert ctx.notes[-1][0] == "terminal/commandFinished"


async def test_create_list_cwd_and_close(
    service: tuple[TerminalService, list[Any]], workspace: Path
) -> None:
    svc, _ = service
    created = await call(svc, "terminal/create", {"cwd": "sub", "env": {"LB_X": "1"}})
    assert created["mode"] == "shell_integration"
    assert created["pid"] > 0
    tid = created["terminalId"]
    result = await call(svc, "terminal/execute", {"terminalId": tid, "command": "pwd; echo $LB_X"})
    assert result["output"] == f"{workspace / 'sub'}\n1\n"
    listed = {t["terminalId"]: t for t in await call(svc, "terminal/list", {})}
    assert listed[tid]["cwd"] == str(workspace / "sub")
    assert listed[tid]["busy"] is False
    await call(svc, "terminal/close", {"terminalId": tid})
    assert tid not in {t["terminalId"] for t in await call(svc, "terminal/list", {})}
    with pytest.raises(InvalidParams, match="unknown terminalId"):
        await call(svc, "terminal/execute", {"terminalId": tid, "command": "true"})


@pytest.mark.parametrize(
    ("name", "params", "match"),
    [
        ("terminal/execute", {}, "missing required parameter 'command'"),
        ("terminal/execute", {"command": 5}, "'command' must be a string"),
        ("terminal/execute", {"command": "x", "timeoutMs": "soon"}, "'timeoutMs' must be"),
        ("terminal/execute", {"command": "x", "timeoutMs": -5}, "must be positive"),
        ("terminal/execute", {"command": "x", "stream": 1}, "'stream' must be a boolean"),
        ("terminal/execute", {"command": "x", "maxOutputBytes": True}, "must be an integer"),
        ("terminal/execute", {"command": "x", "ansi": "blue"}, "ansi must be"),
        ("terminal/create", {"cols": 0}, "bad terminal size"),
        ("terminal/create", {"env": {"A": 1}}, "map strings to strings"),
        ("terminal/sendText", {"terminalId": "nope", "text": "x"}, "unknown terminalId"),
        ("terminal/readOutput", {"executionId": "nope"}, "unknown executionId"),
        ("terminal/interrupt", {}, "missing required parameter 'terminalId'"),
    ],
)
async def test_bad_params_are_classified(
    service: tuple[TerminalService, list[Any]], name: str, params: dict[str, Any], match: str
) -> None:
    svc, _ = service
    with pytest.raises(InvalidParams, match=match) as info:
        await call(svc, name, params)
    assert info.value.code == -32602
    assert not any(t.busy for t in svc.terminals.values())


async def test_cwd_outside_the_workspace_is_refused(
    service: tuple[TerminalService, list[Any]],
) -> None:
    svc, _ = service
    with pytest.raises(PermissionDenied):
        await call(svc, "terminal/create", {"cwd": "/"})
    with pytest.raises(PermissionDenied):
        await call(svc, "terminal/execute", {"command": "pwd", "cwd": "../.."})


async def test_waiting_for_input_busy_send_text_and_wait(
    service: tuple[TerminalService, list[Any]],
) -> None:
    svc, _ = service
    tid = (await call(svc, "terminal/create", {}))["terminalId"]
    ctx = connect(svc)
    first = await call(
        svc,
        "terminal/execute",
        {"terminalId": tid, "command": "read -p 'ok? ' a; echo \"a=$a\"", "idleTimeoutMs": 300},
        ctx,
    )
    assert first["status"] == "waiting_for_input"
    assert first["output"] == "ok? "
    with pytest.raises(TerminalError, match="busy") as info:
        await call(svc, "terminal/execute", {"terminalId": tid, "command": "true"})
    assert info.value.data["executionId"] == first["executionId"]
    waiter = asyncio.ensure_future(
        call(svc, "terminal/wait", {"executionId": first["executionId"]})
    )
    await call(svc, "terminal/sendText", {"terminalId": tid, "text": "yes\n"})
    final = await waiter
    assert final["status"] == "completed"
    assert final["output"] == "ok? yes\na=yes\n"
    assert ("terminal/commandFinished", {
        "terminalId": tid, "executionId": first["executionId"], "exitCode": 0, "cwd": final["cwd"],
    }) in ctx.notes  # fmt: skip
    # Its answer (waiting_for_input) had gone: the end was sent at once, on its own.
    assert ["terminal/commandFinished"] in ctx.writes
    page = await call(svc, "terminal/readOutput", {"executionId": first["executionId"], "limit": 4})
    assert page == {"data": "ok? ", "offset": 4, "eof": False}
    rest = await call(
        svc, "terminal/readOutput", {"executionId": first["executionId"], "offset": 4}
    )
    assert rest == {"data": "yes\na=yes\n", "offset": 14, "eof": True}
    await call(svc, "terminal/close", {"terminalId": tid})


async def test_interrupt_method(service: tuple[TerminalService, list[Any]]) -> None:
    svc, _ = service
    tid = (await call(svc, "terminal/create", {}))["terminalId"]
    running = asyncio.ensure_future(
        call(svc, "terminal/execute", {"terminalId": tid, "command": "sleep 20"})
    )
    term = svc.terminals[tid]
    for _ in range(300):
        if term.busy and term.proc is not None and term.proc.foreground_pgrp() != term.pid:
            break
        await asyncio.sleep(0.01)
    await call(svc, "terminal/interrupt", {"terminalId": tid})
    result = await running
    assert result["status"] == "interrupted"
    assert result["exitCode"] == 130
    await call(svc, "terminal/close", {"terminalId": tid})


async def test_killed_shell_is_broadcast_and_recovered(
    service: tuple[TerminalService, list[Any]],
) -> None:
    svc, events = service
    tid = (await call(svc, "terminal/create", {}))["terminalId"]
    await call(svc, "terminal/execute", {"terminalId": tid, "command": "export KEEP=me; cd sub"})
    term = svc.terminals[tid]
    term.kill()
    for _ in range(500):
        if term.restarts == 1 and not term.busy:
            break
        await asyncio.sleep(0.01)
    result = await call(svc, "terminal/execute", {"terminalId": tid, "command": "echo $KEEP; pwd"})
    assert result["output"].splitlines() == ["me", str(svc.workspace / "sub")]
    assert result["recoveries"] == [
        {"action": "recreate_terminal", "reason": "shell exited with code -9"}
    ]
    exited = [p for m, p in events if m == "terminal/exited" and p["terminalId"] == tid]
    assert exited == [{"terminalId": tid, "exitCode": -9, "willRecover": True}]
    await call(svc, "terminal/close", {"terminalId": tid})


async def test_degraded_shell_integration_starts_plain_terminals(
    workspace: Path, tmp_path: Path
) -> None:
    async with TerminalService(
        workspace=workspace, state_dir=tmp_path, features=lambda name: name != "shell_integration"
    ) as svc:
        created = await call(svc, "terminal/create", {"shell": "bash"})
        assert created["mode"] == "no_shell_integration"
        result = await call(
            svc, "terminal/execute", {"terminalId": created["terminalId"], "command": "false"}
        )
        assert result["exitCode"] == 1
        assert result["output"] == ""


async def test_reap_idle_and_trim_spools(workspace: Path, tmp_path: Path) -> None:
    async with TerminalService(
        workspace=workspace, state_dir=tmp_path, default_shell="bash"
    ) as svc:
        await call(svc, "terminal/execute", {"command": "seq 1 100000", "maxOutputBytes": 100})
        assert svc.statistics().spools.spools == 1
        assert svc.trim_spools(0) > 500_000
        assert svc.statistics().spools.spools == 0
        assert await svc.reap_idle(3600) == 0
        assert await svc.reap_idle(0) == 1
        assert svc.statistics().terminals == 0
        assert (await call(svc, "terminal/execute", {"command": "echo back"}))["output"] == "back\n"


@pytest.mark.asyncio(loop_scope="module")
async def test_exec_command_line(tmp_path: Path) -> None:
    run = [sys.executable, "-m", "lapce_bridge", "exec"]
    plain = await asyncio.to_thread(
        subprocess.run,
        [*run, "--shell", "bash", "--", "echo out; exit 7"],
        capture_output=True,
        timeout=60,
    )
    assert plain.stdout == b"out\nexit\n"  # bash says `exit` as it does when one types it
    assert plain.returncode == 7
    timed = await asyncio.to_thread(
        subprocess.run,
        [*run, "--json", "--timeout", "0.3", "--cwd", str(tmp_path), "--", "sleep", "10"],
        capture_output=True,
        timeout=60,
    )
    assert timed.returncode == 124
    wire = orjson.loads(timed.stdout)
    assert wire["status"] == "timed_out"
    assert wire["cwd"] == str(tmp_path)


async def test_wait_notices_a_program_asking_again(
    service: tuple[TerminalService, list[Any]],
) -> None:
    svc, _ = service
    ctx = connect(svc)
    tid = (await call(svc, "terminal/create", {}, ctx))["terminalId"]
    program = 'python3 -c \'a = input("one? "); b = input("two? "); print(a + b)\''
    first = await call(
        svc,
        "terminal/execute",
        {"terminalId": tid, "command": program, "idleTimeoutMs": 300},
        ctx,
    )
    if first["status"] == "running":  # still starting python, reading nothing yet
        assert first["output"] == ""
        first = await call(
            svc, "terminal/wait", {"executionId": first["executionId"], "idleTimeoutMs": 300}, ctx
        )
    assert (first["status"], first["output"]) == ("waiting_for_input", "one? ")
    await call(svc, "terminal/sendText", {"terminalId": tid, "text": "x\n"}, ctx)
    again = await call(
        svc, "terminal/wait", {"executionId": first["executionId"], "idleTimeoutMs": 300}, ctx
    )
    assert (again["status"], again["output"]) == ("waiting_for_input", "x\ntwo? ")
    await call(svc, "terminal/sendText", {"terminalId": tid, "text": "y\n"}, ctx)
    final = await call(
        svc, "terminal/wait", {"executionId": first["executionId"], "idleTimeoutMs": 300}, ctx
    )
    assert final["status"] == "completed"
    assert final["output"] == "one? x\ntwo? y\nxy\n"
    assert final["exitCode"] == 0
