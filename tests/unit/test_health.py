"""HealthMonitor on virtual time: alert episodes, exact window expiry, SLO burn rates, status."""

from __future__ import annotations

import asyncio
import dataclasses
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lapce_bridge.core.errors import InvalidParams
from lapce_bridge.core.events import EventBus
from lapce_bridge.core.health import (
    ALERT_TYPES,
    ALL_OPERATIONS,
    DEFAULT_TARGETS,
    AlertCleared,
    HealthMonitor,
    HighBurnRate,
    HighFailureRate,
    HighLatency,
)
from lapce_bridge.core.metrics import OTHER_OPERATION
from lapce_bridge.rpc import Observe
from lapce_bridge.testing import FakeClock

OP = "fs/read"
TARGET = DEFAULT_TARGETS[OP]  # 200 us
FAST, SLOW = 50e-6, 1e-3  # SLOW is beyond twice the target


class Recorder:
    """Collects every health event published on a bus, in order."""

    def __init__(self, bus: EventBus) -> None:
        self.events: list[object] = []
        for kind in ALERT_TYPES:
            bus.subscribe(kind, self.events.append)

    def kinds(self) -> list[str]:
        return [getattr(e, "kind", "?") for e in self.events]


def monitor_on(clock: FakeClock, **kw: object) -> tuple[HealthMonitor, Recorder]:
    """A monitor publishing to a recorder; the SLO page is off unless a test sets it."""
    kw.setdefault("burn_rate_threshold", 1e9)
    bus = EventBus()
    recorder = Recorder(bus)
    return HealthMonitor(clock=clock, bus=bus, **kw), recorder  # type: ignore[arg-type]


