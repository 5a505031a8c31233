"""Terminals in a host process, through real `lapce-bridge serve` processes and real bash.

The server is killed with SIGKILL and started again while commands run; the host itself is
killed; a host of another version is met. Every check is what a client sees over the socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import stat
import sys
import time
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import Any

import pytest

from lapce_bridge import __version__
from lapce_bridge.core.errors import BridgeError, Cancelled, TerminalError
from lapce_bridge.host import link
from lapce_bridge.host.attach import host_command, spawn_detached
from lapce_bridge.host.places import HostPlaces, host_places
from lapce_bridge.host.process import host_pid
from lapce_bridge.host.proxy import HostProxy
from lapce_bridge.ipc.client import BridgeClient
from lapce_bridge.ipc.paths import probe
from tests.integration.serve_process import Served, serve

pytestmark = pytest.mark.timeout(120)

HOST = ("--terminal-host", "on", "--shell", "bash")


def places_of(tmp_path: Path) -> HostPlaces:
    return host_places(tmp_path / "state", tmp_path / "ws")


async def _pid_gone(pid: int, within: float = 20.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        await asyncio.sleep(0.05)
    return False


@contextlib.asynccontextmanager
async def host_stopped_after(tmp_path: Path) -> AsyncIterator[None]:
    """Stop whatever host the test left (it outlives its servers on purpose)."""
    try:
        yield
    finally:
        pid = host_pid(places_of(tmp_path))
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            await _pid_gone(pid)


async def kill(served: Served) -> None:
    served.proc.kill()
    await served.proc.wait()


def listed(terminals: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """What must be equal before and after a restart (ownership flags are per connection)."""
    keys = ("terminalId", "shell", "pid", "mode", "cwd", "name")
    return sorted(tuple(t[k] for k in keys) for t in terminals)


async def test_a_killed_server_loses_no_terminal_command_or_result(tmp_path: Path) -> None:
    async with host_stopped_after(tmp_path):
        async with serve(tmp_path, *HOST) as served:
            ws = served.workspace
            (ws / "sub").mkdir()
            client = await BridgeClient(served.socket).connect()
            t1 = (await client.request("terminal/create", {"env": {"GIVEN": "g1"}}))["terminalId"]
            t2 = (await client.request("terminal/create", {}))["terminalId"]
            await client.request(
                "terminal/execute", {"terminalId": t1, "command": "cd sub; export KEPT=k1"}
            )
            before = await client.request("terminal/list")
            keyed = {
                "terminalId": t1,
                "command": "sleep 2; echo ran >> ../runs.txt; echo done",
                "idempotencyKey": "restart-1",
            }
            running = asyncio.ensure_future(client.request("terminal/execute", keyed))
            unanswered = await client.request(
                "terminal/execute",
                {"terminalId": t2, "command": "sleep 1.5; echo waited", "maxWaitMs": 300},
            )
            assert unanswered["status"] == "running"
            await kill(served)
            await client.close()
            with pytest.raises(Exception):  # noqa: B017 - its connection died with the server
                await running
        async with serve(tmp_path, *HOST) as served:
            client = await BridgeClient(served.socket).connect()
            assert await client.request("ping") == {"pong": True}
            after = await client.request("terminal/list")
            assert listed(after) == listed(before)
            replay = await client.request("terminal/execute", keyed)
            assert (replay["output"], replay["exitCode"]) == ("done\n", 0)
            assert replay["durationMs"] >= 1500  # the real run, joined; not run again
            waited = await client.request(
                "terminal/wait", {"executionId": unanswered["executionId"]}
            )
            assert (waited["output"], waited["exitCode"]) == ("waited\n", 0)
            state = await client.request(
                "terminal/execute", {"terminalId": t1, "command": 'echo "$GIVEN $KEPT"; pwd'}
            )
            assert state["output"] == f"g1 k1\n{(served.workspace / 'sub').resolve()}\n"
            assert (served.workspace / "runs.txt").read_text() == "ran\n"  # once
            await client.close()


async def test_a_session_gets_its_default_terminal_back_after_a_crash(tmp_path: Path) -> None:
    async with host_stopped_after(tmp_path):
        async with serve(tmp_path, *HOST) as served:
            client = await BridgeClient(served.socket).connect()
            await client.request("initialize", {"protocolVersion": 1, "session": "agent-7"})
            first = await client.request("terminal/execute", {"command": "export S=7; cd /"})
            await kill(served)
            await client.close()
        async with serve(tmp_path, *HOST) as served:
            client = await BridgeClient(served.socket).connect()
            await client.request("initialize", {"protocolVersion": 1, "session": "agent-7"})
            again = await client.request("terminal/execute", {"command": 'echo "$S"; pwd'})
            assert again["terminalId"] == first["terminalId"]
            assert again["output"] == "7\n/\n"
            await client.close()


async def test_a_bridge_client_gets_its_default_terminal_back_after_a_crash(
    tmp_path: Path,
) -> None:
    async with host_stopped_after(tmp_path):
        async with serve(tmp_path, *HOST) as served:
            client = await BridgeClient(served.socket).connect()  # names a session of its own
            first = await client.request("terminal/execute", {"command": "export D=4; cd /"})
            await kill(served)
        async with serve(tmp_path, *HOST):
            again = await client.send_with_recovery(
                "terminal/execute", {"command": 'echo "$D"; pwd'}, timeout=30
            )
            assert again["terminalId"] == first["terminalId"]
            assert again["output"] == "4\n/\n"
            await client.close()


async def test_a_killed_host_is_replaced_and_the_loss_is_reported(tmp_path: Path) -> None:
    async with host_stopped_after(tmp_path), serve(tmp_path, *HOST) as served:
        client = await BridgeClient(served.socket).connect()
        exits: list[dict[str, Any]] = []
        client.on_notification("terminal/exited", exits.append)
        tid = (await client.request("terminal/create", {"env": {"GIVEN": "g2"}}))["terminalId"]
        await client.request(
            "terminal/execute", {"terminalId": tid, "command": "cd /tmp; export KEPT=k2"}
        )
        big = await client.request(
            "terminal/execute",
            {"terminalId": tid, "command": "seq 1 3000", "maxOutputBytes": 1024},
        )
        assert big["truncated"]
        t2 = (await client.request("terminal/create", {}))["terminalId"]
        unanswered = await client.request(
            "terminal/execute", {"terminalId": t2, "command": "sleep 30", "maxWaitMs": 300}
        )
        assert unanswered["status"] == "running"
        await asyncio.sleep(1.0)  # the host writes its terminals and spools down twice a second
        old = host_pid(places_of(tmp_path))
        assert old is not None
        running = asyncio.ensure_future(
            client.request("terminal/execute", {"terminalId": tid, "command": "sleep 30"})
        )
        await asyncio.sleep(0.3)
        os.kill(old, signal.SIGKILL)
        with pytest.raises(TerminalError) as lost:
            await running
        assert lost.value.data.get("hostDied") is True  # the loss is said, not hidden
        again = await client.request(
            "terminal/execute", {"terminalId": tid, "command": 'echo "$GIVEN $KEPT"; pwd'}
        )
        assert again["output"] == "g2 k2\n/tmp\n"
        assert [r["action"] for r in again["recoveries"]] == ["recreate_terminal"]
        new = host_pid(places_of(tmp_path))
        assert new is not None
        assert new != old
        assert await _pid_gone(old)
        assert {"terminalId": tid, "exitCode": None, "willRecover": True} in exits
        page = await client.request("terminal/readOutput", {"executionId": big["executionId"]})
        assert page["data"].splitlines()[-1] == "3000"
        assert page["eof"]
        with pytest.raises(TerminalError) as gone:  # the command running in t2 died with it
            await client.request("terminal/wait", {"executionId": unanswered["executionId"]})
        assert gone.value.data == {
            "executionId": unanswered["executionId"],
            "terminalId": t2,
            "hostDied": True,
            "lost": True,
        }
        health = await client.request("health/get")
        details = [i["detail"] for i in health["incidents"]["recent"]]
        assert any("terminal host died" in d and tid in d for d in details), details
        await client.close()


def as_version(version: str, protocol: int | None = None) -> tuple[str, ...]:
    """What runs a command as another release of the package says it is: the real code,
    another version (or link protocol) in its hello (`lapce_bridge.testing.other_version`);
    the hosts it starts say the same."""
    cmd = [sys.executable, "-m", "lapce_bridge.testing.other_version", "--version", version]
    if protocol is not None:
        cmd += ["--protocol", str(protocol)]
    return (*cmd, "--")


OTHER_RELEASES = [("0.0.1", None), (__version__, link.PROTOCOL_VERSION - 1)]


@pytest.mark.parametrize(("version", "protocol"), OTHER_RELEASES, ids=["version", "protocol"])
async def test_an_upgraded_server_drains_the_old_host_and_keeps_its_work(
    tmp_path: Path, version: str, protocol: int | None
) -> None:
    """A server and its host of another release, real processes, hold a terminal (env and
    cwd set), a finished command and a running keyed one; the server is killed and this
    release's server started (an upgrade). The old host refuses it and drains: the running
    command finishes there. A new host then serves the same terminal (env, cwd), the finished
    output, and the keyed command's real result."""
    places = places_of(tmp_path)
    async with host_stopped_after(tmp_path):
        async with serve(tmp_path, *HOST, prefix=as_version(version, protocol)) as old_server:
            client = await BridgeClient(old_server.socket).connect()
            tid = (await client.request("terminal/create", {"env": {"GIVEN": "g3"}}))["terminalId"]
            finished = await client.request(
                "terminal/execute",
                {"terminalId": tid, "command": "cd /tmp; export KEPT=k3; echo kept"},
            )
            keyed = {"terminalId": tid, "command": "sleep 1; echo late", "idempotencyKey": "d1"}
            running = asyncio.ensure_future(client.request("terminal/execute", keyed))
            await asyncio.sleep(0.3)
            old = host_pid(places)
            assert old is not None
            await kill(old_server)
            with contextlib.suppress(BridgeError):
                await running  # its connection is gone; the command goes on in the host
            await client.close()
        async with serve(tmp_path, *HOST) as served:
            client = await BridgeClient(served.socket).connect()
            again = await client.request(
                "terminal/execute", {"terminalId": tid, "command": 'echo "$GIVEN $KEPT"; pwd'}
            )
            assert again["output"] == "g3 k3\n/tmp\n"  # creation env, exported env, cwd
            assert await _pid_gone(old)
            assert host_pid(places) not in (None, old)
            page = await client.request(
                "terminal/readOutput", {"executionId": finished["executionId"]}
            )
            assert page["data"] == "kept\n"
            late = await client.request("terminal/execute", keyed)  # its key: not run again
            assert (late["output"], late["exitCode"]) == ("late\n", 0)
            await client.close()
    said = places.log.read_text()
    assert (
        f"draining: an incompatible server attached: host {version} (link protocol "
        f"{protocol or link.PROTOCOL_VERSION}), server {__version__} (link protocol "
        f"{link.PROTOCOL_VERSION})"
    ) in said


