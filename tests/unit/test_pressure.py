from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lapce_bridge.core.pressure import Action, Band, PressurePolicy, ResourceSample


def test_sample_pressure_is_larger_share_and_clamped() -> None:
    assert ResourceSample(50, 10.0).pressure(100) == 50.0
    assert ResourceSample(10, 60.0).pressure(100) == 60.0
    assert ResourceSample(500, 10.0).pressure(100) == 100.0
    assert ResourceSample(500, 10.0).pressure(0) == 10.0


def test_bands_escalate_actions() -> None:
    policy = PressurePolicy()
    assert policy.decide(10, 0).actions == ()
    elevated = policy.decide(72, 1)
    assert elevated.band is Band.ELEVATED
    assert elevated.actions == (Action.TRIM_CACHE, Action.TRIM_SPOOLS)
    high = policy.decide(88, 2)
    assert high.band is Band.HIGH
    assert Action.THROTTLE in high.actions
    assert Action.DEGRADE in high.actions
    critical = policy.decide(99, 3)
    assert critical.band is Band.CRITICAL
    assert Action.CLEAR_CACHE in critical.actions
    assert Action.THROTTLE not in critical.actions  # already throttled: no repeat
    assert policy.throttled


def test_hysteresis_keeps_band_until_well_below_threshold() -> None:
    policy = PressurePolicy(elevated=70, hysteresis=5)
    assert policy.decide(70, 0).band is Band.ELEVATED
    assert policy.decide(66, 1).band is Band.ELEVATED  # inside the hysteresis gap
    assert policy.decide(64.9, 2).band is Band.NORMAL
    assert policy.decide(68, 3).band is Band.NORMAL  # must reach 70 again to re-enter


def test_unthrottle_once_pressure_drops_to_elevated() -> None:
    policy = PressurePolicy()
    assert Action.THROTTLE in policy.decide(90, 0).actions
    decision = policy.decide(50, 1)
    assert Action.UNTHROTTLE in decision.actions
    assert not policy.throttled
    assert Action.UNTHROTTLE not in policy.decide(50, 2).actions


def test_restore_one_level_per_calm_period() -> None:
    policy = PressurePolicy(restore_below=30, restore_after=5)
    policy.decide(90, 0)
    policy.decide(90, 1)  # degraded twice
    assert Action.RESTORE not in policy.decide(10, 2).actions  # calm starts at t=2
    assert Action.RESTORE not in policy.decide(10, 6.9).actions
    assert Action.RESTORE in policy.decide(10, 7).actions
    assert Action.RESTORE not in policy.decide(10, 8).actions  # next level needs 5 s more
    assert Action.RESTORE in policy.decide(10, 12).actions
    assert Action.RESTORE not in policy.decide(10, 30).actions  # nothing left to restore


def test_calm_period_resets_when_pressure_returns() -> None:
    policy = PressurePolicy(restore_below=30, restore_after=5)
    policy.decide(90, 0)
    policy.decide(10, 1)
    policy.decide(40, 3)  # not calm any more
    assert Action.RESTORE not in policy.decide(10, 6).actions  # 6-1 >= 5 but calm restarted
    assert Action.RESTORE in policy.decide(10, 11).actions


def test_degrade_is_capped() -> None:
    policy = PressurePolicy(max_degrade=3)
    degrades = sum(Action.DEGRADE in policy.decide(90, t).actions for t in range(10))
    assert degrades == 3


def test_thresholds_validated() -> None:
    with pytest.raises(ValueError, match="thresholds"):
        PressurePolicy(elevated=90, high=80)


@given(st.lists(st.floats(0, 100), min_size=1, max_size=60))
def test_restores_never_exceed_degrades(readings: list[float]) -> None:
    policy = PressurePolicy(restore_after=0.5)
    level = 0
    for t, pressure in enumerate(readings):
        actions = policy.decide(pressure, float(t)).actions
        level += (Action.DEGRADE in actions) - (Action.RESTORE in actions)
        assert 0 <= level <= 3