def exact_p99(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[max(1, math.ceil(0.99 * len(ordered))) - 1]


# -- failure rate --------------------------------------------------------------------------


def test_failure_alert_fires_at_the_record_that_crosses_and_only_once(clock: FakeClock) -> None:
    health, seen = monitor_on(clock)
    for _ in range(10):
        health.record_operation(OP, FAST, True)
    health.record_operation(OP, FAST, False)  # 1 of 11: 9.1 %, not above 10 %
    assert seen.events == []
    health.record_operation(OP, FAST, False)  # 2 of 12: 16.7 %
    assert seen.kinds() == ["HighFailureRate"]
    alert = seen.events[0]
    assert isinstance(alert, HighFailureRate)
    assert (alert.operation, alert.calls) == (OP, 12)
    assert alert.failure_rate == pytest.approx(2 / 12)
    assert "2 of 12 calls failed" in alert.detail
    for _ in range(20):
        health.record_operation(OP, FAST, False)
    assert seen.kinds() == ["HighFailureRate"]  # one event per episode
    assert health.active_alerts() == [alert]


def test_failure_alert_clears_at_the_record_that_brings_the_rate_back(clock: FakeClock) -> None:
    health, seen = monitor_on(clock)
    for ok in [True] * 10 + [False, False]:
        health.record_operation(OP, FAST, ok)
    for _ in range(7):  # 2 of 19 = 10.5 %: still above
        health.record_operation(OP, FAST, True)
    assert seen.kinds() == ["HighFailureRate"]
    health.record_operation(OP, FAST, True)  # 2 of 20 = 10 %: not above
    assert seen.kinds() == ["HighFailureRate", "AlertCleared"]
    cleared = seen.events[1]
    assert isinstance(cleared, AlertCleared)
    assert (cleared.operation, cleared.cleared) == (OP, "HighFailureRate")
    assert health.active_alerts() == []


def test_no_failure_alert_below_the_minimum_number_of_calls(clock: FakeClock) -> None:
    health, seen = monitor_on(clock, min_calls=10)
    for _ in range(9):
        health.record_operation(OP, FAST, False)
    assert seen.events == []
    health.record_operation(OP, FAST, False)
    assert seen.kinds() == ["HighFailureRate"]


async def test_failure_alert_clears_once_the_window_slides_past_it(clock: FakeClock) -> None:
    health, seen = monitor_on(clock)  # 60 s window in 60 slots of 1 s
    await clock.advance(0.5)
    for _ in range(10):
        health.record_operation(OP, FAST, False)
    assert seen.kinds() == ["HighFailureRate"]
    await clock.advance(59.375)  # t = 59.875: the slot of t = 0.5 is still inside
    health.evaluate()
    assert seen.kinds() == ["HighFailureRate"]
    await clock.advance(0.125)  # t = 60.0: floor(0.5) + 60
    health.evaluate()
    assert seen.kinds() == ["HighFailureRate", "AlertCleared"]
    health.evaluate()
    assert len(seen.events) == 2
    assert health.operation(OP).calls == 0


# -- exact window expiry ---------------------------------------------------------------------


async def test_records_expire_exactly_at_their_slot_boundary_plus_the_window(
    clock: FakeClock,
) -> None:
    health = HealthMonitor(clock=clock)
    # Times are dyadic fractions so that each advance lands on them exactly.
    for at in (0.0, 0.875, 1.0, 10.25, 30.0):
        await clock.advance(at - clock.now())
        health.record_operation(OP, FAST, True)
    expected = [(59.875, 5), (60.0, 3), (60.875, 3), (61.0, 2), (70.0, 1), (90.0, 0)]
    for at, calls in expected:
        await clock.advance(at - clock.now())
        assert (at, health.operation(OP).calls) == (at, calls)


async def test_a_jump_beyond_the_window_empties_it_and_recording_resumes(
    clock: FakeClock,
) -> None:
    health = HealthMonitor(clock=clock)
    for _ in range(30):
        health.record_operation(OP, SLOW, False)
    await clock.advance(10_000.0)
    health.record_operation(OP, FAST, True)
    op = health.operation(OP)
    assert (op.calls, op.failures) == (1, 0)
    assert op.latency.count == 1
    assert op.latency.p99 == pytest.approx(FAST, rel=0.003)


async def test_slo_windows_expire_on_their_own_slot_width(clock: FakeClock) -> None:
    health = HealthMonitor(clock=clock)  # short 300 s in 5 s slots, long 3600 s in 60 s slots
    await clock.advance(7.0)
    health.record_operation(OP, FAST, False)
    await clock.advance(305.0 - 7.0 - 0.125)
    assert health.slo().short_burn_rate > 0
    await clock.advance(0.125)  # 305 = floor(7 / 5) * 5 + 300
    assert health.slo().short_burn_rate == 0.0
    assert health.slo().calls == 1
    await clock.advance(3600.0 - 305.0 - 0.125)
    assert health.slo().calls == 1
    await clock.advance(0.125)  # 3600 = floor(7 / 60) * 60 + 3600
    assert health.slo().calls == 0


# -- latency ---------------------------------------------------------------------------------


def test_latency_alert_fires_when_the_windowed_p99_passes_twice_the_target(
    clock: FakeClock,
) -> None:
    health, seen = monitor_on(clock)
    for _ in range(199):
        health.record_operation(OP, FAST, True)
    health.record_operation(OP, SLOW, True)  # 1 of 200: p99 is still fast
    health.record_operation(OP, SLOW, True)  # 2 of 201
    assert seen.events == []
    health.record_operation(OP, SLOW, True)  # 3 of 202: rank 200 is slow now
    assert seen.kinds() == ["HighLatency"]
    alert = seen.events[0]
    assert isinstance(alert, HighLatency)
    assert (alert.slow_calls, alert.calls, alert.target_p99) == (3, 202, TARGET)
    assert "400 us" in alert.detail
    assert exact_p99([FAST] * 199 + [SLOW] * 3) == SLOW
    assert exact_p99([FAST] * 199 + [SLOW] * 2) == FAST


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from([FAST, 2 * TARGET, 2 * TARGET + 1e-9, SLOW]), max_size=150))
def test_latency_alert_state_matches_the_exact_p99_after_every_record(
    durations: list[float],
) -> None:
    health = HealthMonitor(clock=FakeClock(), min_calls=10)
    for i, duration in enumerate(durations, 1):
        health.record_operation(OP, duration, True)
        window = durations[:i]
        expected = i >= 10 and exact_p99(window) > 2 * TARGET
        active = [a.kind for a in health.active_alerts()]
        assert active == (["HighLatency"] if expected else [])