async def test_two_servers_starting_together_share_one_host(tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    async with (
        host_stopped_after(tmp_path),
        serve(tmp_path, *HOST) as a,
        serve(
            other,
            *HOST,
            "--state-dir",
            str(tmp_path / "state"),
            "--workspace",
            str(tmp_path / "ws"),
        ) as b,
    ):
        ca = await BridgeClient(a.socket).connect()
        cb = await BridgeClient(b.socket).connect()
        made = await asyncio.gather(
            ca.request("terminal/create", {}), cb.request("terminal/create", {})
        )
        ids = {m["terminalId"] for m in made}
        assert len(ids) == 2
        seen = {t["terminalId"] for t in await ca.request("terminal/list")}
        assert ids <= seen
        await ca.close()
        await cb.close()


async def test_the_host_socket_and_files_are_private(tmp_path: Path) -> None:
    async with host_stopped_after(tmp_path), serve(tmp_path, *HOST) as served:
        client = await BridgeClient(served.socket).connect()
        await client.request("terminal/create", {})
        await asyncio.sleep(0.7)
        places = places_of(tmp_path)
        assert stat.S_IMODE(places.socket.stat().st_mode) == 0o600
        assert stat.S_ISSOCK(places.socket.stat().st_mode)
        for folder in (tmp_path / "state", places.folder):
            assert stat.S_IMODE(folder.stat().st_mode) == 0o700
        for private in (places.lock, places.terminals, places.log):
            assert stat.S_IMODE(private.stat().st_mode) == 0o600, private
        # The journal is a private folder of logs (`ipc.journal`).
        assert stat.S_IMODE(places.journal.stat().st_mode) == 0o700
        for log in places.journal.iterdir():
            assert stat.S_IMODE(log.stat().st_mode) == 0o600, log
        await client.close()


async def test_a_client_cancels_by_key_a_command_started_before_the_crash(tmp_path: Path) -> None:
    async with host_stopped_after(tmp_path):
        async with serve(tmp_path, *HOST) as served:
            client = await BridgeClient(served.socket).connect()
            tid = (await client.request("terminal/create", {}))["terminalId"]
            keyed = {"terminalId": tid, "command": "sleep 30", "idempotencyKey": "long-1"}
            running = asyncio.ensure_future(client.request("terminal/execute", keyed))
            await asyncio.sleep(0.5)
            await kill(served)
            await client.close()
            with pytest.raises(Exception):  # noqa: B017 - its connection died with the server
                await running
        async with serve(tmp_path, *HOST) as served:
            client = await BridgeClient(served.socket).connect()
            busy = {t["terminalId"]: t["busy"] for t in await client.request("terminal/list")}
            assert busy[tid] is True
            client.notify("$/cancelRequest", {"idempotencyKey": "long-1"})
            with pytest.raises(Cancelled):
                await client.request("terminal/execute", keyed)
            after = await client.request(
                "terminal/execute", {"terminalId": tid, "command": "echo free"}
            )
            assert after["output"] == "free\n"
            await client.close()


async def test_memory_pressure_spills_the_hosts_spools_and_says_how_much(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    async with (
        host_stopped_after(tmp_path),
        HostProxy(workspace=ws, state_dir=tmp_path / "state", default_shell="bash") as proxy,
    ):
        lk = await proxy.ready()
        ran = await proxy._call(lk, "terminal/execute", {"command": "seq 1 2000"}, None)
        assert ran["outputBytes"] == len("".join(f"{n}\n" for n in range(1, 2001)))
        spill = proxy.relief().spill_spools
        assert spill is not None
        freed = spill()
        assert isinstance(freed, Awaitable)
        assert await freed == ran["outputBytes"]  # what the host really moved to disk
        again = spill()
        assert isinstance(again, Awaitable)
        assert await again == 0  # nothing finished is left in its memory
        page = await proxy._call(
            lk, "terminal/readOutput", {"executionId": ran["executionId"]}, None
        )
        assert page["data"].splitlines()[-1] == "2000"  # read back from the disk


async def test_a_host_stopped_on_purpose_is_no_death(tmp_path: Path) -> None:
    async with host_stopped_after(tmp_path), serve(tmp_path, *HOST) as served:
        client = await BridgeClient(served.socket).connect()
        tid = (await client.request("terminal/create", {}))["terminalId"]
        old = host_pid(places_of(tmp_path))
        assert old is not None
        running = asyncio.ensure_future(
            client.request("terminal/execute", {"terminalId": tid, "command": "sleep 30"})
        )
        await asyncio.sleep(0.3)
        os.kill(old, signal.SIGTERM)
        with pytest.raises(TerminalError) as stopped:
            await running
        assert stopped.value.data.get("hostStopped") is True
        assert await _pid_gone(old)
        assert await client.request("terminal/list") == []  # it closed them; none recreated
        made = await client.request("terminal/execute", {"command": "echo again"})
        assert made["output"] == "again\n"  # a new host, started when a terminal was wanted
        assert host_pid(places_of(tmp_path)) not in (None, old)
        health = await client.request("health/get")
        details = [i["detail"] for i in health["incidents"]["recent"]]
        assert not any("terminal host" in d for d in details), details
        await client.close()


async def start_host_by_hand(tmp_path: Path, *extra: str, prefix: tuple[str, ...] = ()) -> int:
    """A host started as `serve` starts one, with `extra` options (run by `prefix`: see
    `as_version`); its pid once it listens."""
    places = places_of(tmp_path)
    (tmp_path / "ws").mkdir(exist_ok=True)
    cmd = host_command(tmp_path / "state", (tmp_path / "ws").resolve(), "bash", 300, sys.executable)
    spawn_detached([*prefix, *cmd, *extra], places.log)
    async with asyncio.timeout(30):
        # Polls the host's socket (another process): nothing here to await instead.
        while not probe(places.socket, 0.5):  # noqa: ASYNC110
            await asyncio.sleep(0.02)
    pid = host_pid(places)
    assert pid is not None
    return pid


async def test_a_drain_is_bounded_and_what_it_ended_is_reported(tmp_path: Path) -> None:
    """A host of another release drains for its drain bound at most (here 1 s, by default
    30 s): a command still running then is ended and reported lost, its terminal comes back
    in the successor with its cwd and env, and new terminal requests are served again."""
    old = await start_host_by_hand(tmp_path, "--drain-limit", "1", prefix=as_version("0.0.1"))
    async with host_stopped_after(tmp_path):
        async with serve(tmp_path, *HOST, prefix=as_version("0.0.1")) as old_server:
            client = await BridgeClient(old_server.socket).connect()
            tid = (await client.request("terminal/create", {"env": {"GIVEN": "g4"}}))["terminalId"]
            await client.request(
                "terminal/execute", {"terminalId": tid, "command": "cd /tmp; export KEPT=k4"}
            )
            assert host_pid(places_of(tmp_path)) == old
            execution = (
                await client.request(
                    "terminal/execute",
                    {"terminalId": tid, "command": "sleep 60", "maxWaitMs": 200},
                )
            )["executionId"]  # answered `running` after 0.2 s
            await kill(old_server)
            await client.close()
        async with serve(tmp_path, *HOST) as served:
            client = await BridgeClient(served.socket).connect()
            drained = time.monotonic()
            again = await client.request(
                "terminal/execute", {"terminalId": tid, "command": 'echo "$GIVEN $KEPT"; pwd'}
            )
            assert time.monotonic() - drained < 15  # the bound, not the 60 s command
            assert again["output"] == "g4 k4\n/tmp\n"
            assert await _pid_gone(old, within=20)
            assert host_pid(places_of(tmp_path)) not in (None, old)
            with pytest.raises(TerminalError) as lost:
                await client.request("terminal/wait", {"executionId": execution})
            assert lost.value.data.get("lost") is True
            log = places_of(tmp_path).log.read_bytes()
            assert b"the commands still running are ended" in log
            await client.close()


async def test_terminal_stop_host_ends_or_waits_for_running_commands(tmp_path: Path) -> None:
    """`terminal/stopHost` through a real serve: the host stops, its terminals close and
    none is recreated; a running command is ended (`running: "end"`, the default) or
    finishes first (`"wait"`, new commands refused meanwhile); no death is reported."""
    async with host_stopped_after(tmp_path), serve(tmp_path, *HOST) as served:
        client = await BridgeClient(served.socket).connect()
        assert await client.request("terminal/stopHost") == {
            "stopped": False,  # none runs yet, and none is started for it
            "terminals": [],
            "ended": [],
        }
        tid = (await client.request("terminal/create", {}))["terminalId"]
        old = host_pid(places_of(tmp_path))
        running = asyncio.ensure_future(
            client.request("terminal/execute", {"terminalId": tid, "command": "sleep 30"})
        )
        await asyncio.sleep(0.3)
        stopped = await client.request("terminal/stopHost")
        assert stopped["stopped"] is True
        assert stopped["pid"] == old
        assert stopped["terminals"] == [tid]
        assert len(stopped["ended"]) == 1
        with pytest.raises(TerminalError) as ended:
            await running
        assert ended.value.data.get("hostStopped") is True
        assert host_pid(places_of(tmp_path)) is None  # answered once all closed (lock last)
        assert old is not None
        assert await _pid_gone(old)

        # "wait": the running command finishes and is answered; a new one is refused.
        tid = (await client.request("terminal/create", {}))["terminalId"]
        second = host_pid(places_of(tmp_path))
        assert second not in (None, old)
        running = asyncio.ensure_future(
            client.request("terminal/execute", {"terminalId": tid, "command": "sleep 1; echo done"})
        )
        await asyncio.sleep(0.3)
        stopping = asyncio.ensure_future(
            client.request("terminal/stopHost", {"running": "wait", "timeoutMs": 20_000})
        )
        await asyncio.sleep(0.2)
        with pytest.raises(BridgeError) as refused:
            await client.request("terminal/execute", {"command": "echo late"})
        assert refused.value.code == -32002
        done = await running
        assert (done["output"], done["exitCode"]) == ("done\n", 0)
        stopped = await stopping
        assert (stopped["stopped"], stopped["ended"], stopped["pid"]) == (True, [], second)
        with pytest.raises(BridgeError) as bad:
            await client.request("terminal/stopHost", {"running": "later"})
        assert bad.value.code == -32602

        assert await client.request("terminal/list") == []  # a new host, nothing recreated
        health = await client.request("health/get")
        details = [i["detail"] for i in health["incidents"]["recent"]]
        assert not any("terminal host" in d for d in details), details
        await client.close()


def _writer(marker: str) -> int | None:
    """The pid of the `head -c <marker>` process, if it runs."""
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if cmdline[:3] == [b"head", b"-c", marker.encode()]:
                return int(entry)
    return None


def _written(pid: int) -> int:
    """The bytes a process wrote so far (`wchar`), -1 once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/io").read_text().splitlines():
            if line.startswith("wchar:"):
                return int(line.split()[1])
    except OSError:
        pass
    return -1


async def _read_whole(client: BridgeClient, execution: str) -> bytes:
    data = b""
    offset = 0
    while True:
        page = await client.request(
            "terminal/readOutput", {"executionId": execution, "offset": offset}
        )
        data += str(page["data"]).encode()
        offset = int(page["offset"])
        if page["eof"] or not page["data"]:
            return data


@pytest.mark.parametrize("released_by", ["a server", "the bound"])
async def test_output_is_held_while_no_server_listens_then_delivered_whole(
    tmp_path: Path, released_by: str
) -> None:
    """A command writing output when its server dies: while no server listens, its output is
    not read (it blocks on the full PTY buffer, leaving the CPU to the next server), until a
    server is welcomed (long before the bound here) or, with none, until the bound. Then
    every byte is read, once, in order."""
    size = 8_000_000
    hold = "60" if released_by == "a server" else "4"
    await start_host_by_hand(tmp_path, "--output-hold", hold)
    async with host_stopped_after(tmp_path):
        async with serve(tmp_path, *HOST) as first:
            client = await BridgeClient(first.socket).connect()
            tid = (await client.request("terminal/create", {}))["terminalId"]
            command = f"sleep 0.5; yes | head -c {size}"
            running = await client.request(
                "terminal/execute", {"terminalId": tid, "command": command, "maxWaitMs": 100}
            )
            await kill(first)  # before the command writes: its output is held from the start
            await client.close()
        async with asyncio.timeout(30):
            # Polls for another process (the command's writer): nothing here to await.
            while (writer := _writer(str(size))) is None:  # noqa: ASYNC110
                await asyncio.sleep(0.02)
            while _written(writer) == 0:  # noqa: ASYNC110 - until it wrote into its terminal
                await asyncio.sleep(0.02)
        before = _written(writer)
        await asyncio.sleep(0.5)
        held = _written(writer)
        assert 0 < before == held < size  # blocked on the PTY: nothing read meanwhile
        if released_by == "the bound":
            assert await _pid_gone(writer, within=30)  # released with no server back
        async with serve(tmp_path, *HOST) as second:
            client = await BridgeClient(second.socket).connect()
            if released_by == "a server":
                assert await _pid_gone(writer, within=30)  # not the 60 s bound
            done = await client.request("terminal/wait", {"executionId": running["executionId"]})
            assert (done["exitCode"], done["outputBytes"]) == (0, size)
            assert await _read_whole(client, running["executionId"]) == b"y\n" * (size // 2)
            await client.close()
