"""The resource manager: sampling on the clock, reliefs, admission, collecting before throttling."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from lapce_bridge.cgroup import CgroupCpu, CgroupMemory, locate
from lapce_bridge.core.errors import ResourceExhausted
from lapce_bridge.core.pressure import Admission, ResourceSample
from lapce_bridge.resources import (
    ProcessTreeSampler,
    Relief,
    ResourceManager,
    proportional_set_size,
)
from lapce_bridge.testing import FakeClock

MiB = 1 << 20


class Dial:
    """A sampler whose reading the test sets, for the policy-driving tests."""

    def __init__(self) -> None:
        self.owned = 0
        self.cpu = 0.0
        self.reads = 0

    def __call__(self) -> ResourceSample:
        self.reads += 1
        return ResourceSample(self.owned, cpu_percent=self.cpu)


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

    def spill() -> int:
        calls.append("spill")
        return 7

    relief = Relief("cache", trim_cache=trim, clear_cache=clear, spill_spools=spill, reap_idle=reap)
    degraded: list[str] = []
    mgr = ResourceManager(budget_bytes=100, clock=clock, sampler=dial, degrade=degraded.append)
    mgr.register(relief)
    dial.owned = 10
    await mgr.check()
    assert calls == []
    dial.owned = 45
    await mgr.check()
    assert calls == ["trim 0.5", "spill"]
    assert degraded == ["pressure 45/100 (elevated)"]
    dial.owned = 99
    calls.clear()
    await mgr.check()
    assert calls == ["clear", "spill", "reap"]
    stats = mgr.statistics()
    assert stats.freed == {
        "cache.trim_cache": 100,
        "cache.spill_spools": 14,
        "cache.clear_cache": 500,
        "cache.reap_idle": 2,
    }
    with pytest.raises(ResourceExhausted, match=r"terminal/execute refused: memory pressure 99"):
        mgr.admit("terminal/execute")
    assert mgr.statistics().refused == 1


async def test_a_failing_relief_does_not_stop_the_others(clock: FakeClock) -> None:
    dial = Dial()
    freed: list[str] = []

    def broken() -> int:
        raise OSError("disk gone")

    def works() -> int:
        freed.append("ok")
        return 1

    mgr = ResourceManager(budget_bytes=100, clock=clock, sampler=dial)
    mgr.register(Relief("broken", spill_spools=broken))
    mgr.register(Relief("works", spill_spools=works))
    dial.owned = 50
    await mgr.check()
    assert freed == ["ok"]


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


async def test_collects_before_deciding_to_throttle(clock: FakeClock) -> None:
    dial = Dial()
    collected: list[float] = []

    def collect() -> None:  # the cycles the collector frees: the reading drops
        collected.append(clock.now())
        dial.owned = 20

    mgr = ResourceManager(budget_bytes=100, clock=clock, sampler=dial, collect=collect)
    dial.owned = 90
    decision = await mgr.check()
    assert collected == [0.0]
    assert dial.reads == 2  # sampled again after the collection, and decided on that
    assert decision.pressure == 20.0
    assert not mgr.policy.throttled
    mgr.admit("terminal/create")
    # A reading that tightens nothing does not collect.
    dial.owned = 45
    await mgr.check()
    assert collected == [0.0]
    assert mgr.statistics().collections == 1


async def test_collects_periodically_while_throttled_so_refusals_end_with_their_cause(
    clock: FakeClock,
) -> None:
    dial = Dial()
    collections: list[float] = []
    garbage = [True]

    def collect() -> None:
        collections.append(clock.now())
        if not garbage[0]:
            dial.owned = 10

    mgr = ResourceManager(
        budget_bytes=100, clock=clock, sampler=dial, collect=collect, collect_every=5.0
    )
    dial.owned = 90
    await mgr.check()  # collected, still 90: throttled
    assert mgr.policy.throttled
    garbage[0] = False  # what held the memory is unreachable now, not yet collected
    for t in (1.0, 2.0, 4.9):
        await clock.advance(t - clock.now())
        await mgr.check()
        assert mgr.policy.throttled
    await clock.advance(5.0 - clock.now())
    await mgr.check()
    assert collections == [0.0, 5.0]
    assert not mgr.policy.throttled


async def test_quality_steps_through_the_callbacks_on_virtual_time(clock: FakeClock) -> None:
    dial = Dial()
    levels = [3]
    changes: list[float] = []

    def degrade(reason: str) -> None:
        levels.append(levels[-1] - 1)
        changes.append(clock.now())

    def restore(reason: str) -> None:
        levels.append(levels[-1] + 1)
        changes.append(clock.now())

    mgr = ResourceManager(
        budget_bytes=100,
        clock=clock,
        sampler=dial,
        degrade=degrade,
        restore=restore,
        collect=lambda: None,
    )
    assert (mgr.interval, mgr.busy_interval, mgr.policy.restore_after) == (1.0, 0.25, 0.5)
    async with mgr:
        await clock.wait_for_sleepers()
        assert mgr.next_interval() == 1.0  # settled: one sample a second
        dial.owned = 95  # a load arrives just after the sample at t=0
        await clock.advance(1.5)
        # Seen at t=1; unsettled from then on, so sampled every 0.25 s: one step a sample.
        assert changes == [1.0, 1.25, 1.5]
        assert levels[-1] == 0
        assert mgr.next_interval() == 0.25  # critical: admission tight, still sampled often
        await clock.advance(3.0 - clock.now())
        dial.owned = 10  # the load ends, just after the sample at t=3
        await clock.advance(0.25)
        assert levels[-1] == 0  # t=3.25: the first calm sample starts the calm period
        await clock.advance(0.5)
        assert levels[-1] == 1  # t=3.75: one step after restore_after (0.5 s)
        await clock.advance(0.5)
        assert levels[-1] == 2
        await clock.advance(0.5)
        assert levels[-1] == 3  # t=4.75: every level back within 1.75 s of the load ending
        assert changes[3:] == [3.75, 4.25, 4.75]
        assert mgr.next_interval() == 1.0  # settled again
        samples = mgr.statistics().samples
        await clock.advance(20.0)
        assert mgr.statistics().samples - samples == 20
    assert levels == [3, 2, 1, 0, 1, 2, 3]


async def test_a_band_held_at_its_ceiling_is_sampled_at_the_slow_interval(
    clock: FakeClock,
) -> None:
    dial = Dial()
    mgr = ResourceManager(budget_bytes=100, clock=clock, sampler=dial, collect=lambda: None)
    dial.owned = 45  # elevated: quality 2, every new request admitted
    await mgr.check()
    assert mgr.policy.quality == 2
    assert mgr.next_interval() == 1.0
    dial.owned = 70  # high: new terminals refused, so the end of it is looked for often
    await mgr.check()
    assert mgr.next_interval() == 0.25
    dial.owned, dial.cpu = 10, 99.0  # CPU overload alone: faster sampling would add to it
    for t in (1.0, 1.5, 2.0):
        await clock.advance(t - clock.now())
        await mgr.check()
    assert mgr.policy.quality == 3
    assert mgr.policy.throttled
    assert mgr.next_interval() == 1.0


async def test_cpu_refusal_names_the_cpu(clock: FakeClock) -> None:
    dial = Dial()
    mgr = ResourceManager(budget_bytes=100, clock=clock, sampler=dial)
    dial.cpu = 99.0
    await mgr.check()
    with pytest.raises(ResourceExhausted, match="CPU overload"):
        mgr.admit("terminal/create")
    mgr.admit("terminal/execute")


def test_cgroup_v2_limit_is_the_tightest_up_the_tree(tmp_path: Path) -> None:
    root = tmp_path / "cg"
    leaf = root / "pod" / "ctr"
    leaf.mkdir(parents=True)
    (root / "memory.max").write_text("max\n")
    (root / "pod" / "memory.max").write_text(f"{200 * MiB}\n")
    (root / "pod" / "memory.current").write_text(f"{150 * MiB}\n")
    (root / "pod" / "memory.stat").write_text(f"anon 1\ninactive_file {30 * MiB}\nfile 9\n")
    (leaf / "memory.max").write_text("max\n")
    (leaf / "memory.current").write_text(f"{10 * MiB}\n")
    assert CgroupMemory(root, "/pod/ctr").read() == (120 * MiB, 200 * MiB)
    (leaf / "memory.max").write_text(f"{100 * MiB}\n")
    assert CgroupMemory(root, "/pod/ctr").read() == (10 * MiB, 100 * MiB)
    (root / "pod" / "memory.max").write_text("max\n")
    (leaf / "memory.max").write_text("max\n")
    assert CgroupMemory(root, "/pod/ctr").read() == (None, None)


def test_cgroup_v1_memory_limit_is_the_tightest_up_the_tree(tmp_path: Path) -> None:
    root = tmp_path / "memory"
    leaf = root / "docker" / "abc"
    leaf.mkdir(parents=True)
    unlimited = "9223372036854771712\n"  # v1's "no limit"
    (root / "memory.limit_in_bytes").write_text(unlimited)
    (root / "docker" / "memory.limit_in_bytes").write_text(unlimited)
    (leaf / "memory.limit_in_bytes").write_text(f"{300 * MiB}\n")
    (leaf / "memory.usage_in_bytes").write_text(f"{250 * MiB}\n")
    (leaf / "memory.stat").write_text(
        f"cache 1\ninactive_file {10 * MiB}\ntotal_inactive_file {50 * MiB}\n"
    )
    assert CgroupMemory(root, "/docker/abc", v1=True).read() == (200 * MiB, 300 * MiB)
    (leaf / "memory.limit_in_bytes").write_text(unlimited)
    assert CgroupMemory(root, "/docker/abc", v1=True).read() == (None, None)


def test_cgroup_cpu_quota_in_cores_v2_and_v1(tmp_path: Path) -> None:
    v2 = tmp_path / "unified"
    (v2 / "pod" / "ctr").mkdir(parents=True)
    (v2 / "cpu.max").write_text("max 100000\n")
    (v2 / "pod" / "cpu.max").write_text("150000 100000\n")
    (v2 / "pod" / "ctr" / "cpu.max").write_text("50000 100000\n")
    assert CgroupCpu(v2, "/pod/ctr").cores() == 0.5
    (v2 / "pod" / "ctr" / "cpu.max").write_text("max 100000\n")
    assert CgroupCpu(v2, "/pod/ctr").cores() == 1.5  # the parent's limit holds
    v1 = tmp_path / "cpu"
    (v1 / "job").mkdir(parents=True)
    (v1 / "job" / "cpu.cfs_quota_us").write_text("-1\n")
    (v1 / "job" / "cpu.cfs_period_us").write_text("100000\n")
    assert CgroupCpu(v1, "/job", v1=True).cores() is None
    (v1 / "job" / "cpu.cfs_quota_us").write_text("25000\n")
    assert CgroupCpu(v1, "/job", v1=True).cores() == 0.25


def test_cgroups_are_found_from_the_proc_files(tmp_path: Path) -> None:
    v1_cgroups = "4:memory:/process_api/abc\n2:cpu,cpuacct:/job\n0::/\n"
    mountinfo = (
        f"31 23 0:28 / {tmp_path}/unified rw - cgroup2 cgroup2 rw\n"
        f"35 31 0:32 / {tmp_path}/memory rw,relatime - cgroup cgroup rw,memory\n"
        f"32 31 0:29 /job {tmp_path}/cpu rw,relatime - cgroup cgroup rw,cpu,cpuacct\n"
    )
    (tmp_path / "unified").mkdir()  # a hybrid machine: v2 mounted, without the controllers
    assert locate(v1_cgroups, mountinfo, "memory") == (
        tmp_path / "memory",
        "/process_api/abc",
        True,
    )
    # A mount that shows the cgroup as its root: the path is taken relative to it.
    assert locate(v1_cgroups, mountinfo, "cpu") == (tmp_path / "cpu", "/", True)
    (tmp_path / "unified" / "ctr").mkdir()
    (tmp_path / "unified" / "ctr" / "memory.max").write_text("max\n")
    v2_cgroups = "0::/ctr\n"
    assert locate(v2_cgroups, mountinfo, "memory") == (tmp_path / "unified", "/ctr", False)
    assert locate("0::/ctr\n", "", "memory") is None


def test_cpu_is_a_share_of_the_cgroup_quota_when_it_is_less(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("50000 100000\n")
    sampler = ProcessTreeSampler(cgroup_cpu=CgroupCpu(tmp_path, "/"), find_cgroups=False)
    assert sampler.usable_cores() == 0.5
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert sampler.usable_cores() == len(os.sched_getaffinity(0))


def test_process_tree_sampler_counts_the_terminals_not_the_machine() -> None:
    sampler = ProcessTreeSampler(cgroup=None)
    gc.collect()
    alone = sampler().owned_bytes
    # A child holding 150 MiB of touched memory, as a terminal's command would.
    code = (
        "b = bytearray(150 << 20); b[::4096] = b'x' * len(b[::4096]); print(1, flush=True); input()"
    )
    with subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as child:
        try:
            assert child.stdout is not None
            assert child.stdout.readline() == "1\n"
            with_child = sampler()
            assert with_child.owned_bytes - alone >= 140 * MiB
            assert 0.0 <= with_child.available_percent <= 100.0
            assert 0.0 <= with_child.cpu_percent <= 100.0
        finally:
            child.kill()
    assert sampler().owned_bytes - alone < 100 * MiB


def test_pss_is_read_from_smaps_rollup() -> None:
    rss = psutil.Process().memory_info().rss
    pss = proportional_set_size(os.getpid(), rss)
    assert 0 < pss <= rss
    assert proportional_set_size(2**22 + 7, 1234) == 1234  # no such process: the RSS given


async def test_real_allocation_raises_pressure_and_release_relieves_it(clock: FakeClock) -> None:
    # A real load: allocate memory in this process and watch the sampler see it.
    gc.collect()
    sampler = ProcessTreeSampler(cgroup=None)
    base = sampler().owned_bytes
    budget = base + 400 * MiB
    cache: dict[str, bytearray] = {}

    def clear() -> int:
        freed = sum(len(v) for v in cache.values())
        cache.clear()
        return freed

    mgr = ResourceManager(budget_bytes=budget, clock=clock, sampler=sampler)
    mgr.register(Relief("blob", clear_cache=clear))
    load = bytearray(400 * MiB)
    load[::4096] = b"x" * len(range(0, len(load), 4096))
    cache["load"] = load
    del load
    decision = await mgr.check()
    assert decision.pressure > 80
    assert cache == {}  # the critical band cleared it
    with pytest.raises(ResourceExhausted):
        mgr.admit("terminal/create")
    await clock.advance(1)
    relieved = await mgr.check()
    # Back to what the process held before the load (give or take 64 MiB of a busy heap).
    assert relieved.pressure <= 100.0 * (base + 64 * MiB) / budget
    assert relieved.admission is Admission.ALL
    mgr.admit("terminal/create")  # no longer throttled
