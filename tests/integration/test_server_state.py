"""What the server keeps on disk and where: the idempotency journal, socket and state paths."""

from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

from lapce_bridge.commands import serve
from lapce_bridge.core.errors import InvalidParams, PermissionDenied
from lapce_bridge.ipc.idempotency import Idempotency
from lapce_bridge.ipc.journal import EntryState, IdempotencyJournal
from lapce_bridge.ipc.paths import (
    default_socket_path,
    default_state_dir,
    prepare_socket_path,
    state_dir_ready,
)
from lapce_bridge.ipc.serve_cmd import journal_path


def test_journal_records_outcomes_and_survives_reopening(tmp_path: Path) -> None:
    path = tmp_path / "state" / "j.journal"
    with IdempotencyJournal(path) as journal:
        journal.begin("done", "fs/write")
        journal.finish("done", True, b'{"size":3}')
        journal.begin("crashed", "terminal/execute")  # never finished: the process "dies"
        assert journal.get("nope") is None
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    with IdempotencyJournal(path) as journal:
        done = journal.get("done")
        assert done is not None
        assert (done.state, done.ok, done.payload) == (EntryState.DONE, True, b'{"size":3}')
        crashed = journal.get("crashed")
        assert crashed is not None
        assert crashed.state is EntryState.INTERRUPTED
        assert journal.statistics().interrupted_at_open == 1


def test_an_interrupted_key_is_answered_outcome_unknown_and_never_rerun(tmp_path: Path) -> None:
    path = tmp_path / "j.journal"
    with IdempotencyJournal(path) as journal:
        journal.begin("k", "terminal/execute")
    table = Idempotency(IdempotencyJournal(path).open())
    found = table.lookup("k", "terminal/execute")
    assert isinstance(found, tuple)
    ok, payload = found
    assert not ok
    error = orjson.loads(payload)
    assert error["code"] == -32603
    assert error["data"]["outcome"] == "unknown"
    assert error["data"]["retryable"] is False
    with pytest.raises(InvalidParams, match="first used for terminal/execute"):
        table.lookup("k", "fs/write")
    table.journal.close()


def test_journal_is_bounded_by_entries_and_bytes(tmp_path: Path) -> None:
    with IdempotencyJournal(tmp_path / "j.journal", max_entries=50, max_bytes=10_000) as j:
        j.begin("running", "m")  # a running row is never pruned
        for i in range(200):
            j.begin(f"k{i}", "m")
            j.finish(f"k{i}", True, b"x" * 10)
        stats = j.statistics()
        assert stats.entries <= 50
        assert stats.pruned >= 150
        assert j.get("k0") is None
        assert j.get("k199") is not None
        assert j.get("running") is not None
        for i in range(20):
            j.begin(f"big{i}", "m")
            j.finish(f"big{i}", True, b"y" * 3000)
        assert j.statistics().stored_bytes <= 10_000
        assert j.get("big19") is not None


def test_socket_path_rules(tmp_path: Path) -> None:
    runtime = tmp_path / "runtime"
    runtime.mkdir()
    assert default_socket_path({"XDG_RUNTIME_DIR": str(runtime)}) == (
        runtime / "lapce-bridge" / "bridge.sock"
    )
    fallback = default_socket_path({"XDG_RUNTIME_DIR": str(tmp_path / "missing")})
    assert fallback.parent.name == f"lapce-bridge-{os.getuid()}"
    assert default_state_dir({"XDG_STATE_HOME": str(tmp_path)}) == tmp_path / "lapce-bridge"
    assert default_state_dir({}) == Path.home() / ".local" / "state" / "lapce-bridge"


