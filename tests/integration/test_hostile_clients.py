"""Hostile and broken clients against the real server: each attack fails on a server without
the defence (`ipc.state.Limits`), and a well-behaved client keeps being served."""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from lapce_bridge.app import App
from lapce_bridge.core.errors import ConnectionLost
from lapce_bridge.ipc.raw import RawClient
from lapce_bridge.ipc.server import BridgeServer
from lapce_bridge.ipc.state import Limits
from lapce_bridge.rpc import CallContext, Params, method
from lapce_bridge.testing import FakeClock

TOKEN = "a-token-of-thirty-two-characters"


async def _hang(params: Params, ctx: CallContext) -> None:
    await asyncio.Event().wait()


@asynccontextmanager
async def served(
    tmp_path: Path, *, clock: FakeClock | None = None, limits: Limits | None = None
) -> AsyncIterator[tuple[BridgeServer, Path, tuple[str, int]]]:
    async with App(services=False, clock=clock, extra_methods={"test/hang": method(_hang)}) as app:
        server = BridgeServer(app, token=TOKEN, limits=limits)
        sock = await server.listen_unix(tmp_path / "bridge.sock")
        tcp = await server.listen_tcp("127.0.0.1", 0)
        try:
            yield server, sock, tcp
        finally:
            await server.aclose()


async def _closed(client: RawClient) -> list[Any]:
    """What the server sent before closing the connection."""
    got: list[Any] = []
    try:
        async with asyncio.timeout(10):
            while True:
                got.append(await client.recv())
    except (ConnectionLost, ConnectionError):
        return got
    finally:
        await client.close()


async def _answer(client: RawClient) -> Any:
    """The next answer, skipping broadcasts (a latency alert under load, say)."""
    while True:
        msg = await client.recv()
        if type(msg) is list or "method" not in msg:
            return msg


async def test_unauthenticated_connections_cannot_make_the_server_buffer(tmp_path: Path) -> None:
    async with served(tmp_path) as (server, _sock, tcp):
        clients = [await RawClient.connect_tcp(*tcp) for _ in range(30)]
        for c in clients:
            c.send_bytes(b"Content-Length: 15728640\r\n\r\n" + b"x" * 65536)  # 15 MB announced
        answers = [await _closed(c) for c in clients]
        for got in answers:
            assert [m["error"]["code"] for m in got] == [-32007]  # refused at the header
        assert server.statistics().connections == 0
        good = await RawClient.connect_tcp(*tcp)
        init = await good.request("initialize", {"protocolVersion": 1, "token": TOKEN})
        assert "result" in init
        assert (await good.request("ping"))["result"] == {"pong": True}
        await good.close()


async def test_a_tcp_client_that_does_not_authenticate_in_time_is_closed(tmp_path: Path) -> None:
    clock = FakeClock()
    async with served(tmp_path, clock=clock) as (server, _, tcp):
        silent = await RawClient.connect_tcp(*tcp)
        for _ in range(200):
            if server.statistics().connections == 1:
                break
            await asyncio.sleep(0.01)
        await clock.advance(4.9)
        assert server.statistics().connections == 1
        await clock.advance(0.2)
        got = await _closed(silent)
        assert got[0]["error"]["data"]["type"] == "AuthenticationFailed"
        assert "not authenticated within 5 s" in got[0]["error"]["message"]
        assert server.statistics().auth_timeouts == 1


async def test_connections_that_send_nothing_cannot_use_up_the_descriptors(
    tmp_path: Path,
) -> None:
    async with served(tmp_path, limits=Limits(max_silent=4)) as (server, sock, _):
        talking = await RawClient.connect_unix(sock)
        assert (await talking.request("ping"))["result"] == {"pong": True}
        idle = [await RawClient.connect_unix(sock) for _ in range(6)]
        # Past four silent connections the oldest is closed: the first two here.
        assert await _closed(idle[0]) == []
        assert await _closed(idle[1]) == []
        assert (await idle[2].request("ping"))["result"] == {"pong": True}
        assert (await talking.request("ping"))["result"] == {"pong": True}
        assert server.statistics().idle_closed == 2
        for c in [talking, *idle[2:]]:
            await c.close()


async def test_a_wrong_token_is_an_authentication_failure_and_guessing_is_slowed(
    tmp_path: Path,
) -> None:
    clock = FakeClock()
    async with served(tmp_path, clock=clock) as (server, _, tcp):
        first = await RawClient.connect_tcp(*tcp)
        reply = await first.request("initialize", {"token": "wrong"})
        data = reply["error"]["data"]
        assert (reply["error"]["code"], data["type"], data["category"]) == (
            -32006, "AuthenticationFailed", "network"
        )  # fmt: skip
        assert data["fault"] == "caller"
        await first.close()
        # The next failures are answered later and later: 50 ms, then 100 ms.
        for delay in (0.05, 0.1):
            guess = await RawClient.connect_tcp(*tcp)
            msg_id = guess.request_nowait("initialize", {"token": "still wrong"})
            answer = asyncio.ensure_future(guess.response(msg_id))
            for _ in range(500):
                if delay in clock.sleeps:
                    break
                await asyncio.sleep(0.01)
            assert delay in clock.sleeps
            await asyncio.sleep(0.05)
            assert not answer.done()  # held back until the delay passes on the clock
            await clock.advance(delay)
            assert (await answer)["error"]["code"] == -32006
            await guess.close()
        assert server.statistics().auth_failures == 3
        right = await RawClient.connect_tcp(*tcp)
        assert "result" in await right.request("initialize", {"token": TOKEN})
        assert server.state.auth_failure_streak == 0
        await right.close()


