from __future__ import annotations

import gc

import psutil
import pytest

from lapce_bridge.core.errors import ResourceExhausted
from lapce_bridge.core.pressure import ResourceSample
from lapce_bridge.resources import Relief, ResourceManager, psutil_sampler
from lapce_bridge.testing import FakeClock


class Dial:
    """A sampler whose reading the test sets, for the policy-driving tests."""

    def __init__(self) -> None:
        self.rss = 0

    def __call__(self) -> ResourceSample:
        return ResourceSample(self.rss, 0.0)


async def test_actions_reach_registered_reliefs(clock: FakeClock) -> None:
    dial = Dial()
    calls: list[str] = []

    async def reap() -> int:
        calls.append("reap")
        return 2

    def trim(fraction: float) -> int:
        calls.append(f"trim {fraction}")
        return 100

    def clear() -> int:
        calls.append("clear")
        return 500

    def spools() -> int:
        calls.append("spools")
        return 7

    relief = Relief("cache", trim_cache=trim, clear_cache=clear, trim_spools=spools, reap_idle=reap)
    degraded: list[str] = []
    mgr = ResourceManager(budget_bytes=100, clock=clock, sampler=dial, degrade=degraded.append)
    mgr.register(relief)
    dial.rss = 10
    await mgr.check()
    assert calls == []
    dial.rss = 75
    await mgr.check()
    assert calls == ["trim 0.5", "spools"]
    dial.rss = 99
    calls.clear()
    await mgr.check()
    assert calls == ["clear", "spools", "reap"]
    assert degraded == ["memory pressure 99"]
    stats = mgr.statistics()
    assert stats.freed == {
        "cache.trim_cache": 100,
        "cache.trim_spools": 14,
        "cache.clear_cache": 500,
        "cache.reap_idle_terminals": 2,
    }
    with pytest.raises(ResourceExhausted, match="terminal/create"):
        mgr.admit("terminal/create")


async def test_runs_on_the_clock_interval(clock: FakeClock) -> None:
    dial = Dial()
    mgr = ResourceManager(budget_bytes=100, clock=clock, sampler=dial, interval=2.0)
    async with mgr:
        await clock.wait_for_sleepers()
        assert mgr.statistics().samples == 1
        await clock.advance(1.9)
        assert mgr.statistics().samples == 1
        await clock.advance(0.1)
        assert mgr.statistics().samples == 2
        await clock.advance(10)
        assert mgr.statistics().samples == 7
    assert clock.pending == 0


async def test_real_allocation_raises_pressure_and_release_relieves_it(clock: FakeClock) -> None:
    # A real load: allocate memory in this process and watch psutil see it.
    gc.collect()
    base = psutil.Process().memory_info().rss
    budget = base + 400 * 1024 * 1024
    cache: dict[str, bytearray] = {}

    def clear() -> int:
        freed = sum(len(v) for v in cache.values())
        cache.clear()
        return freed

    mgr = ResourceManager(budget_bytes=budget, clock=clock, sampler=psutil_sampler())
    mgr.register(Relief("blob", clear_cache=clear))
    cache["load"] = bytearray(400 * 1024 * 1024)
    decision = await mgr.check()
    assert decision.pressure >= 95
    assert cache == {}  # the critical band cleared it
    with pytest.raises(ResourceExhausted):
        mgr.admit("terminal/create")
    gc.collect()
    await clock.advance(1)
    relieved = await mgr.check()
    assert relieved.pressure < 30  # BENCHMARKS: back under 30 once the load ends
    mgr.admit("terminal/create")  # no longer throttled
