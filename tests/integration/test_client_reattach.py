"""`BridgeClient` re-attaches by itself: its output streams and watches, across a reconnect
and across a server SIGKILL + restart. Real `serve` processes, real bash, real watchers."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from lapce_bridge.core.errors import ConnectionLost
from lapce_bridge.ipc.client import BridgeClient
from lapce_bridge.ipc.raw import RawClient
from tests.integration.serve_process import serve, until_written

FIFTY_MB = 50_000_000
REAL_BOUND = 60.0


async def _eventually(condition: Callable[[], bool], what: str) -> None:
    try:
        async with asyncio.timeout(REAL_BOUND):
            for _ in itertools.count():  # state that real events and threads change
                if condition():
                    return
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"not within {REAL_BOUND} s: {what}") from None


class Output:
    """What the user's terminal/data handler received, checked for gaps and repeats."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.size = 0
        self.seqs: list[int] = []
        self.execution_id: str | None = None

    def __call__(self, params: dict[str, Any]) -> None:
        data = params["data"].encode()
        assert params["offset"] == self.size, "a gap or a repeat"
        self.parts.append(data)
        self.size += len(data)
        self.seqs.append(params["seq"])
        self.execution_id = params["executionId"]


@contextlib.asynccontextmanager
async def _socket_away(sock: Path) -> AsyncIterator[Path]:
    """The server's socket under another name: the client cannot reconnect meanwhile."""
    away = sock.with_name("away.sock")
    os.rename(sock, away)
    try:
        yield away
    finally:
        os.rename(away, sock)