async def test_answers_before_an_oversize_frame_are_delivered(tmp_path: Path) -> None:
    limits = Limits(max_message_bytes=1024)
    async with served(tmp_path, limits=limits) as (_, sock, _tcp):
        c = await RawClient.connect_unix(sock)
        from lapce_bridge.ipc.raw import frame

        c.send_bytes(
            frame({"jsonrpc": "2.0", "id": 1, "method": "ping"})
            + frame({"jsonrpc": "2.0", "id": 2, "method": "ping"})
            + b"Content-Length: 999999999\r\n\r\n"
            + b'{"jsonrpc": "2.0", "id": 3, "method": "fs/write", "params": {"content": "'
            + b"x" * 4096
        )
        got = [m for m in await _closed(c) if "method" not in m]
        assert [m.get("id") for m in got] == [1, 2, 3]
        assert [m["result"] for m in got[:2]] == [{"pong": True}] * 2
        assert got[2]["error"]["code"] == -32007


async def test_one_connection_cannot_hold_more_than_its_quota_of_requests(tmp_path: Path) -> None:
    limits = Limits(max_inflight=4)
    async with served(tmp_path, limits=limits) as (server, sock, _):
        greedy = await RawClient.connect_unix(sock)
        ids = [greedy.request_nowait("test/hang", {}) for _ in range(6)]
        refused = [await greedy.response(i) for i in ids[4:]]
        for answer in refused:
            assert answer["error"]["code"] == -32005
            assert answer["error"]["data"]["limit"] == 4
        assert server.statistics().inflight == 4
        other = await RawClient.connect_unix(sock)
        assert (await other.request("ping"))["result"] == {"pong": True}
        await other.close()
        await greedy.close()


async def test_a_batch_has_a_ceiling_and_long_batches_are_answered_whole(tmp_path: Path) -> None:
    async with served(tmp_path) as (_, sock, _tcp):
        c = await RawClient.connect_unix(sock)
        c.send([{"jsonrpc": "2.0", "id": i, "method": "ping"} for i in range(1001)])
        too_long = await _answer(c)
        assert too_long["error"]["code"] == -32600
        assert too_long["error"]["data"]["limit"] == 1000
        c.send([{"jsonrpc": "2.0", "id": i, "method": "ping"} for i in range(1000)])
        whole = await _answer(c)
        assert [a["id"] for a in whole] == list(range(1000))
        assert all(a["result"] == {"pong": True} for a in whole)
        await c.close()


async def test_a_closed_connection_is_freed_without_the_cycle_collector(tmp_path: Path) -> None:
    async with served(tmp_path) as (server, sock, _):
        c = await RawClient.connect_unix(sock)
        assert (await c.request("ping"))["result"] == {"pong": True}
        (conn,) = server.connections.values()
        ref = weakref.ref(conn)
        del conn
        gc.disable()
        try:
            await c.close()
            for _ in range(100):
                if ref() is None:
                    break
                await asyncio.sleep(0.01)
            assert ref() is None
        finally:
            gc.enable()


async def test_a_reused_idempotency_key_with_other_params_is_refused(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    async with App(workspace=ws, state_dir=tmp_path / "state") as app:
        server = BridgeServer(app)
        await server.listen_unix(tmp_path / "bridge.sock")
        c = await RawClient.connect_unix(tmp_path / "bridge.sock")
        try:
            first = await c.request(
                "fs/write", {"path": "a.txt", "content": "one", "idempotencyKey": "k1"}
            )
            assert first["result"]["size"] == 3
            same = await c.request(
                "fs/write", {"path": "a.txt", "content": "one", "idempotencyKey": "k1"}
            )
            assert same["result"] == first["result"]  # a repeat: the first result, run once
            other = await c.request(
                "fs/write", {"path": "a.txt", "content": "two!", "idempotencyKey": "k1"}
            )
            assert other["error"]["code"] == -32602
            assert "with other params" in other["error"]["message"]
            assert other["error"]["data"]["fault"] == "caller"
            assert (ws / "a.txt").read_text() == "one"  # nothing written, nothing lost silently
        finally:
            await c.close()
            await server.aclose()


async def test_the_metrics_endpoint_is_bounded(tmp_path: Path) -> None:
    import threading

    from lapce_bridge.core.metrics import MetricsRegistry
    from lapce_bridge.ipc.metrics_http import serve_metrics

    metrics = MetricsRegistry()
    metrics.observe("ping", 1e-5, True)
    threads = threading.active_count()
    port, stop = await serve_metrics(metrics, 0, max_clients=4, read_timeout=0.5)

    async def scrape() -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(b"GET /metrics HTTP/1.0\r\n\r\n")
            return await reader.read()
        except ConnectionResetError:
            return b""  # refused: closed before the request was read
        finally:
            writer.close()

    try:
        idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(4)]
        assert threading.active_count() == threads  # no thread per connection
        assert await scrape() == b""  # the fifth connection is closed at once
        for reader, _ in idle:  # those that send nothing are closed after the read timeout
            assert await asyncio.wait_for(reader.read(), 5) == b""
        for _, writer in idle:
            writer.close()
        answer = await scrape()
        assert answer.startswith(b"HTTP/1.0 200 OK")
        assert b'lapce_bridge_operation_duration_seconds_count{operation="ping"} 1.0' in answer
    finally:
        await stop()
