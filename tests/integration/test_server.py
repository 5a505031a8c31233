"""The JSON-RPC server over a real Unix socket: methods, faults, cancel, backpressure, batches."""

from __future__ import annotations

import asyncio
import os
import stat
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from lapce_bridge.app import App
from lapce_bridge.core.clock import Clock
from lapce_bridge.core.errors import FileSystemError
from lapce_bridge.core.health import HighFailureRate
from lapce_bridge.core.timeouts import TimeoutManager
from lapce_bridge.ipc.framing import encode
from lapce_bridge.ipc.raw import RawClient, frame
from lapce_bridge.ipc.server import BridgeServer
from lapce_bridge.rpc import CallContext, Method, Params, method
from lapce_bridge.testing import FakeClock
from lapce_bridge.testing.memory import MemoryServer


class Probe:
    """Test-only methods and what they observed."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.release = asyncio.Event()
        self.count = 0
        self.started = 0
        self.cancelled = 0
        self.closed_connections: list[int] = []
        self._started = asyncio.Condition()

    async def wait_started(self, n: int) -> None:
        async with self._started:
            await self._started.wait_for(lambda: self.started >= n)

    def methods(self) -> dict[str, Method]:
        def echo(params: Params, ctx: CallContext) -> Any:
            return params

        def count(params: Params, ctx: CallContext) -> int:
            self.count += 1
            return self.count

        async def wait(params: Params, ctx: CallContext) -> str:
            async with self._started:
                self.started += 1
                self._started.notify_all()
            try:
                await self.release.wait()
            except asyncio.CancelledError:
                self.cancelled += 1
                raise
            self.count += 1
            return "released"

        async def sleep(params: Params, ctx: CallContext) -> float:
            await self.clock.sleep(params["s"])
            return self.clock.now()

        def flood(params: Params, ctx: CallContext) -> int:
            chunk = "x" * params["size"]
            n = int(params["n"])
            for i in range(n):
                ctx.notify("test/chunk", {"i": i, "data": chunk})
            return n

        def blob(params: Params, ctx: CallContext) -> str:
            return "y" * int(params["size"])

        def fail(params: Params, ctx: CallContext) -> None:
            if params.get("kind") == "fs":
                raise FileSystemError("disk on fire", errno=5)
            raise RuntimeError("a bug")

        def unserialisable(params: Params, ctx: CallContext) -> object:
            return object()

        def watch_close(params: Params, ctx: CallContext) -> int:
            ctx.on_close(lambda: self.closed_connections.append(ctx.connection_id))
            return ctx.connection_id

        return {
            "test/echo": method(echo),
            "test/count": method(count),
            "test/wait": method(wait),
            "test/sleep": method(sleep),
            "test/flood": method(flood),
            "test/blob": method(blob),
            "test/fail": method(fail),
            "test/unserialisable": method(unserialisable),
            "test/watchClose": method(watch_close),
        }


class Served:
    def __init__(self, server: BridgeServer, app: App, probe: Probe, path: Path) -> None:
        self.server = server
        self.app = app
        self.probe = probe
        self.path = path

    async def client(self) -> RawClient:
        return await RawClient.connect_unix(self.path)


@asynccontextmanager
async def running(
    tmp_path: Path, *, clock: Clock | None = None, timeouts: TimeoutManager | None = None, **kw: Any
) -> AsyncIterator[Served]:
    from lapce_bridge.clock import SYSTEM_CLOCK

    clk = clock or SYSTEM_CLOCK
    probe = Probe(clk)
    path = tmp_path / "run" / "bridge.sock"
    async with App(
        services=False, clock=clk, extra_methods=probe.methods(), timeouts=timeouts
    ) as app:
        server = BridgeServer(app, **kw)
        await server.listen_unix(path)
        try:
            yield Served(server, app, probe, path)
        finally:
            await server.aclose()


async def test_initialize_ping_and_metrics(tmp_path: Path) -> None:
    async with running(tmp_path) as srv:
        c = await srv.client()
        init = (await c.request("initialize", {"protocolVersion": 1}))["result"]
        assert init["serverInfo"]["name"] == "lapce-bridge"
        assert init["protocolVersion"] == 1
        assert "ping" in init["capabilities"]["methods"]
        assert init["features"]["shell_integration"] is True
        assert (await c.request("ping")) == {"jsonrpc": "2.0", "id": 2, "result": {"pong": True}}
        metrics = (await c.request("metrics/get"))["result"]
        assert metrics["operations"]["ping"]["count"] == 1
        health = (await c.request("health/get"))["result"]
        assert health["status"] == "healthy"
        assert "ping" in health["operations"]
        await c.close()


async def test_errors_carry_code_and_classification(tmp_path: Path) -> None:
    async with running(tmp_path) as srv:
        c = await srv.client()
        unknown = await c.request("no/such")
        assert unknown["error"]["code"] == -32601
        assert unknown["error"]["data"]["category"] == "parser"
        assert unknown["error"]["data"]["method"] == "no/such"
        fs = await c.request("test/fail", {"kind": "fs"})
        assert fs["error"]["code"] == -32004
        assert fs["error"]["data"]["retryable"] is True
        bug = await c.request("test/fail", {})
        assert bug["error"]["code"] == -32603
        assert "a bug" in bug["error"]["message"]
        bad = await c.request("test/unserialisable")
        assert bad["error"]["code"] == -32603  # the server's bug, never the caller's params
        assert bad["error"]["data"]["fault"] == "server"
        as_list = await c.request("test/echo", [1, 2])
        assert as_list["error"]["code"] == -32602
        assert (await c.request("test/echo", {"a": 1}))["result"] == {"a": 1}
        ops = srv.app.metrics.snapshot()["operations"]
        assert ops["test/fail"]["errors"] == 2  # service failures count
        assert ops["test/unserialisable"]["errors"] == 1
        await c.close()


async def test_malformed_input_is_answered_and_the_connection_survives(tmp_path: Path) -> None:
    async with running(tmp_path) as srv:
        c = await srv.client()
        c.send_bytes(b"Content-Type: x\r\n\r\n")  # no Content-Length
        c.send_bytes(encode(b'{"jsonrpc":"2.0","id":1,"method":"ping"'))  # bad JSON
        c.send_bytes(encode(b'{"jsonrpc":"2.0","id":2.5,"method":"ping"}'))  # bad id
        c.send_bytes(encode(b'{"jsonrpc":"2.0","id":3,"method":"ping","params":"s"}'))
        c.send_bytes(encode(b'{"jsonrpc":"2.0","id":4}'))
        c.send_bytes(encode(b"\xff\xfe\x00"))
        c.send_bytes(b"garbage without any header at all")
        c.request_nowait("ping", msg_id=5)
        got = [await c.recv() for _ in range(8)]
        codes = [(m["id"], m.get("error", {}).get("code")) for m in got]
        assert codes == [
            (None, -32700),
            (None, -32700),
            (None, -32600),
            (3, -32600),
            (4, -32600),
            (None, -32700),
            (None, -32700),
            (5, None),
        ]
        assert got[-1]["result"] == {"pong": True}
        counters = (await c.request("metrics/get"))["result"]["counters"]
        assert counters["ipc.frameErrors"] == 2  # no Content-Length; the garbage run
        assert counters["ipc.invalidMessages"] == 5
        assert counters["ipc.connections"] == 1
        await c.close()


async def test_oversize_frame_fails_the_request_by_id_then_goes_on(tmp_path: Path) -> None:
    async with running(tmp_path, max_message_bytes=4096) as srv:
        c = await srv.client()
        body = b'{"jsonrpc":"2.0","id":77,"method":"test/echo","params":{"x":"' + b"z" * 6000
        body += b'"}}'
        c.send_bytes(encode(body))
        c.request_nowait("ping", msg_id=78)
        first, second = await c.recv(), await c.recv()
        assert first["id"] == 77
        assert first["error"]["code"] == -32007
        assert first["error"]["data"]["limit"] == 4096
        assert second == {"jsonrpc": "2.0", "id": 78, "result": {"pong": True}}
        # Far beyond what is worth skipping: the error, then the connection is closed.
        c.send_bytes(b'Content-Length: 999999999\r\n\r\n{"jsonrpc":"2.0","id":79,' + b" " * 300)
        fatal = await c.recv()
        assert fatal["id"] == 79
        assert fatal["error"]["code"] == -32007
        assert await c.at_eof()
        other = await srv.client()
        assert (await other.request("ping"))["result"] == {"pong": True}
        await other.close()


async def test_a_stalled_partial_frame_times_out_on_the_clock(tmp_path: Path) -> None:
    clock = FakeClock()
    async with running(tmp_path, clock=clock, frame_timeout=30.0) as srv:
        c = await srv.client()
        c.send_bytes(b'Content-Length: 100\r\n\r\n{"jsonrpc":')
        await c.drain()
        await clock.wait_for_sleepers(1)
        await clock.advance(29.0)
        assert srv.server.statistics().connections == 1
        await clock.advance(1.0)
        stalled = await c.recv()
        assert stalled["error"]["code"] == -32700
        assert "no data for 30 s" in stalled["error"]["message"]
        assert await c.at_eof()
        # The app's own periodic health re-check and SLO writes also sleep on this clock.
        own = {srv.app.health_interval, srv.app.slo.flush_every}
        frame_waits = [s for s in clock.sleeps if s not in own]
        assert frame_waits[0] == 30.0
        assert srv.server.statistics().stalled_frames == 1


async def test_cancel_by_id_and_by_key(tmp_path: Path) -> None:
    async with running(tmp_path) as srv:
        c = await srv.client()
        c.request_nowait("test/wait", {}, msg_id=10)
        c.request_nowait("test/wait", {"idempotencyKey": "k-1"}, msg_id=11)
        await srv.probe.wait_started(2)
        c.notify("$/cancelRequest", {"id": 10})
        c.notify("$/cancelRequest", {"idempotencyKey": "k-1"})
        c.notify("$/cancelRequest", {"id": 999})  # unknown: ignored
        answers = {m["id"]: m for m in [await c.recv(), await c.recv()]}
        assert answers[10]["error"]["code"] == -32800
        assert answers[10]["error"]["data"]["category"] == "user_cancelled"
        assert answers[11]["error"]["code"] == -32800
        assert srv.probe.cancelled == 2
        # The cancelled keyed request's outcome is recorded: a repeat is not run again.
        again = await c.request("test/wait", {"idempotencyKey": "k-1"})
        assert again["error"]["code"] == -32800
        assert srv.probe.started == 2
        await c.close()


async def test_async_handlers_time_out_on_the_clock(tmp_path: Path) -> None:
    clock = FakeClock()
    timeouts = TimeoutManager({"test/sleep": 5.0}, clock=clock)
    async with running(tmp_path, clock=clock, timeouts=timeouts) as srv:
        c = await srv.client()
        c.request_nowait("test/sleep", {"s": 60}, msg_id=1)
        c.request_nowait("test/sleep", {"s": 2}, msg_id=2)
        await c.drain()
        await clock.wait_for_sleepers(4)  # two sleeps and two timeouts
        await clock.advance(5.0)
        answers = {m["id"]: m for m in [await c.recv(), await c.recv()]}
        assert answers[2]["result"] == 2.0
        assert answers[1]["error"]["code"] == -32001
        assert answers[1]["error"]["data"]["operation"] == "test/sleep"
        assert answers[1]["error"]["data"]["seconds"] == 5.0
        assert timeouts.statistics().expired == {"test/sleep": 1}  # counted as expired
        await c.close()


async def test_a_limit_runs_on_its_own_clock_not_the_servers() -> None:
    """The dispatcher bounds a handler on its TimeoutManager's clock: a server on virtual
    time that jumps ahead while the work waits for a thread (as an autojumping test clock
    does) cannot expire a limit kept on real time."""

    async def in_a_thread(params: Params, ctx: CallContext) -> str:
        await asyncio.get_running_loop().run_in_executor(None, time.sleep, 0.05)
        return "done"

    server = MemoryServer(
        {"test/thread": method(in_a_thread)},
        clock=FakeClock(autojump=True),
        timeouts=TimeoutManager({"test/thread": 5.0}),
    )
    client = server.connect()
    assert await client.request("test/thread") == "done"
    assert server.state.timeouts.statistics().expired == {}


async def test_a_slow_handler_does_not_block_ping_on_another_connection(tmp_path: Path) -> None:
    async with running(tmp_path) as srv:
        slow = await srv.client()
        slow.request_nowait("test/wait", {}, msg_id=100)
        fast = await srv.client()
        for _ in range(20):
            assert (await fast.request("ping"))["result"] == {"pong": True}
        # And on the same connection: a later cheap request overtakes the slow one.
        assert (await slow.request("ping"))["result"] == {"pong": True}
        srv.probe.release.set()
        assert (await slow.response(100))["result"] == "released"
        await slow.close()
        await fast.close()


async def test_batches(tmp_path: Path) -> None:
    async with running(tmp_path) as srv:
        c = await srv.client()
        c.send(
            [
                {"jsonrpc": "2.0", "id": 1, "method": "ping"},
                {"jsonrpc": "2.0", "method": "test/count"},
                {"foo": "boo"},
                {"jsonrpc": "2.0", "id": 2, "method": "nope"},
                {"jsonrpc": "2.0", "id": 3, "method": "test/sleep", "params": {"s": 0}},
            ]
        )
        batch = await c.recv()
        assert isinstance(batch, list)
        assert [(m["id"], "result" in m) for m in batch] == [
            (1, True),
            (None, False),
            (2, False),
            (3, True),
        ]
        assert srv.probe.count == 1  # the notification ran, unanswered
        c.send([])
        empty = await c.recv()
        assert empty["error"]["code"] == -32600
        c.send([{"jsonrpc": "2.0", "method": "test/count"}] * 2)  # notifications only
        assert (await c.request("ping"))["id"] == 1  # the next message is the ping's answer
        assert srv.probe.count == 3
        await c.close()


async def test_a_batch_in_flight_is_cancelled_with_its_connection(tmp_path: Path) -> None:
    async with running(tmp_path) as srv:
        c = await srv.client()
        c.send(
            [
                {"jsonrpc": "2.0", "id": 1, "method": "test/wait"},
                {"jsonrpc": "2.0", "id": 2, "method": "ping"},
            ]
        )
        await srv.probe.wait_started(1)
        await c.close()
        for _ in range(200):
            if srv.probe.cancelled:
                break
            await asyncio.sleep(0.01)
        assert srv.probe.cancelled == 1
        assert srv.server.statistics().inflight == 0


async def test_idempotent_requests_run_once_and_share_the_outcome(tmp_path: Path) -> None:
    async with running(tmp_path) as srv:
        c = await srv.client()
        first = await c.request("test/count", {"idempotencyKey": "a"})
        second = await c.request("test/count", {"idempotencyKey": "a"})
        assert first["result"] == second["result"] == 1
        assert srv.probe.count == 1
        wrong = await c.request("test/echo", {"idempotencyKey": "a"})
        assert wrong["error"]["code"] == -32602
        bad_key = await c.request("test/count", {"idempotencyKey": 5})
        assert bad_key["error"]["code"] == -32602
        # A repeat while the first still runs waits for it, even from another connection.
        c.request_nowait("test/wait", {"idempotencyKey": "w"}, msg_id=50)
        await srv.probe.wait_started(1)
        other = await srv.client()
        other.request_nowait("test/wait", {"idempotencyKey": "w"}, msg_id=60)
        await other.drain()
        await asyncio.sleep(0.01)
        srv.probe.release.set()
        assert (await c.response(50))["result"] == "released"
        assert (await other.response(60))["result"] == "released"
        assert srv.probe.started == 1
        await c.close()
        await other.close()


async def test_keyed_work_survives_its_connection_dropping(tmp_path: Path) -> None:
    async with running(tmp_path) as srv:
        c = await srv.client()
        c.request_nowait("test/wait", {"idempotencyKey": "drop"}, msg_id=1)
        await srv.probe.wait_started(1)
        await c.close()
        srv.probe.release.set()
        c2 = await srv.client()
        retry = await c2.request("test/wait", {"idempotencyKey": "drop"})
        assert retry["result"] == "released"
        assert srv.probe.started == 1
        assert srv.probe.count == 1
        # Its answer had nowhere to go: not written, so not counted as a message lost.
        assert srv.server.statistics().dropped_messages == 0
        await c2.close()


async def test_a_keyed_request_cancelled_by_id_is_answered_and_recorded(tmp_path: Path) -> None:
    async with running(tmp_path) as srv:
        c = await srv.client()
        c.request_nowait("test/wait", {"idempotencyKey": "by-id"}, msg_id=7)
        await srv.probe.wait_started(1)
        c.notify("$/cancelRequest", {"id": 7})
        answer = await c.response(7)
        assert answer["error"]["code"] == -32800
        assert srv.probe.cancelled == 1
        again = await c.request("test/wait", {"idempotencyKey": "by-id"})
        assert again["error"]["code"] == -32800  # the recorded outcome, not a second run
        assert srv.probe.started == 1
        # The connection goes on: the next request on it runs and is answered.
        assert (await c.request("ping"))["result"] == {"pong": True}
        await c.close()


async def test_client_that_reads_nothing_is_paused_then_disconnected(tmp_path: Path) -> None:
    async with running(tmp_path, write_buffer_high=64 * 1024, write_buffer_limit=1 << 20) as srv:
        reader = await srv.client()
        # Answers pile up unread: the server stops reading this client, buffering stays bounded.
        for i in range(200):
            reader.request_nowait("test/blob", {"size": 32 * 1024}, msg_id=i)
        await reader.drain()
        await asyncio.sleep(0.2)
        assert srv.server.statistics().slow_disconnects == 0
        got = [await reader.recv() for _ in range(200)]  # reading resumes: nothing lost
        assert [m["id"] for m in got] == list(range(200))
        # Notifications do not stop for a paused reader: past the hard bound it is cut off.
        flood = await srv.client()
        flood.request_nowait("test/flood", {"n": 400, "size": 16 * 1024})
        await flood.drain()
        healthy = await srv.client()
        for _ in range(50):
            if srv.server.statistics().slow_disconnects:
                break
            await asyncio.sleep(0.02)
        assert srv.server.statistics().slow_disconnects == 1
        assert (await healthy.request("ping"))["result"] == {"pong": True}
        await healthy.close()
        await reader.close()
        await flood.close()


async def test_thousands_of_connects_and_disconnects(tmp_path: Path) -> None:
    async with running(tmp_path) as srv:
        for i in range(1500):
            c = await srv.client()
            if i % 3 == 0:
                c.send_bytes(b"Content-Length: 50\r\n\r\n{")  # and vanish mid-frame
            await c.close()
        for _ in range(100):
            if srv.server.statistics().connections == 0:
                break
            await asyncio.sleep(0.01)
        assert srv.server.statistics().connections == 0
        c = await srv.client()
        assert (await c.request("ping"))["result"] == {"pong": True}
        await c.close()


async def test_notifications_reach_their_connection_and_broadcasts_everyone(
    tmp_path: Path,
) -> None:
    async with running(tmp_path) as srv:
        a, b = await srv.client(), await srv.client()
        a.request_nowait("test/flood", {"n": 2, "size": 3}, msg_id=1)
        first, second, answer = await a.recv(), await a.recv(), await a.recv()
        assert [first["params"]["i"], second["params"]["i"]] == [0, 1]
        assert answer == {"jsonrpc": "2.0", "id": 1, "result": 2}
        await b.request("ping")  # b saw none of a's notifications: its next message is this
        srv.app.broadcast("terminal/exited", {"terminalId": "t1", "exitCode": 0})
        srv.app.bus.publish(HighFailureRate("fs/read", "too many failures", 0.5, 20))
        for c in (a, b):
            exited, alert = await c.recv(), await c.recv()
            assert exited["method"] == "terminal/exited"
            assert alert["method"] == "health/alert"
            assert alert["params"] == {
                "kind": "HighFailureRate",
                "operation": "fs/read",
                "detail": "too many failures",
            }
        cid = (await a.request("test/watchClose"))["result"]
        await a.close()
        for _ in range(100):
            if srv.probe.closed_connections:
                break
            await asyncio.sleep(0.01)
        assert srv.probe.closed_connections == [cid]
        await b.close()


async def test_shutdown_request_drains_in_flight_work_and_removes_the_socket(
    tmp_path: Path,
) -> None:
    async with running(tmp_path, shutdown_grace=5.0) as srv:
        c = await srv.client()
        c.request_nowait("test/wait", {}, msg_id=100)
        await srv.probe.wait_started(1)
        assert (await c.request("shutdown")) == {"jsonrpc": "2.0", "id": 1, "result": None}
        await asyncio.wait_for(srv.server.wait_for_shutdown(), 5)
        closing = asyncio.create_task(srv.server.aclose())
        await asyncio.sleep(0.05)
        assert not srv.path.exists()  # no new clients while draining
        late = await c.request("ping")
        assert late["error"]["code"] == -32002
        srv.probe.release.set()
        assert (await c.response(100))["result"] == "released"  # finished, not cut off
        await asyncio.wait_for(closing, 5)
        assert await c.at_eof()


async def test_shutdown_grace_cancels_what_is_left(tmp_path: Path) -> None:
    clock = FakeClock()
    async with running(tmp_path, clock=clock, shutdown_grace=2.0) as srv:
        c = await srv.client()
        c.request_nowait("test/wait", {}, msg_id=1)
        await srv.probe.wait_started(1)
        closing = asyncio.create_task(srv.server.aclose())
        await clock.wait_for_sleepers(1)
        await clock.advance(2.0)
        answer = await c.recv()
        assert answer["id"] == 1
        assert answer["error"]["code"] == -32002
        assert "shutting down" in answer["error"]["message"]
        await asyncio.wait_for(closing, 5)
        assert srv.probe.cancelled == 1
        assert await c.at_eof()


async def test_socket_is_private_and_a_second_server_is_refused(tmp_path: Path) -> None:
    from lapce_bridge.ipc.paths import ServerAlreadyRunning

    async with running(tmp_path) as srv:
        assert stat.S_IMODE(srv.path.stat().st_mode) == 0o600
        assert stat.S_IMODE(srv.path.parent.stat().st_mode) == 0o700
        async with App(services=False) as app:
            second = BridgeServer(app)
            with pytest.raises(ServerAlreadyRunning, match="already listening"):
                await second.listen_unix(srv.path)
            await second.aclose()
        c = await srv.client()  # the first one is untouched
        assert (await c.request("ping"))["result"] == {"pong": True}
        await c.close()


async def test_a_stale_socket_is_replaced_and_a_regular_file_is_not(tmp_path: Path) -> None:
    import socket

    from lapce_bridge.core.errors import PermissionDenied

    path = tmp_path / "run" / "bridge.sock"
    path.parent.mkdir(mode=0o700)
    dead = socket.socket(socket.AF_UNIX)
    dead.bind(str(path))
    dead.close()  # the file stays: a crashed server's leftover
    async with running(tmp_path) as srv:
        c = await srv.client()
        assert (await c.request("ping"))["result"] == {"pong": True}
        await c.close()
    assert not path.exists()
    path.write_text("not a socket")
    async with App(services=False) as app:
        server = BridgeServer(app)
        with pytest.raises(PermissionDenied, match="not a socket"):
            await server.listen_unix(path)
        await server.aclose()
    assert path.read_text() == "not a socket"


async def test_tcp_requires_the_token_first(tmp_path: Path) -> None:
    from lapce_bridge.core.errors import PermissionDenied

    async with App(services=False) as app:
        server = BridgeServer(app, token="s3cret")
        with pytest.raises(PermissionDenied, match="non-loopback"):
            await server.listen_tcp("0.0.0.0", 0)
        host, port = await server.listen_tcp("127.0.0.1", 0)
        good = await RawClient.connect_tcp(host, port)
        init = await good.request("initialize", {"token": "s3cret"})
        assert init["result"]["protocolVersion"] == 1
        assert (await good.request("ping"))["result"] == {"pong": True}
        for first in (
            ("initialize", {"token": "wrong"}),
            ("ping", None),
            ("initialize", None),
        ):
            bad = await RawClient.connect_tcp(host, port)
            denied = await bad.request(*first)
            assert denied["error"]["code"] == -32006
            assert await bad.at_eof()
        assert server.statistics().auth_failures == 3
        await good.close()
        await server.aclose()
        no_token = BridgeServer(app)
        with pytest.raises(PermissionDenied, match="token"):
            await no_token.listen_tcp("127.0.0.1", 0)
        await no_token.aclose()


def test_frame_helper_matches_the_codec() -> None:
    assert frame({"a": 1}) == b'Content-Length: 7\r\n\r\n{"a":1}'
    assert os.sep == "/"


async def test_async_work_is_refused_under_memory_pressure(tmp_path: Path) -> None:
    from lapce_bridge.core.pressure import ResourceSample
    from lapce_bridge.resources import ResourceManager

    async with running(tmp_path) as srv:
        manager = ResourceManager(budget_bytes=1000, sampler=lambda: ResourceSample(5000))
        await manager.check()
        assert manager.statistics().throttled
        srv.app.resources = manager
        c = await srv.client()
        refused = await c.request("test/sleep", {"s": 0})
        assert refused["error"]["code"] == -32005
        assert "memory pressure" in refused["error"]["message"]
        assert (await c.request("ping"))["result"] == {"pong": True}  # cheap work still served
        health = (await c.request("health/get"))["result"]
        assert health["pressure"] == 100.0
        assert health["status"] == "unhealthy"
        await c.close()


async def test_random_garbage_never_takes_the_server_down(tmp_path: Path) -> None:
    import random

    rng = random.Random(1234)
    pieces = [
        b"Content-Length: ",
        b"\r\n\r\n",
        b"Content-Length: 5\r\n\r\n",
        b'{"jsonrpc":"2.0","id":1,"method":"ping"}',
        b'{"jsonrpc":"2.0","method":"$/cancelRequest","params":{"id":1}}',
        b"[{},[],null]",
        b"\xff\xfe\x00",
        encode(b'{"jsonrpc":"2.0","id":"x","method":"test/echo","params":[]}'),
        encode(b'[{"jsonrpc":"2.0","id":9,"method":"ping"},{"jsonrpc":"2.0"}]'),
    ]
    async with running(tmp_path, max_message_bytes=4096) as srv:
        watcher = await srv.client()
        for _ in range(150):
            c = await srv.client()
            blob = b"".join(
                rng.choice(pieces) if rng.random() < 0.7 else rng.randbytes(rng.randrange(64))
                for _ in range(rng.randrange(1, 12))
            )
            c.send_bytes(blob)
            await c.drain()
            await c.close()
        assert (await watcher.request("ping"))["result"] == {"pong": True}
        for _ in range(100):
            if srv.server.statistics().connections == 1:
                break
            await asyncio.sleep(0.01)
        assert srv.server.statistics().connections == 1  # every fuzzed connection cleaned up
        await watcher.close()