def test_a_chosen_state_dir_is_never_chmodded_and_a_symlink_refused(tmp_path: Path) -> None:
    loose = tmp_path / "loose"
    loose.mkdir(mode=0o755)
    os.chmod(loose, 0o755)
    with pytest.raises(PermissionDenied, match="chmod 700"):
        state_dir_ready(loose, chosen=True)
    assert stat.S_IMODE(loose.stat().st_mode) == 0o755  # left as the user made it
    # Our own default folder, left loose by an earlier version, is tightened.
    ours = tmp_path / "lapce-bridge"
    ours.mkdir(mode=0o755)
    os.chmod(ours, 0o755)
    state_dir_ready(ours, chosen=False)
    assert stat.S_IMODE(ours.stat().st_mode) == 0o700
    link = tmp_path / "link"
    link.symlink_to(ours)
    with pytest.raises(PermissionDenied, match="symlink"):
        state_dir_ready(link, chosen=True)
    with pytest.raises(PermissionDenied, match="too long"):
        prepare_socket_path(tmp_path / ("x" * 120) / "bridge.sock")


def test_a_socket_in_a_sticky_folder_keeps_the_folders_mode(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o1777)
    from lapce_bridge.ipc.paths import bind_unix_socket

    sock = bind_unix_socket(shared / "x.sock")
    try:
        assert stat.S_IMODE(shared.stat().st_mode) == 0o1777  # sticky bit and mode kept
        assert stat.S_IMODE((shared / "x.sock").stat().st_mode) == 0o600
    finally:
        sock.close()
    # A folder others may rename entries in (world-writable, not sticky) is refused.
    os.chmod(shared, 0o777)
    with pytest.raises(PermissionDenied, match="not sticky"):
        prepare_socket_path(shared / "y.sock")


def test_each_endpoint_has_its_own_journal(tmp_path: Path) -> None:
    a = journal_path(tmp_path, "unix:/run/a.sock")
    b = journal_path(tmp_path, "unix:/run/b.sock")
    assert a != b
    assert a == journal_path(tmp_path, "unix:/run/a.sock")
    assert a.suffix == ".journal"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--stdio", "--socket", "x.sock"], "choose one of"),
        (["--listen", "127.0.0.1:9999"], "--listen needs --token-file"),
        (["--listen", "nonsense"], "expected HOST:PORT"),
        (["--extra-methods", "no_colon"], "expected MODULE:ATTRIBUTE"),
        (["--workspace", "/nonexistent/workspace"], "'/nonexistent/workspace' is not a folder"),
    ],
)
def test_serve_refuses_bad_options(tmp_path: Path, args: list[str], message: str) -> None:
    result = CliRunner().invoke(serve, [*args, "--state-dir", str(tmp_path / "s")])
    assert result.exit_code == 2 or result.exit_code == 1
    assert message in result.output
    assert "listening" not in result.output  # refused before anything listens


