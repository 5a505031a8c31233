from __future__ import annotations

import asyncio
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lapce_bridge.clock import SYSTEM_CLOCK
from lapce_bridge.core.errors import BridgeTimeout, InvalidParams, classify
from lapce_bridge.core.timeouts import DEFAULT_TIMEOUTS, FALLBACK_TIMEOUT, TimeoutManager
from lapce_bridge.testing import FakeClock


def test_defaults_overrides_and_fallback(clock: FakeClock) -> None:
    tm = TimeoutManager(clock=clock)
    assert tm.timeout_for("terminal/execute") == 300.0
    assert tm.timeout_for("fs/read") == 10.0
    assert tm.timeout_for("fs/write") == 30.0
    assert tm.timeout_for("ipc/request") == 30.0
    assert tm.timeout_for("ping") == 5.0
    assert tm.timeout_for("no/such/op") == FALLBACK_TIMEOUT == 30.0
    tm.set_override("fs/read", 2.5)
    assert tm.timeout_for("fs/read") == 2.5
    tm.set_override("brand/new", 1)
    assert tm.timeout_for("brand/new") == 1.0
    assert tm.statistics().overrides == {"fs/read": 2.5, "brand/new": 1.0}
    tm.clear_override("fs/read")
    tm.clear_override("never/set")
    assert tm.timeout_for("fs/read") == 10.0


def test_custom_defaults_replace_the_table(clock: FakeClock) -> None:
    tm = TimeoutManager({"a": 1.0}, fallback=7.0, clock=clock)
    assert tm.timeout_for("a") == 1.0
    assert tm.timeout_for("fs/read") == 7.0
    assert all(v > 0 for v in DEFAULT_TIMEOUTS.values())


@pytest.mark.parametrize("bad", [0, -1.0, math.inf, math.nan, "5", True])
def test_bad_limits_are_refused_and_never_stored(clock: FakeClock, bad: object) -> None:
    tm = TimeoutManager(clock=clock)
    with pytest.raises(InvalidParams):
        tm.set_override("fs/read", bad)  # type: ignore[arg-type]
    assert tm.timeout_for("fs/read") == 10.0
    with pytest.raises(InvalidParams):
        TimeoutManager({"x": bad}, clock=clock)  # type: ignore[dict-item]


def test_construction_checks_growth_and_cap(clock: FakeClock) -> None:
    with pytest.raises(InvalidParams):
        TimeoutManager(growth=0.5, clock=clock)
    with pytest.raises(InvalidParams):
        TimeoutManager(max_timeout=0, clock=clock)


async def test_with_timeout_returns_the_result_in_time(clock: FakeClock) -> None:
    tm = TimeoutManager(clock=clock)

    async def work() -> str:
        await clock.sleep(9.99)
        return "read"

    task = asyncio.create_task(tm.with_timeout("fs/read", work()))
    await clock.wait_for_sleepers(2)
    await clock.advance(9.99)
    assert await task == "read"
    assert tm.statistics().expired == {}


async def test_with_timeout_raises_bridge_timeout_at_the_exact_limit(clock: FakeClock) -> None:
    tm = TimeoutManager(clock=clock)
    cancelled = []

    async def hang() -> None:
        try:
            await clock.sleep(1000)
        except asyncio.CancelledError:
            cancelled.append(clock.now())
            raise

    task = asyncio.create_task(tm.with_timeout("fs/read", hang()))
    await clock.wait_for_sleepers(2)
    await clock.advance(9.999)
    assert not task.done()
    await clock.advance(0.001)
    with pytest.raises(BridgeTimeout) as info:
        await task
    err = info.value
    assert err.code == -32001
    assert err.data["operation"] == "fs/read"
    assert err.data["seconds"] == 10.0
    assert "fs/read timed out after 10 s" in err.detail
    assert isinstance(err.__cause__, TimeoutError)
    assert classify(err).retryable
    assert cancelled == [10.0]  # the work was cancelled, not left running
    assert tm.statistics().expired == {"fs/read": 1}


async def test_explicit_seconds_override_the_table(clock: FakeClock) -> None:
    clock.autojump = True
    tm = TimeoutManager(clock=clock)
    with pytest.raises(BridgeTimeout) as info:
        await tm.with_timeout("terminal/execute", clock.sleep(500), seconds=0.25)
    assert clock.now() == 0.25
    assert info.value.data["seconds"] == 0.25


async def test_a_timeout_error_from_inside_is_translated_and_says_so(clock: FakeClock) -> None:
    tm = TimeoutManager(clock=clock)

    async def inner() -> None:
        raise TimeoutError("connect timed out")

    with pytest.raises(BridgeTimeout) as info:
        await tm.with_timeout("ipc/request", inner())
    assert "inside" in info.value.detail
    assert "connect timed out" in info.value.detail


async def test_outside_cancellation_is_not_a_timeout(clock: FakeClock) -> None:
    tm = TimeoutManager(clock=clock)
    task = asyncio.create_task(tm.with_timeout("ping", clock.sleep(100)))
    await clock.wait_for_sleepers(2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert tm.statistics().expired == {}


async def test_bad_seconds_close_the_coroutine_without_a_warning(clock: FakeClock) -> None:
    tm = TimeoutManager(clock=clock)
    started = []

    async def work() -> None:
        started.append(1)

    with pytest.raises(InvalidParams):
        await tm.with_timeout("ping", work(), seconds=-1)
    assert started == []  # closed, never run; -W error would flag "never awaited"


async def test_with_timeout_on_the_system_clock() -> None:
    tm = TimeoutManager(clock=SYSTEM_CLOCK)
    assert await tm.with_timeout("ping", asyncio.sleep(0, "pong")) == "pong"


def test_increased_doubles_per_attempt_and_caps(clock: FakeClock) -> None:
    tm = TimeoutManager(max_timeout=100.0, clock=clock)
    assert [tm.increased("fs/read", n) for n in range(5)] == [10.0, 20.0, 40.0, 80.0, 100.0]
    assert tm.increased("fs/read", 10_000) == 100.0
    assert tm.increased("x", 1, base=3.0) == 6.0
    assert tm.increased("x", 0, base=500.0) == 500.0  # a base above the cap is kept
    with pytest.raises(InvalidParams):
        tm.increased("x", -1)


@given(
    base=st.floats(0.001, 1e4),
    growth=st.floats(1.0, 10.0),
    cap=st.floats(0.001, 1e5),
    attempt=st.integers(0, 10_000),
)
def test_increased_is_monotonic_and_bounded(
    base: float, growth: float, cap: float, attempt: int
) -> None:
    tm = TimeoutManager(growth=growth, max_timeout=cap, clock=FakeClock())
    now = tm.increased("op", attempt, base=base)
    after = tm.increased("op", attempt + 1, base=base)
    assert math.isfinite(now)
    assert now <= after + 1e-9
    assert now >= min(base, cap) - 1e-9
    assert now <= max(base, cap) + 1e-9