async def test_a_stream_is_resumed_past_the_ring_after_a_reconnect(tmp_path: Path) -> None:
    async with serve(tmp_path) as served:
        client = BridgeClient(served.socket, outage_grace=REAL_BOUND)
        await client.connect()
        out = Output()
        client.on_notification("terminal/data", out)
        run = asyncio.ensure_future(
            client.send_with_recovery(
                "terminal/execute",
                {"command": f"yes | head -c {FIFTY_MB}", "stream": True, "maxOutputBytes": 4096},
            )
        )
        await _eventually(lambda: out.size >= 1 << 20, "the stream started")
        assert out.execution_id is not None
        async with _socket_away(served.socket) as away:
            assert client.link.wire is not None
            client.link.wire.close()  # the connection drops; reconnecting fails meanwhile
            # Away long enough for the server's 1 MiB ring to lose output: the spool path.
            side = await RawClient.connect_unix(away)
            await until_written(side, out.execution_id, out.size + (4 << 20))
            await side.close()
        result = await asyncio.wait_for(run, REAL_BOUND)
        await _eventually(lambda: out.size >= FIFTY_MB, "every byte delivered")
        reattached = client.reattach.reattached
        await client.close()
    assert result["outputBytes"] == out.size == FIFTY_MB
    whole = b"".join(out.parts)
    assert hashlib.sha256(whole).digest() == hashlib.sha256(b"y\n" * (FIFTY_MB // 2)).digest()
    assert out.seqs == sorted(set(out.seqs))  # in order, none twice
    # Past the ring: the bytes of several notifications came as one read from the spool.
    assert any(b - a > 1 for a, b in zip(out.seqs, out.seqs[1:], strict=False))
    assert reattached >= 1


async def test_a_keyed_stream_that_ended_while_away_is_delivered_once(tmp_path: Path) -> None:
    """A streamed `terminal/execute` sent with recovery is resumed by its id and by its key
    (nothing tells the client they are one before its answer); when it ended while the
    client was away, its output is still delivered once, never started over."""
    size = 2_000_000
    async with serve(tmp_path) as served:
        client = BridgeClient(served.socket, outage_grace=REAL_BOUND)
        await client.connect()
        offsets: list[int] = []
        delivered: list[bytes] = []
        executions: set[str] = set()

        def heard(params: dict[str, Any]) -> None:
            offsets.append(params["offset"])
            delivered.append(params["data"].encode())
            executions.add(params["executionId"])

        client.on_notification("terminal/data", heard)
        run = asyncio.ensure_future(
            client.send_with_recovery(
                "terminal/execute",
                {"command": f"yes | head -c {size}", "stream": True, "maxOutputBytes": 4096},
            )
        )
        await _eventually(lambda: bool(delivered), "the stream started")
        async with _socket_away(served.socket) as away:
            assert client.link.wire is not None
            client.link.wire.close()
            side = await RawClient.connect_unix(away)
            (execution,) = executions
            await until_written(side, execution, size)  # it ends while the client is away
            await side.close()
        result = await asyncio.wait_for(run, REAL_BOUND)
        await _eventually(lambda: sum(map(len, delivered)) >= size, "every byte delivered")
        await asyncio.sleep(0.5)  # anything repeated would come now
        await client.close()
    assert result["outputBytes"] == size
    assert sum(map(len, delivered)) == size  # once: not started over
    assert offsets == sorted(set(offsets))
    assert b"".join(delivered) == b"y\n" * (size // 2)


async def test_watches_are_reattached_after_a_server_sigkill_and_restart(tmp_path: Path) -> None:
    proj = tmp_path / "ws" / "proj"
    proj.mkdir(parents=True)
    (proj / "kept.txt").write_text("old")
    (proj / "gone.txt").write_text("x")
    changes: list[tuple[str, str]] = []
    ids: set[str] = set()

    def on_change(params: dict[str, Any]) -> None:
        ids.add(params["watchId"])
        changes.extend((c["path"], c["kind"]) for c in params["changes"])

    client: BridgeClient | None = None
    try:
        async with serve(tmp_path) as served:
            client = BridgeClient(served.socket, outage_grace=REAL_BOUND)
            await client.connect()
            client.on_notification("fs/didChange", on_change)
            watch_id = (await client.request("fs/watch", {"paths": ["proj"]}))["watchId"]
            (proj / "live.txt").write_text("l")
            await _eventually(lambda: ("proj/live.txt", "added") in changes, "a live change")
            served.proc.kill()
            await served.proc.wait()
        before = len(changes)
        (proj / "added.txt").write_text("a")
        (proj / "kept.txt").write_text("new content")
        (proj / "gone.txt").unlink()
        async with serve(tmp_path):
            missed = {
                ("proj/added.txt", "added"),
                ("proj/kept.txt", "modified"),
                ("proj/gone.txt", "deleted"),
            }
            await _eventually(lambda: missed <= set(changes[before:]), "the missed changes")
            assert set(changes[before:]) == missed
            assert ids == {watch_id}  # the same watch, back by itself
            (proj / "after.txt").write_text("z")
            await _eventually(lambda: ("proj/after.txt", "added") in changes, "a live change")
    finally:
        if client is not None:
            await client.close()


async def test_a_plain_client_finds_a_restarted_server_with_its_default_terminal(
    tmp_path: Path,
) -> None:
    """No watch, no stream, nothing queued: the client holds only its session's default
    terminal. After the server's SIGKILL, a request made while it restarts waits for the
    reconnect instead of failing "not connected", and finds the same terminal."""
    client: BridgeClient | None = None
    try:
        async with serve(tmp_path) as served:
            client = BridgeClient(served.socket, outage_grace=REAL_BOUND)
            await client.connect()
            first = await client.request(
                "terminal/execute", {"command": "export KEPT=yes; cd /tmp"}
            )
            served.proc.kill()
            await served.proc.wait()
        await _eventually(lambda: client is not None and not client.connected, "the loss seen")
        async with serve(tmp_path):
            again = await client.request("terminal/execute", {"command": "echo $KEPT; pwd"})
            assert again["terminalId"] == first["terminalId"]
            assert again["output"] == "yes\n/tmp\n"
            assert client.reconnects == 1
    finally:
        if client is not None:
            await client.close()


async def test_a_plain_request_fails_at_once_when_the_server_stays_away(tmp_path: Path) -> None:
    client: BridgeClient | None = None
    try:
        async with serve(tmp_path) as served:
            client = BridgeClient(served.socket, outage_grace=0.2)
            await client.connect()
            await client.request("ping")
            served.proc.kill()
            await served.proc.wait()
        await _eventually(lambda: client is not None and not client.connected, "the loss seen")
        with pytest.raises(ConnectionLost, match="not connected"):
            await client.request("ping")
    finally:
        if client is not None:
            await client.close()
