"""BridgeClient against an in-process server on a real Unix socket; time on a FakeClock."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from lapce_bridge.app import App
from lapce_bridge.core.breaker import CircuitBreakerConfig
from lapce_bridge.core.clock import Clock
from lapce_bridge.core.errors import (
    BridgeTimeout,
    ConnectionLost,
    ErrorCategory,
    ErrorSeverity,
    FileSystemError,
    MethodNotFound,
    ResourceExhausted,
    Unavailable,
)
from lapce_bridge.core.matrix import DEFAULT_MATRIX
from lapce_bridge.core.retry import RetryPolicy
from lapce_bridge.ipc.client import BridgeClient
from lapce_bridge.ipc.journal import IdempotencyJournal
from lapce_bridge.ipc.server import BridgeServer
from lapce_bridge.ipc.spawn import ServerSupervisor
from lapce_bridge.rpc import CallContext, Method, Params, method
from lapce_bridge.testing import FakeClock


class Ledger:
    """Side effects a test can count: each call appends its value."""

    def __init__(self) -> None:
        self.lines: list[Any] = []
        self.gate = asyncio.Event()
        self.gate.set()

    def methods(self) -> dict[str, Method]:
        def append(params: Params, ctx: CallContext) -> int:
            self.lines.append(params["value"])
            return len(self.lines)

        async def gated(params: Params, ctx: CallContext) -> int:
            await self.gate.wait()
            self.lines.append(params["value"])
            return len(self.lines)

        def fail(params: Params, ctx: CallContext) -> None:
            raise FileSystemError("no such file", errno=2, retryable=False)

        def stream(params: Params, ctx: CallContext) -> int:
            for i in range(3):
                ctx.notify("test/tick", {"i": i})
            return 3

        return {
            "test/append": method(append),
            "test/gated": method(gated),
            "test/fail": method(fail),
            "test/stream": method(stream),
        }


@asynccontextmanager
async def server_at(
    path: Path, ledger: Ledger, journal: Path | None = None, clock: Clock | None = None
) -> AsyncIterator[BridgeServer]:
    async with App(services=False, extra_methods=ledger.methods(), clock=clock) as app:
        server = BridgeServer(app, journal=IdempotencyJournal(journal))
        await server.listen_unix(path)
        try:
            yield server
        finally:
            await server.aclose()


def no_jitter(clock: Clock, attempts: int | None = None) -> RetryPolicy:
    return RetryPolicy(
        max_attempts=attempts,
        initial_delay=0.01,
        max_delay=0.08,
        jitter=0.0,
        clock=clock,
        rng=random.Random(0),
    )


async def test_request_notify_and_notifications(tmp_path: Path) -> None:
    path = tmp_path / "s.sock"
    ledger = Ledger()
    async with server_at(path, ledger), BridgeClient(path) as client:
        assert client.server_info is not None
        assert client.server_info["protocolVersion"] == 1
        assert await client.request("ping") == {"pong": True}
        ticks: list[Any] = []
        client.on_notification("test/tick", ticks.append)
        assert await client.request("test/stream") == 3
        assert ticks == [{"i": 0}, {"i": 1}, {"i": 2}]
        with pytest.raises(FileSystemError) as info:
            await client.request("test/fail")
        assert info.value.classification.retryable is False
        with pytest.raises(MethodNotFound):
            await client.request("no/such")
        client.notify("test/append", {"value": "n"})
        assert await client.request("test/append", {"value": "r"}) == 2


async def test_request_timeout_cancels_on_the_server_when_asked(tmp_path: Path) -> None:
    path = tmp_path / "s.sock"
    ledger = Ledger()
    ledger.gate.clear()
    clock = FakeClock()
    async with server_at(path, ledger), BridgeClient(path, clock=clock) as client:
        call = asyncio.create_task(
            client.request("test/gated", {"value": 1}, timeout=2.0, cancel=True)
        )
        await clock.wait_for_sleepers(1)
        await clock.advance(2.0)
        with pytest.raises(BridgeTimeout, match="within 2 s"):
            await call
        ledger.gate.set()
        assert await client.request("test/append", {"value": 2}) == 1  # the gated one was cancelled
        assert ledger.lines == [2]


async def test_a_client_timeout_leaves_the_work_running(tmp_path: Path) -> None:
    path = tmp_path / "s.sock"
    ledger = Ledger()
    ledger.gate.clear()
    clock = FakeClock()
    async with server_at(path, ledger), BridgeClient(path, clock=clock) as client:
        assert client.request_timeout is None  # never cut short by default
        call = asyncio.create_task(client.request("test/gated", {"value": 1}, timeout=2.0))
        await clock.wait_for_sleepers(1)
        await clock.advance(2.0)
        with pytest.raises(BridgeTimeout, match="still running") as info:
            await call
        assert info.value.data["cancelled"] is False
        ledger.gate.set()
        assert await client.request("test/append", {"value": 2}) == 2  # the gated one ran
        assert ledger.lines == [1, 2]


async def test_plain_requests_fail_fast_when_the_connection_drops(tmp_path: Path) -> None:
    path = tmp_path / "s.sock"
    ledger = Ledger()
    ledger.gate.clear()
    client = BridgeClient(path)
    async with server_at(path, ledger) as server:
        await client.connect()
        call = asyncio.create_task(client.request("test/gated", {"value": 1}))
        await asyncio.sleep(0.02)
        for conn in list(server.connections.values()):
            conn.abort()
        with pytest.raises(ConnectionLost):
            await call
    with pytest.raises(ConnectionLost):
        await client.request("ping")
    await client.close()


async def test_recovery_waits_out_the_backoff_schedule_then_delivers_in_order(
    tmp_path: Path,
) -> None:
    path = tmp_path / "s.sock"
    clock = FakeClock()
    ledger = Ledger()
    client = BridgeClient(path, clock=clock, retry=no_jitter(clock))
    sends = [
        asyncio.create_task(client.send_with_recovery("test/append", {"value": i}))
        for i in range(5)
    ]
    # No server yet: one immediate attempt, then the schedule 0.01, 0.02, 0.04, 0.08, 0.08...
    await clock.wait_for_sleepers(1)
    await clock.advance(0.01 + 0.02 + 0.04)
    assert clock.sleeps[:3] == [0.01, 0.02, 0.04]
    assert len(client.outbox) == 5
    async with server_at(path, ledger):
        await clock.advance(0.08)
        results = await asyncio.gather(*sends)
    assert results == [1, 2, 3, 4, 5]
    assert ledger.lines == [0, 1, 2, 3, 4]
    assert len(client.outbox) == 0
    assert client.reconnects == 1
    await client.close()


async def test_a_full_outbox_refuses_and_giving_up_fails_every_waiting_entry(
    tmp_path: Path,
) -> None:
    clock = FakeClock()
    # Reconnecting is the network/critical row's: 2 retries, on the client's backoff.
    row = DEFAULT_MATRIX.lookup(ErrorCategory.NETWORK, ErrorSeverity.CRITICAL)
    client = BridgeClient(
        tmp_path / "nobody.sock",
        clock=clock,
        retry=no_jitter(clock),
        outbox_limit=2,
        matrix=DEFAULT_MATRIX.with_row(replace(row, max_retries=2)),
        outage_grace=0.0,
    )
    first = asyncio.create_task(client.send_with_recovery("test/append", {"value": 1}))
    second = asyncio.create_task(client.send_with_recovery("test/append", {"value": 2}))
    await clock.wait_for_sleepers(1)
    with pytest.raises(ResourceExhausted):
        await client.send_with_recovery("test/append", {"value": 3})
    await clock.advance(1.0)
    for task in (first, second):
        with pytest.raises(ConnectionLost, match="gave up reconnecting"):
            await task
    assert clock.sleeps == [0.01, 0.02]
    assert len(client.outbox) == 0
    await client.close()


async def test_the_breaker_opens_on_failed_connects_and_fails_new_sends_fast(
    tmp_path: Path,
) -> None:
    clock = FakeClock()
    config = CircuitBreakerConfig(
        sliding_window_size=4, minimum_number_of_calls=4, wait_duration_in_open=5.0
    )
    client = BridgeClient(
        tmp_path / "nobody.sock", clock=clock, retry=no_jitter(clock), breaker_config=config
    )
    waiting = asyncio.create_task(client.send_with_recovery("test/append", {"value": 1}))
    await clock.wait_for_sleepers(1)
    await clock.advance(1.9)  # within the outage grace: a restart may take this long
    assert client.breaker.state.value == "closed"
    await clock.advance(0.5)  # attempts at 2.07, 2.15, 2.23, 2.31: past the grace, they count
    assert client.breaker.state.value == "open"
    with pytest.raises(Unavailable, match="ipc-client"):
        await client.send_with_recovery("test/append", {"value": 2})
    assert not waiting.done()  # accepted before the trip: still queued, not dropped
    ledger = Ledger()
    async with server_at(tmp_path / "nobody.sock", ledger):
        await clock.advance(5.0)  # the open wait passes; a half-open trial connect succeeds
        assert await waiting == 1
    assert ledger.lines == [1]
    await client.close()


async def test_send_with_recovery_timeout_abandons_the_entry(tmp_path: Path) -> None:
    clock = FakeClock()
    client = BridgeClient(tmp_path / "nobody.sock", clock=clock, retry=no_jitter(clock))
    task = asyncio.create_task(client.send_with_recovery("x", {}, timeout=1.0))
    await clock.wait_for_sleepers(2)
    await clock.advance(1.0)
    with pytest.raises(BridgeTimeout):
        await task
    assert len(client.outbox) == 0
    await client.close()


async def test_every_request_carries_an_idempotency_key_and_runs_once(tmp_path: Path) -> None:
    path = tmp_path / "s.sock"
    ledger = Ledger()
    async with server_at(path, ledger), BridgeClient(path) as client:
        assert await client.send_with_recovery("test/append", {"value": "a"}) == 1
        key = "fixed-key"
        first = await client.send_with_recovery(
            "test/append", {"value": "b", "idempotencyKey": key}
        )
        again = await client.send_with_recovery(
            "test/append", {"value": "b", "idempotencyKey": key}
        )
        assert first == again == 2
        assert ledger.lines == ["a", "b"]
        with pytest.raises(FileSystemError):
            await client.send_with_recovery("test/fail")


async def test_a_dropped_connection_resends_and_nothing_runs_twice(tmp_path: Path) -> None:
    path = tmp_path / "s.sock"
    ledger = Ledger()
    ledger.gate.clear()
    async with server_at(path, ledger) as server:
        client = await BridgeClient(path).connect()
        gated = asyncio.create_task(client.send_with_recovery("test/gated", {"value": "g"}))
        await asyncio.sleep(0.02)
        for conn in list(server.connections.values()):
            conn.abort()  # the answer to the gated request can no longer arrive on it
        await asyncio.sleep(0.02)
        ledger.gate.set()  # it finishes on the server while the client reconnects
        assert await asyncio.wait_for(gated, 5) == 1
        assert await client.send_with_recovery("test/append", {"value": "after"}) == 2
        assert ledger.lines == ["g", "after"]
        assert client.reconnects == 1
        await client.close()


async def test_reconnect_listeners_run_once_the_queue_went_again(tmp_path: Path) -> None:
    path = tmp_path / "s.sock"
    ledger = Ledger()
    ledger.gate.clear()
    seen: list[tuple[bool, int]] = []
    async with server_at(path, ledger) as server:
        client = await BridgeClient(path).connect()
        stop = client.on_reconnected(
            lambda: seen.append(
                (client.connected, sum(e.sent_id is None for e in client.outbox.pending()))
            )
        )
        gated = asyncio.create_task(client.send_with_recovery("test/gated", {"value": "g"}))
        await asyncio.sleep(0.02)
        for conn in list(server.connections.values()):
            conn.abort()
        ledger.gate.set()
        assert await asyncio.wait_for(gated, 5) == 1
        assert seen == [(True, 0)]  # connected again, nothing left unsent
        stop()
        for conn in list(server.connections.values()):
            conn.abort()
        assert await client.send_with_recovery("test/append", {"value": "x"}) == 2
        assert seen == [(True, 0)]
        assert client.reconnects == 2
        await client.close()


async def test_a_durable_outbox_delivers_after_a_client_restart(tmp_path: Path) -> None:
    path = tmp_path / "s.sock"
    box = tmp_path / "outbox.sqlite3"
    clock = FakeClock()
    first = BridgeClient(path, clock=clock, retry=no_jitter(clock), durable_outbox=box)
    pending = asyncio.create_task(first.send_with_recovery("test/append", {"value": "kept"}))
    await clock.wait_for_sleepers(1)
    await first.close()  # the client goes away with the request undelivered
    with pytest.raises(ConnectionLost):
        await pending
    ledger = Ledger()
    async with server_at(path, ledger):
        second = BridgeClient(path, durable_outbox=box)
        await second.connect()
        assert len(second.recovered) == 1
        (result,) = await asyncio.gather(*second.recovered.values())
        assert result == 1
        assert ledger.lines == ["kept"]
        await second.close()
    third = BridgeClient(path, durable_outbox=box)
    assert third.outbox.recovered() == []  # delivered: nothing left on disk
    await third.close()


async def test_a_supervised_server_starting_is_polled_at_the_first_delay(tmp_path: Path) -> None:
    """While the client's own server starts (a real process that has not bound its socket
    yet), reconnecting polls at the first delay: a backoff would find the socket late."""
    slow = tmp_path / "slow-server"
    slow.write_text("#!/bin/sh\nexec sleep 60\n")
    slow.chmod(0o755)
    clock = FakeClock()
    supervisor = ServerSupervisor(tmp_path / "s.sock", python=str(slow), clock=clock, standby=False)
    client = BridgeClient(
        tmp_path / "s.sock", clock=clock, retry=no_jitter(clock), supervisor=supervisor
    )
    send = asyncio.create_task(client.send_with_recovery("test/append", {"value": 1}))
    for _ in range(5):
        await clock.wait_for_sleepers(1)
        await clock.advance(0.01)
    assert supervisor.starting()
    assert clock.sleeps[:5] == [0.01] * 5  # not the schedule's 0.01, 0.02, 0.04, 0.08, 0.08
    send.cancel()
    await client.close()
    await supervisor.stop(grace=0)