def test_an_operation_without_a_target_never_raises_a_latency_alert(clock: FakeClock) -> None:
    health, seen = monitor_on(clock)
    for _ in range(50):
        health.record_operation("fs/watch/recover", 30.0, True)
    assert seen.events == []
    assert health.operation("fs/watch/recover").target_p99 is None


async def test_latency_alert_clears_when_the_slow_calls_leave_the_window(
    clock: FakeClock,
) -> None:
    health, seen = monitor_on(clock)
    for _ in range(10):
        health.record_operation(OP, SLOW, True)
    await clock.advance(30.0)
    for _ in range(10):
        health.record_operation(OP, FAST, True)
    assert seen.kinds() == ["HighLatency"]
    await clock.advance(30.0)  # t = 60: the slow slot leaves; ten fast calls remain
    health.evaluate()
    assert seen.kinds() == ["HighLatency", "AlertCleared"]


# -- SLO and burn rate -----------------------------------------------------------------------


async def test_burn_rate_pages_only_when_both_windows_burn(clock: FakeClock) -> None:
    health, seen = monitor_on(clock, failure_rate_threshold=0.99, burn_rate_threshold=14.4)
    for _ in range(10_000):
        health.record_operation(OP, FAST, True)
    await clock.advance(400.0)  # the short window no longer holds them; the long one does
    for ok in [True] * 90 + [False] * 10:
        health.record_operation(OP, FAST, ok)
    slo = health.slo()
    assert slo.short_burn_rate == pytest.approx(100.0)  # 10 % errors over a 0.1 % budget
    assert slo.long_burn_rate == pytest.approx(10 / 10_100 / 0.001)
    assert seen.events == []  # the short window alone does not page
    # Every further call fails; the long burn rate passes 14.4 after j = 138 of them.
    for _ in range(137):
        health.record_operation(OP, FAST, False)
    assert seen.events == []
    health.record_operation(OP, FAST, False)
    assert seen.kinds() == ["HighBurnRate"]
    page = seen.events[0]
    assert isinstance(page, HighBurnRate)
    assert page.operation == ALL_OPERATIONS
    assert page.long_burn_rate == pytest.approx(148 / 10_238 / 0.001)
    assert page.short_burn_rate > 14.4
    # The failures sit in the short slot of t = 400, which leaves it at 400 + 300.
    await clock.advance(299.875)
    health.evaluate()
    assert seen.kinds() == ["HighBurnRate"]
    await clock.advance(0.125)
    health.evaluate()
    assert seen.kinds() == ["HighBurnRate", "AlertCleared"]


def test_slo_figures_over_the_long_window(clock: FakeClock) -> None:
    health = HealthMonitor(clock=clock, slo_target=0.99)
    fresh = health.slo()
    assert (fresh.availability, fresh.error_rate, fresh.error_budget_remaining) == (1.0, 0.0, 1.0)
    for ok in [True] * 996 + [False] * 4:
        health.record_operation(OP, FAST, ok)
    slo = health.slo()
    assert slo.calls == 1000
    assert slo.availability == pytest.approx(0.996)
    assert slo.error_rate == pytest.approx(0.004)
    assert slo.error_budget_remaining == pytest.approx(0.6)  # 0.4 % of a 1 % budget spent
    for _ in range(20):
        health.record_operation(OP, FAST, False)
    assert health.slo().error_budget_remaining == 0.0  # spent, never negative


# -- reports ---------------------------------------------------------------------------------