def test_serve_refuses_an_empty_token_file(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("\n")
    result = CliRunner().invoke(serve, ["--listen", "127.0.0.1:0", "--token-file", str(token)])
    assert result.exit_code == 2
    assert "is empty" in result.output


@pytest.mark.parametrize(
    ("content", "mode", "message"),
    [
        ("a-token-of-thirty-two-characters", 0o644, "may be read by other users"),
        ("a-token-of-thirty-two-characters", 0o640, "may be read by other users"),
        ("x", 0o600, "shorter than 16 bytes"),
        ("fifteen-bytes!!", 0o600, "shorter than 16 bytes"),
    ],
)
def test_serve_refuses_a_weak_token_file(
    tmp_path: Path, content: str, mode: int, message: str
) -> None:
    token = tmp_path / "token"
    token.write_text(content)
    token.chmod(mode)
    result = CliRunner().invoke(serve, ["--listen", "127.0.0.1:0", "--token-file", str(token)])
    assert result.exit_code == 2
    assert message in result.output


async def test_the_app_serves_the_file_service_when_present(tmp_path: Path) -> None:
    import importlib.util

    from lapce_bridge.app import App
    from lapce_bridge.ipc.client import BridgeClient
    from lapce_bridge.ipc.server import BridgeServer

    if importlib.util.find_spec("lapce_bridge.fs.service") is None:
        pytest.skip("lapce_bridge.fs.service is absent")
    workspace = tmp_path / "ws"
    workspace.mkdir()
    sock = tmp_path / "run" / "bridge.sock"
    async with App(workspace=workspace, state_dir=tmp_path / "state") as app:
        assert {"fs/read", "fs/write", "health/get"} <= set(app.methods)
        assert app.resources is not None
        async with BridgeServer(app) as server:
            await server.listen_unix(sock)
            async with BridgeClient(sock) as client:
                written = await client.send_with_recovery(
                    "fs/write", {"path": "notes/a.txt", "content": "hi", "createDirs": True}
                )
                assert written["size"] == 2
                read = await client.request("fs/read", {"path": "notes/a.txt"})
                assert read["content"] == "hi"
                with pytest.raises(PermissionDenied):
                    await client.request("fs/read", {"path": "../outside.txt"})
                metrics = await client.request("metrics/get")
                assert metrics["operations"]["fs/read"]["count"] >= 1
    assert (workspace / "notes" / "a.txt").read_text() == "hi"


async def test_an_outcome_the_journal_cannot_record_is_still_answered(tmp_path: Path) -> None:
    journal = IdempotencyJournal(tmp_path / "j.journal").open()
    table = Idempotency(journal)

    async def work() -> tuple[bool, bytes]:
        # The log's descriptor fails under the journal mid-request (as a full disk would).
        assert journal._own is not None
        os.close(journal._own.fd)
        return (True, b'"done"')

    future = table.start("k", "m", work)
    ok, payload = await future
    assert ok
    assert payload == b'"done"'
    assert table.unrecorded == 1
    assert table.running == 0


async def test_signal_capture_turns_signals_into_calls_and_restores_handlers() -> None:
    import asyncio
    import signal

    from lapce_bridge.ipc.serve_cmd import capture_signals

    watched = (signal.SIGINT, signal.SIGTERM)
    before = {sig: signal.getsignal(sig) for sig in watched}
    got: list[str] = []
    with capture_signals(got.append):
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(200):
            if len(got) == 2:
                break
            await asyncio.sleep(0.005)
    assert sorted(got) == ["signal SIGINT", "signal SIGTERM"]
    assert {sig: signal.getsignal(sig) for sig in watched} == before


@pytest.mark.parametrize("command", ["serve", "mcp"])
def test_both_servers_refuse_a_chosen_state_dir_others_can_read(
    tmp_path: Path, command: str
) -> None:
    import subprocess
    import sys

    loose = tmp_path / "state"
    loose.mkdir()
    os.chmod(loose, 0o755)
    args = ["--stdio"] if command == "serve" else []
    done = subprocess.run(
        [sys.executable, "-m", "lapce_bridge", command, *args, "--state-dir", str(loose),
         "--workspace", str(tmp_path)],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode != 0
    assert "chmod 700" in done.stderr
    assert "Traceback" not in done.stderr
    assert stat.S_IMODE(loose.stat().st_mode) == 0o755  # refused, not chmodded


async def test_the_first_asker_is_given_the_outcome_once_recorded_before_the_futures_waiters(
    tmp_path: Path,
) -> None:
    path = tmp_path / "j.journal"
    table = Idempotency(IdempotencyJournal(path).open())
    seen: list[str] = []

    async def work() -> tuple[bool, bytes]:
        return (True, b"42")

    def then(outcome: tuple[bool, bytes]) -> None:
        entry = table.journal.get("k")
        assert entry is not None  # (a failed assert here is logged: "then" is not seen)
        assert entry.state is EntryState.DONE  # recorded first
        seen.append(f"then {outcome[1].decode()}")

    future = table.start("k", "m", work, then=then)
    future.add_done_callback(lambda f: seen.append(f"future {f.result()[1].decode()}"))
    assert await future == (True, b"42")
    await asyncio.sleep(0)
    assert seen == ["then 42", "future 42"]
    table.journal.close()
