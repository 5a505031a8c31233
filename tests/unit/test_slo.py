"""Incidents and the SLO store, on virtual time: windows, burn rates, restarts, retention."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from lapce_bridge.core.events import EventBus
from lapce_bridge.core.incidents import IncidentEnded, IncidentLog, IncidentStarted
from lapce_bridge.slo import RETENTION_MINUTES, SloStore
from lapce_bridge.testing import FakeClock

HOUR = 3600.0
DAY = 24 * HOUR


def test_incidents_have_a_start_an_end_and_a_duration(clock: FakeClock) -> None:
    bus = EventBus()
    seen: list[object] = []
    bus.subscribe(IncidentStarted, seen.append)
    bus.subscribe(IncidentEnded, seen.append)
    log = IncidentLog(clock=clock, bus=bus)
    clock._now = 10.0
    first = log.open("cache_fallback", "fs/read", "disk read failed; served from cache")
    assert [i.id for i in log.open_incidents()] == [first]
    clock._now = 12.5
    ended = log.close(first, recovered=True)
    assert ended is not None
    assert (ended.started, ended.ended, ended.duration, ended.recovered) == (10.0, 12.5, 2.5, True)
    assert log.close(first, recovered=True) is None  # closing twice changes nothing
    whole = log.record("terminal", "t1", started=20.0, ended=19.0, recovered=True)
    assert whole.duration == 0.0  # clamped: never negative
    assert [type(e).__name__ for e in seen] == ["IncidentStarted", "IncidentEnded", "IncidentEnded"]
    assert [i.id for i in log.recent()] == [first, whole.id]
    assert log.recent(1) == [whole]
    wire = ended.to_wire()
    assert wire["durationMs"] == 2500.0
    assert wire["kind"] == "cache_fallback"


def test_open_incidents_are_bounded(clock: FakeClock) -> None:
    log = IncidentLog(clock=clock, max_open=2)
    ids = [log.open("watcher", f"w{i}") for i in range(3)]
    assert [i.id for i in log.open_incidents()] == ids[1:]
    abandoned = log.recent()[0]
    assert abandoned.id == ids[0]
    assert abandoned.recovered is False
    assert "abandoned" in abandoned.detail


def store(tmp_path: Path, clock: FakeClock) -> SloStore:
    slo = SloStore(tmp_path / "slo.sqlite3", wall=clock.now)
    assert slo.open() is None
    return slo


def test_error_rate_availability_and_burn_rates(tmp_path: Path, clock: FakeClock) -> None:
    clock._now = 1_000_000.0
    slo = store(tmp_path, clock)
    for i in range(1000):
        slo.record("fs/read", 0.001, ok=i % 100 != 0)  # 1 % fail: 10x the 0.1 % budget
    report = slo.report()
    assert report["errorRate"]["value"] == pytest.approx(0.01)
    assert report["errorRate"]["met"] is False
    availability = report["availability"]
    assert availability["value"] == pytest.approx(0.99)
    assert availability["calls"] == 1000
    assert availability["burnRate1h"] == pytest.approx(10.0)
    assert availability["budgetRemaining"] == 0.0
    # Two hours later, with good calls since: the hour window is clean, the day is not.
    slo.flush()
    clock._now += 2 * HOUR
    for _ in range(1000):
        slo.record("fs/read", 0.001, ok=True)
    report = slo.report()
    assert report["availability"]["burnRate1h"] == 0.0
    assert report["availability"]["burnRate6h"] == pytest.approx(5.0)
    assert report["errorRate"]["value"] == pytest.approx(0.005)
    # 25 hours after the failures the 24-hour error rate forgets them; 30 days still count them.
    slo.flush()
    clock._now += 23 * HOUR + 60
    report = slo.report()
    assert (report["errorRate"]["calls"], report["errorRate"]["failures"]) == (1000, 0)
    assert report["errorRate"]["met"] is True
    assert (report["availability"]["calls"], report["availability"]["failures"]) == (2000, 10)
    slo.close()


def test_latency_objective_counts_calls_over_100_ms_of_server_bound_operations(
    tmp_path: Path, clock: FakeClock
) -> None:
    slo = store(tmp_path, clock)
    for _ in range(99):
        slo.record("fs/read", 0.002, ok=True)
    slo.record("fs/read", 0.2, ok=True)
    slo.record("terminal/execute", 10.0, ok=True)  # `sleep 10`: the user's time, not ours
    latency = slo.report()["latencyP99"]
    assert (latency["calls"], latency["slower"], latency["met"]) == (100, 1, True)
    slo.record("fs/stat", 0.5, ok=True)  # 2 of 101 slower: p99 is over 100 ms now
    assert slo.report()["latencyP99"]["met"] is False
    slo.close()


def test_recovery_time_and_data_loss(tmp_path: Path, clock: FakeClock) -> None:
    slo = store(tmp_path, clock)
    log = IncidentLog(clock=clock)
    quick = log.record("terminal", "t1", started=0.0, ended=0.08, recovered=True)
    slow = log.record("watcher", "w1", started=1.0, ended=7.5, recovered=True)
    for incident in (quick, slow):
        slo.record_incident(incident, clock.now())
    recovery = slo.report()["recoveryTime"]
    assert (recovery["incidents"], recovery["slower"], recovery["met"]) == (2, 1, False)
    assert recovery["worstMs"] == pytest.approx(6500.0)
    slo.flush()
    assert slo.report()["recoveryTime"]["incidents"] == 2  # the same, now read from the file
    assert slo.report()["dataLoss"]["met"] is True
    slo.record_loss(3)
    loss = slo.report()["dataLoss"]
    assert (loss["items"], loss["met"]) == (3, False)
    slo.close()


def test_slos_survive_a_restart_and_a_crash_is_an_outage(tmp_path: Path, clock: FakeClock) -> None:
    clock._now = 5_000_000.0
    first = store(tmp_path, clock)
    for i in range(50):
        first.record("ping", 0.0001, ok=i != 0)
    first.close()  # a clean stop
    clock._now += 30.0
    second = SloStore(tmp_path / "slo.sqlite3", wall=clock.now)
    assert second.open() is None  # the previous server stopped cleanly: no outage
    report = second.report()
    assert report["availability"]["calls"] == 50
    assert report["availability"]["failures"] == 1
    assert report["since"] == 5_000_000.0
    second.record("ping", 0.0001, ok=True)
    second.flush()  # the heartbeat: written at every flush
    clock._now += 7.0
    # The process dies here: no close(). The next server finds the store still "running".
    third = SloStore(tmp_path / "slo.sqlite3", wall=clock.now)
    outage = third.open()
    assert outage is not None
    assert (outage.started, outage.ended) == (5_000_030.0, 5_000_037.0)
    assert third.report()["availability"]["calls"] == 51
    third.close()
    second.close()


def test_old_minutes_are_pruned(tmp_path: Path, clock: FakeClock) -> None:
    clock._now = 10 * 24 * HOUR
    slo = store(tmp_path, clock)
    slo.record("ping", 0.0001, ok=True)
    slo.flush()
    clock._now += (RETENTION_MINUTES + 2) * 60.0
    slo.record("ping", 0.0001, ok=True)
    slo.flush()
    rows = sqlite3.connect(tmp_path / "slo.sqlite3").execute("SELECT COUNT(*) FROM minutes")
    assert rows.fetchone() == (1,)
    assert slo.report()["availability"]["calls"] == 1
    slo.close()


async def test_flushes_on_the_clock_in_a_worker_thread(tmp_path: Path, clock: FakeClock) -> None:
    import asyncio

    slo = store(tmp_path, clock)
    slo.record("ping", 0.0001, ok=True)
    task = asyncio.create_task(slo.run(clock.sleep))
    await clock.wait_for_sleepers()
    await clock.advance(slo.flush_every)
    for _ in range(200):  # the write runs in a thread: wait for it to land
        rows = sqlite3.connect(tmp_path / "slo.sqlite3").execute("SELECT SUM(calls) FROM minutes")
        if rows.fetchone() == (1,):
            break
        await asyncio.sleep(0.01)
    else:
        raise AssertionError("the periodic flush wrote nothing")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert slo.report()["availability"]["calls"] == 1  # counted once, not twice
    slo.close()