def test_report_has_the_health_report_shape(clock: FakeClock) -> None:
    health = HealthMonitor(clock=clock, slo_target=0.9)  # 1 error in 11 calls: no page
    for ok in [True] * 9 + [False]:
        health.record_operation(OP, 20e-6, ok)
    health.record_operation("fs/watch/recover", 3e-3, True)
    report = health.report(
        quality_level=3,
        features={"shell_integration": True},
        breakers={"fs": "closed"},
        pressure=12.5,
    )
    assert set(report) == {
        "status",
        "qualityLevel",
        "features",
        "breakers",
        "pressure",
        "operations",
        "slo",
        "alerts",
    }
    assert report["status"] == "healthy"
    assert report["features"] == {"shell_integration": True}
    assert report["breakers"] == {"fs": "closed"}
    read = report["operations"][OP]
    assert {"p50Us", "p99Us", "p999Us", "failureRate", "targetP99Us"} <= set(read)
    assert read["p50Us"] == pytest.approx(20.0, rel=0.003)
    assert read["failureRate"] == pytest.approx(0.1)
    assert read["targetP99Us"] == pytest.approx(200.0)
    assert report["operations"]["fs/watch/recover"]["targetP99Us"] is None
    assert {"availability", "errorRate", "errorBudgetRemaining"} <= set(report["slo"])
    assert report["slo"]["availability"] == pytest.approx(10 / 11)
    assert report["slo"]["errorBudgetRemaining"] == pytest.approx(1 - (1 / 11) / 0.1)
    assert report["alerts"] == []


def _with_alert(clock: FakeClock, kind: str) -> HealthMonitor:
    health = HealthMonitor(clock=clock, slo_target=0.5, burn_rate_threshold=100.0)
    if kind == "HighFailureRate":
        for _ in range(10):
            health.record_operation(OP, FAST, False)
    elif kind == "HighLatency":
        for _ in range(10):
            health.record_operation(OP, SLOW, True)
    assert [a.kind for a in health.active_alerts()] == ([kind] if kind else [])
    return health


@pytest.mark.parametrize(
    ("alert", "quality", "breakers", "pressure", "status"),
    [
        ("", 3, {}, 0.0, "healthy"),
        ("", 3, {"terminal": "closed"}, 69.9, "healthy"),
        ("", 2, {}, 0.0, "degraded"),
        ("", 0, {}, 0.0, "unhealthy"),
        ("", 3, {}, 70.0, "degraded"),
        ("", 3, {}, 90.0, "unhealthy"),
        ("", 3, {"terminal": "half_open"}, 0.0, "degraded"),
        ("", 3, {"terminal": "open"}, 0.0, "degraded"),
        ("HighLatency", 3, {}, 0.0, "degraded"),
        ("HighLatency", 3, {"terminal": "open"}, 0.0, "degraded"),
        ("HighFailureRate", 3, {}, 0.0, "degraded"),
        ("HighFailureRate", 3, {"terminal": "open"}, 0.0, "unhealthy"),
    ],
)
def test_status_rules(
    clock: FakeClock,
    alert: str,
    quality: int,
    breakers: dict[str, str],
    pressure: float,
    status: str,
) -> None:
    health = _with_alert(clock, alert)
    report = health.report(quality_level=quality, breakers=breakers, pressure=pressure)
    assert report["status"] == status
    assert [a["kind"] for a in report["alerts"]] == ([alert] if alert else [])


async def test_report_evaluates_so_a_stale_alert_is_gone(clock: FakeClock) -> None:
    health = _with_alert(clock, "HighFailureRate")
    assert health.report()["status"] == "degraded"
    await clock.advance(60.0)
    report = health.report()
    assert report["status"] == "healthy"
    assert report["alerts"] == []


@pytest.mark.parametrize(
    "bad",
    [
        {"quality_level": 4},
        {"quality_level": -1},
        {"pressure": 100.5},
        {"pressure": math.nan},
        {"breakers": {"terminal": "ajar"}},
    ],
)
def test_report_refuses_inputs_out_of_range(clock: FakeClock, bad: dict[str, object]) -> None:
    health = HealthMonitor(clock=clock)
    with pytest.raises(InvalidParams):
        health.report(**bad)  # type: ignore[arg-type]


# -- events, inputs, limits ------------------------------------------------------------------


def test_alert_events_are_frozen_and_speak_the_notification_shape() -> None:
    alert = HighLatency("ping", "slow", 3, 100, 200e-6)
    assert alert.to_wire() == {"kind": "HighLatency", "operation": "ping", "detail": "slow"}
    with pytest.raises(dataclasses.FrozenInstanceError):
        alert.detail = "fast"  # type: ignore[misc]
    cleared = AlertCleared("ping", "HighLatency cleared", "HighLatency")
    assert cleared.to_wire()["kind"] == "AlertCleared"


