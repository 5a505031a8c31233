from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lapce_bridge.core.degradation import (
    DECORATIONS,
    FILE_WATCHING,
    SHELL_INTEGRATION,
    DegradationManager,
    QualityChanged,
)
from lapce_bridge.core.errors import InvalidParams
from lapce_bridge.core.events import EventBus
from lapce_bridge.testing import FakeClock

LEVELS = {
    3: {SHELL_INTEGRATION: True, FILE_WATCHING: True, DECORATIONS: True},
    2: {SHELL_INTEGRATION: True, FILE_WATCHING: True, DECORATIONS: False},
    1: {SHELL_INTEGRATION: False, FILE_WATCHING: True, DECORATIONS: False},
    0: {SHELL_INTEGRATION: False, FILE_WATCHING: False, DECORATIONS: False},
}


def make(clock: FakeClock, level: int = 3) -> tuple[DegradationManager, list[QualityChanged]]:
    bus = EventBus()
    events: list[QualityChanged] = []
    bus.subscribe(QualityChanged, events.append)
    return DegradationManager(level=level, bus=bus, clock=clock), events


@pytest.mark.parametrize("level", [3, 2, 1, 0])
def test_each_level_enables_its_features(clock: FakeClock, level: int) -> None:
    dm, _ = make(clock, level=level)
    assert dm.level == level
    assert dm.features() == LEVELS[level]
    for name, on in LEVELS[level].items():
        assert dm.is_enabled(name) is on


def test_degrade_and_restore_move_one_level_and_publish(clock: FakeClock) -> None:
    dm, events = make(clock)
    assert dm.degrade("memory pressure 90") == 2
    assert dm.degrade("memory pressure 96") == 1
    assert dm.restore("pressure eased") == 2
    assert events == [
        QualityChanged(3, 2, "memory pressure 90", LEVELS[2]),
        QualityChanged(2, 1, "memory pressure 96", LEVELS[1]),
        QualityChanged(1, 2, "pressure eased", LEVELS[2]),
    ]


def test_levels_stop_at_the_ends_without_events(clock: FakeClock) -> None:
    dm, events = make(clock, level=0)
    assert dm.degrade("more") == 0
    dm.set_level(3)
    events.clear()
    assert dm.restore("more") == 3
    assert dm.set_level(3) == 3
    assert events == []


def test_set_level_jumps_and_validates(clock: FakeClock) -> None:
    dm, events = make(clock)
    assert dm.set_level(0, "operator") == 0
    assert events[-1] == QualityChanged(3, 0, "operator", LEVELS[0])
    for bad in (-1, 4, True, 2.0):
        with pytest.raises(InvalidParams):
            dm.set_level(bad)  # type: ignore[arg-type]
    assert dm.level == 0
    with pytest.raises(InvalidParams):
        DegradationManager(level=9, clock=clock)


def test_force_pins_a_feature_whatever_the_level(clock: FakeClock) -> None:
    dm, events = make(clock)
    dm.force(DECORATIONS, False)
    assert not dm.is_enabled(DECORATIONS)
    assert events[-1].from_level == events[-1].to_level == 3
    dm.set_level(0)
    dm.force(FILE_WATCHING, True)
    assert dm.features() == {**LEVELS[0], FILE_WATCHING: True}
    dm.force(FILE_WATCHING, None)
    assert not dm.is_enabled(FILE_WATCHING)
    count = len(events)
    dm.force(DECORATIONS, False)  # already off at level 0 and already forced off
    assert len(events) == count
    with pytest.raises(InvalidParams, match="unknown feature"):
        dm.force("telepathy", True)


def test_unknown_features_are_enabled(clock: FakeClock) -> None:
    dm, _ = make(clock, level=0)
    assert dm.is_enabled("something_new")


def test_is_enabled_fits_the_services_callable(clock: FakeClock) -> None:
    dm, _ = make(clock)
    features: Callable[[str], bool] = dm.is_enabled
    dm.degrade("x")
    assert features(SHELL_INTEGRATION)
    assert not features(DECORATIONS)


def test_custom_feature_table(clock: FakeClock) -> None:
    dm = DegradationManager(features={"syntax": 4, "ai": 1}, level=4, clock=clock)
    assert dm.max_level == 4
    dm.degrade("x")
    assert dm.features() == {"syntax": False, "ai": True}
    with pytest.raises(InvalidParams):
        DegradationManager(features={"bad": -1}, clock=clock)


async def test_statistics_track_changes_and_time_degraded(clock: FakeClock) -> None:
    dm, _ = make(clock)
    dm.degrade("a")
    await clock.advance(10)
    dm.degrade("b")
    await clock.advance(5)
    dm.set_level(3, "recovered")
    await clock.advance(100)
    dm.degrade("c")
    await clock.advance(1)
    stats = dm.statistics()
    assert (stats.level, stats.degradations, stats.restorations, stats.changes) == (2, 3, 1, 4)
    assert stats.last_reason == "c"
    assert stats.last_change_at == 115.0
    assert stats.seconds_degraded == pytest.approx(16.0)
    assert stats.features == LEVELS[2]


def test_a_failing_subscriber_does_not_stop_the_change(clock: FakeClock) -> None:
    bus = EventBus()

    def broken(event: QualityChanged) -> None:
        raise RuntimeError("subscriber bug")

    bus.subscribe(QualityChanged, broken)
    dm = DegradationManager(bus=bus, clock=clock)
    assert dm.degrade("x") == 2
    assert bus.statistics().handler_errors == 1


@given(st.lists(st.sampled_from(["degrade", "restore"]), max_size=30))
def test_level_stays_in_range_and_features_follow_it(ops: list[str]) -> None:
    dm = DegradationManager(clock=FakeClock())
    expected = 3
    for op in ops:
        if op == "degrade":
            expected = max(0, expected - 1)
            assert dm.degrade("h") == expected
        else:
            expected = min(3, expected + 1)
            assert dm.restore("h") == expected
        assert dm.features() == LEVELS[expected]
