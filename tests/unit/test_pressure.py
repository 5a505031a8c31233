"""The pressure policy on plain numbers: readings, bands, hysteresis, admission, quality steps."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lapce_bridge.core.pressure import (
    Action,
    Admission,
    Band,
    PressurePolicy,
    ResourceSample,
)

MiB = 1 << 20


def test_own_memory_against_the_budget() -> None:
    assert ResourceSample(50 * MiB).pressure(100 * MiB) == 50.0
    assert ResourceSample(500 * MiB).pressure(100 * MiB) == 100.0  # clamped


def test_the_machine_counts_only_under_its_floor() -> None:
    # A developer laptop at 70 % (30 % available) plays no part at all.
    assert ResourceSample(10 * MiB, available_percent=30.0).pressure(100 * MiB) == 10.0
    assert ResourceSample(10 * MiB, available_percent=5.0).pressure(100 * MiB) == 10.0
    # Under 5 % available the machine is a last-resort floor, in the critical band.
    assert ResourceSample(10 * MiB, available_percent=3.0).pressure(100 * MiB) == 97.0
    floor = ResourceSample(10 * MiB, available_percent=8.0)
    assert floor.pressure(100 * MiB, machine_floor_percent=10.0) == 92.0


def test_the_container_limit_counts_when_there_is_one() -> None:
    sample = ResourceSample(10 * MiB, cgroup_bytes=70 * MiB, cgroup_limit=100 * MiB)
    assert sample.pressure(1000 * MiB) == 70.0
    assert ResourceSample(10 * MiB, cgroup_bytes=70 * MiB).pressure(100 * MiB) == 10.0


@pytest.mark.parametrize(
    ("pressure", "band", "admission"),
    [
        (0.0, Band.NORMAL, Admission.ALL),
        (30.0, Band.NORMAL, Admission.ALL),
        (30.5, Band.ELEVATED, Admission.ALL),
        (60.0, Band.ELEVATED, Admission.ALL),
        (61.0, Band.HIGH, Admission.NO_NEW_TERMINALS),
        (80.0, Band.HIGH, Admission.NO_NEW_TERMINALS),
        (81.0, Band.CRITICAL, Admission.NO_NEW_WORK),
        (100.0, Band.CRITICAL, Admission.NO_NEW_WORK),
    ],
)
def test_the_specification_bands(pressure: float, band: Band, admission: Admission) -> None:
    decision = PressurePolicy().decide(pressure, 0.0)
    assert decision.band is band
    assert decision.admission is admission


def test_each_band_relieves_what_it_should() -> None:
    relief = {Action.TRIM_CACHE, Action.CLEAR_CACHE, Action.SPILL_SPOOLS, Action.REAP_IDLE}

    def actions(pressure: float) -> set[Action]:
        return set(PressurePolicy().decide(pressure, 0.0).actions) & relief

    assert actions(10) == set()
    assert actions(45) == {Action.TRIM_CACHE, Action.SPILL_SPOOLS}
    assert actions(70) == {Action.TRIM_CACHE, Action.SPILL_SPOOLS, Action.REAP_IDLE}
    assert actions(90) == {Action.CLEAR_CACHE, Action.SPILL_SPOOLS, Action.REAP_IDLE}


def test_admission_by_operation() -> None:
    policy = PressurePolicy()
    policy.decide(70, 0)
    assert not policy.admits("terminal/create")
    assert not policy.admits("fs/watch")
    assert policy.admits("terminal/execute")
    assert policy.admits("fs/read")
    policy.decide(90, 1)
    assert not policy.admits("terminal/execute")
    for relieving in ("terminal/interrupt", "terminal/close", "terminal/sendText", "fs/unwatch"):
        assert policy.admits(relieving)
    policy.decide(10, 2)
    assert policy.admits("terminal/create")


def test_hysteresis_keeps_a_band_until_well_below_its_threshold() -> None:
    policy = PressurePolicy(hysteresis=5)
    assert policy.decide(61, 0).band is Band.HIGH
    assert policy.decide(58, 1).band is Band.HIGH  # inside the gap
    assert policy.decide(55, 2).band is Band.ELEVATED  # 5 under the threshold: left
    assert policy.decide(59, 3).band is Band.ELEVATED  # must pass 60 again to re-enter
    assert policy.decide(26, 4).band is Band.ELEVATED
    assert policy.decide(25, 5).band is Band.NORMAL


def test_throttle_and_unthrottle_are_announced_once_per_change() -> None:
    policy = PressurePolicy()
    assert Action.THROTTLE in policy.decide(70, 0).actions
    assert Action.THROTTLE not in policy.decide(70, 1).actions
    assert Action.THROTTLE in policy.decide(90, 2).actions  # tighter again
    assert Action.UNTHROTTLE in policy.decide(70, 3).actions  # looser
    assert Action.UNTHROTTLE in policy.decide(10, 4).actions
    assert not policy.throttled
    assert Action.UNTHROTTLE not in policy.decide(10, 5).actions


def test_quality_steps_down_to_each_bands_ceiling_one_level_a_sample() -> None:
    policy = PressurePolicy()
    levels = [policy.decide(95, t).quality for t in range(5)]
    assert levels == [2, 1, 0, 0, 0]
    policy = PressurePolicy()
    assert [policy.decide(45, t).quality for t in range(3)] == [2, 2, 2]
    assert [policy.decide(70, t).quality for t in range(3, 6)] == [1, 1, 1]


def test_quality_is_restored_step_by_step_as_pressure_falls_through_the_bands() -> None:
    policy = PressurePolicy(restore_after=2.0)
    for t in range(3):
        policy.decide(95, t)
    assert policy.quality == 0
    # Falling into the high band (ceiling 1): one step up after 2 s there, no further.
    assert policy.decide(70, 10).quality == 0
    assert policy.decide(70, 11.9).quality == 0
    assert Action.RESTORE in policy.decide(70, 12).actions
    assert policy.decide(70, 30).quality == 1
    # Elevated (ceiling 2): one more step, 2 s later. Quality never waits for "under 30".
    assert policy.decide(50, 31).quality == 1
    assert policy.decide(50, 33).quality == 2
    assert policy.decide(50, 60).quality == 2
    # Normal: the last step.
    assert policy.decide(10, 61).quality == 2
    assert policy.decide(10, 62.5).quality == 2
    restored = policy.decide(10, 63)
    assert restored.quality == 3
    assert Action.RESTORE in restored.actions
    assert Action.RESTORE not in policy.decide(10, 100).actions


def test_a_sample_back_in_a_worse_band_restarts_the_calm_period() -> None:
    policy = PressurePolicy(restore_after=2.0)
    policy.decide(70, 0)  # high: quality steps to 2, then to 1
    policy.decide(70, 1)
    assert policy.quality == 1
    policy.decide(40, 2)  # calm (for the elevated ceiling) starts
    policy.decide(70, 3)  # back in high: quality is at its ceiling, calm reset
    policy.decide(40, 4)  # calm starts again
    assert policy.decide(40, 5.9).quality == 1
    assert policy.decide(40, 6).quality == 2


def settled(policy: PressurePolicy) -> bool:
    return policy.settled  # read afresh: an assert on the property would narrow it for mypy


def test_settled_only_with_quality_at_the_ceiling_and_memory_admitting_all() -> None:
    policy = PressurePolicy()
    assert policy.restore_after == 0.5
    assert settled(policy)
    policy.decide(45, 0)  # elevated: one step down to its ceiling, then settled there
    assert policy.quality == 2
    assert settled(policy)
    policy.decide(70, 1)  # high: quality above the ceiling, and new terminals refused
    assert not settled(policy)
    policy.decide(70, 2)
    assert policy.quality == 1
    assert not settled(policy)  # at its ceiling, but refusing: its end must be seen soon
    policy.decide(10, 3)
    assert not settled(policy)  # normal, quality 1 of 3: steps up pending
    policy.decide(10, 3.5)
    policy.decide(10, 4)
    assert policy.quality == 3
    assert settled(policy)
    policy.decide(10, 5, cpu_percent=99)
    assert policy.throttled
    assert settled(policy)  # CPU overload alone


def test_cpu_overload_throttles_new_terminals_with_hysteresis() -> None:
    policy = PressurePolicy(cpu_high=90, cpu_low=70)
    calm = policy.decide(10, 0, cpu_percent=85)
    assert not calm.cpu_overloaded
    hot = policy.decide(10, 1, cpu_percent=95)
    assert hot.cpu_overloaded
    assert hot.admission is Admission.NO_NEW_TERMINALS
    assert Action.THROTTLE in hot.actions
    assert hot.quality == 3  # CPU never degrades quality nor sheds anything
    assert not policy.admits("terminal/create")
    assert policy.admits("terminal/execute")
    assert policy.decide(10, 2, cpu_percent=75).cpu_overloaded  # above the low mark
    eased = policy.decide(10, 3, cpu_percent=60)
    assert not eased.cpu_overloaded
    assert Action.UNTHROTTLE in eased.actions
    # Under critical memory the CPU signal cannot loosen admission.
    assert policy.decide(95, 4, cpu_percent=95).admission is Admission.NO_NEW_WORK


def test_thresholds_validated() -> None:
    with pytest.raises(ValueError, match="thresholds"):
        PressurePolicy(elevated=90, high=80)
    with pytest.raises(ValueError, match="hysteresis"):
        PressurePolicy(hysteresis=40)
    with pytest.raises(ValueError, match="CPU"):
        PressurePolicy(cpu_high=50, cpu_low=60)


@given(st.lists(st.floats(0, 100), min_size=1, max_size=60))
def test_quality_follows_degrade_and_restore_actions_within_bounds(readings: list[float]) -> None:
    policy = PressurePolicy(restore_after=0.5)
    level = 3
    for t, pressure in enumerate(readings):
        decision = policy.decide(pressure, float(t))
        level += (Action.RESTORE in decision.actions) - (Action.DEGRADE in decision.actions)
        assert level == decision.quality
        assert 0 <= level <= policy.ceiling(Band.NORMAL)
        assert level <= policy.ceiling(decision.band) or Action.DEGRADE in decision.actions