def test_record_operation_has_the_hook_signature_and_refuses_bad_durations(
    clock: FakeClock,
) -> None:
    health = HealthMonitor(clock=clock)
    hook: Observe = health.record_operation
    hook(OP, FAST, True)
    for bad in (math.nan, -1.0, math.inf):
        with pytest.raises(InvalidParams):
            hook(OP, bad, True)
    assert health.operation(OP).calls == 1
    assert health.slo().calls == 1
    assert health.statistics().records == 1


def test_operation_names_beyond_the_limit_fold_into_other(clock: FakeClock) -> None:
    health = HealthMonitor(clock=clock, max_operations=2)
    for i in range(5):
        health.record_operation(f"x/{i}", FAST, True)
    assert set(health.report()["operations"]) == {"x/0", "x/1", OTHER_OPERATION}
    assert health.operation(OTHER_OPERATION).calls == 3
    assert health.statistics().operations == 3


@pytest.mark.parametrize(
    "bad",
    [
        {"window": 0.0},
        {"window": math.inf},
        {"short_window": 600.0, "long_window": 300.0},
        {"failure_rate_threshold": 1.0},
        {"slo_target": 1.0},
        {"slo_target": 0.0},
        {"min_calls": 0},
        {"slots": 0},
        {"targets": {"ping": -1.0}},
        {"targets": {"ping": math.nan}},
        {"burn_rate_threshold": 0.0},
    ],
)
def test_bad_configuration_is_refused(bad: dict[str, object]) -> None:
    with pytest.raises(InvalidParams):
        HealthMonitor(**bad)  # type: ignore[arg-type]


def test_default_clock_is_the_system_clock_and_works_without_a_bus() -> None:
    health = HealthMonitor()
    for _ in range(10):
        health.record_operation("ping", 1e-3, False)
    kinds = [a.kind for a in health.active_alerts()]
    assert kinds == ["HighFailureRate", "HighLatency", "HighBurnRate"]
    stats = health.statistics()
    assert (stats.alerts_fired, stats.active_alerts) == (3, 3)


def test_a_success_that_brings_the_calls_to_the_minimum_can_fire(clock: FakeClock) -> None:
    health, seen = monitor_on(clock, burn_rate_threshold=14.4)
    for _ in range(9):
        health.record_operation(OP, SLOW, False)
    assert seen.events == []
    health.record_operation(OP, FAST, True)  # 9 of 10 failed, 9 of 10 slow
    assert seen.kinds() == ["HighFailureRate", "HighLatency", "HighBurnRate"]


def _expected_alerts(kept: list[tuple[float, bool, float]], now: float) -> list[str]:
    """What the monitor's defaults should report, from every record kept (a model)."""
    live = [(ok, d) for t, ok, d in kept if now < math.floor(t) + 60.0]
    alerts = []
    if len(live) >= 10 and sum(1 for ok, _ in live if not ok) / len(live) > 0.10:
        alerts.append("HighFailureRate")
    if len(live) >= 10 and exact_p99([d for _, d in live]) > 2 * TARGET:
        alerts.append("HighLatency")
    return alerts


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from([0.0, 0.0, 0.5, 1.0, 7.0, 59.0, 61.0]),
            st.booleans(),
            st.sampled_from([FAST, SLOW]),
        ),
        max_size=60,
    )
)
def test_alert_state_matches_a_model_as_time_moves(
    steps: list[tuple[float, bool, float]],
) -> None:
    async def scenario() -> None:
        clock = FakeClock()
        health = HealthMonitor(clock=clock, burn_rate_threshold=1e9)
        kept: list[tuple[float, bool, float]] = []
        for gap, ok, duration in steps:
            await clock.advance(gap)
            health.record_operation(OP, duration, ok)
            kept.append((clock.now(), ok, duration))
            active = sorted(a.kind for a in health.active_alerts())
            assert active == sorted(_expected_alerts(kept, clock.now()))
        await clock.advance(30.0)
        health.evaluate()
        active = sorted(a.kind for a in health.active_alerts())
        assert active == sorted(_expected_alerts(kept, clock.now()))

    asyncio.run(scenario())
