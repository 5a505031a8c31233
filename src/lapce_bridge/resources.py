"""The resource manager: samples what the bridge owns, asks the pressure policy, carries it out.

It owns no resources itself. Components that hold droppable memory register a `Relief`
(callbacks for trimming or clearing caches, spilling spools to disk, reaping idle terminals or
connections); the manager calls them when the policy says so, and records what each freed.
Admission is a check the server makes before new async work (`admit()`), answered with
`ResourceExhausted` (-32005, retryable) when the policy's admission refuses it, so the bridge
slows down instead of falling over. Quality steps go to `degrade`/`restore` callbacks.

Memory held in reference cycles is freed only when the garbage collector runs, which may be
minutes away; so before any sample that would tighten admission, and at most every
`collect_every` seconds while admission is tight, the manager collects (`collect`, gc.collect
by default) and samples again, and decides on the second reading: a refusal never outlives
its cause by more than one collection.

Sampling runs on the injected clock, every `interval` seconds while the policy is settled
and every `busy_interval` while it is not (a quality step pending, or memory admission
tight), so a load's end is seen, and quality given back, within a fraction of a second of
each step being due; the sampler is injectable too. The default one
(`ProcessTreeSampler`) reads the server's and its terminals' proportional set size (PSS,
from `/proc/PID/smaps_rollup`; RSS where that is missing), the working set and limit of the
process's own memory cgroup, v2 or v1 (`lapce_bridge.cgroup`), the machine's available memory,
and the tree's CPU time since the previous sample, as a share of the cores it may use (its
affinity, or its cgroup's CPU quota where that is less).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import psutil

from lapce_bridge.cgroup import CgroupCpu, CgroupMemory
from lapce_bridge.cgroup import for_self as cgroup_for_self
from lapce_bridge.clock import SYSTEM_CLOCK
from lapce_bridge.core.clock import Clock
from lapce_bridge.core.errors import ResourceExhausted
from lapce_bridge.core.pressure import (
    Action,
    Admission,
    Band,
    PressureDecision,
    PressurePolicy,
    ResourceSample,
)
from lapce_bridge.core.relief import Relief as Relief  # where components import it from

log = logging.getLogger("lapce_bridge.resources")

Sampler = Callable[[], ResourceSample]
DEFAULT_BUDGET_BYTES = 512 * 1024 * 1024


# -- sampling ---------------------------------------------------------------------------------
def proportional_set_size(pid: int, rss: int) -> int:
    """The process's PSS from smaps_rollup (shared pages split between sharers), else `rss`."""
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as f:
            for line in f:
                if line.startswith(b"Pss:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return rss


class ProcessTreeSampler:
    """Reads a `ResourceSample` for a process and its descendants (the server's terminals).

    The tree is walked through `/proc/PID/task/TID/children` (only our own processes are
    read, where psutil's `children()` reads every process on the machine: 15 ms here with a
    hundred of them), and each process's memory and CPU come from its own `/proc` files.
    Reading PSS costs the kernel a walk of the process's mappings (0.1-0.6 ms each), which
    is why the manager samples it in a worker thread (`blocking`).
    """

    blocking = True  # read off the event loop

    def __init__(
        self,
        pid: int | None = None,
        *,
        cgroup: CgroupMemory | None = None,
        cgroup_cpu: CgroupCpu | None = None,
        clock: Callable[[], float] | None = None,
        use_pss: bool = True,
        find_cgroups: bool = True,
        also: Callable[[], Sequence[int]] | None = None,
    ) -> None:
        self.pid = pid or os.getpid()
        # More trees the bridge owns though they are not our children: the terminal host.
        self._also = also
        found_memory, found_cpu = cgroup_for_self() if find_cgroups else (None, None)
        self._cgroup = cgroup if cgroup is not None else found_memory
        self._cgroup_cpu = cgroup_cpu if cgroup_cpu is not None else found_cpu
        self._clock = clock or _monotonic
        self._use_pss = use_pss
        self._tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self._page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
        try:
            self._affinity = len(os.sched_getaffinity(0)) or (os.cpu_count() or 1)
        except (AttributeError, OSError):
            self._affinity = os.cpu_count() or 1
        # CPU seconds per live pid at the previous sample: a process that exited in between
        # takes its time with it, so the delta is taken per pid, never on a total.
        self._cpu: dict[int, float] = {}
        self._at: float | None = None

    def tree(self) -> list[int]:
        """This process and its descendants (and the `also` trees), parents first."""
        pids, i = [self.pid], 0
        if self._also is not None:
            pids += [pid for pid in self._also() if pid not in pids]
        while i < len(pids):
            pid = pids[i]
            i += 1
            try:
                tasks = os.listdir(f"/proc/{pid}/task")
            except OSError:
                continue
            for tid in tasks:
                try:
                    with open(f"/proc/{pid}/task/{tid}/children", "rb") as f:
                        pids.extend(int(child) for child in f.read().split())
                except (OSError, ValueError):
                    continue
        return pids

    def usable_cores(self) -> float:
        """The cores this process may run on: its affinity, or its cgroup's CPU quota where
        that is less (a container allowed half a core is overloaded at half a core)."""
        quota = self._cgroup_cpu.cores() if self._cgroup_cpu is not None else None
        return min(float(self._affinity), quota) if quota else float(self._affinity)

    def _process(self, pid: int) -> tuple[int, float] | None:
        """(memory bytes, CPU seconds) of one process, None if it is gone."""
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                stat = f.read()
            with open(f"/proc/{pid}/statm", "rb") as f:
                rss = int(f.read().split()[1]) * self._page
        except (OSError, ValueError, IndexError):
            return None
        # Fields after the command name, which may hold spaces and parentheses.
        fields = stat[stat.rfind(b")") + 2 :].split()
        cpu = (int(fields[11]) + int(fields[12])) / self._tick  # utime + stime
        memory = proportional_set_size(pid, rss) if self._use_pss else rss
        return memory, cpu

    def __call__(self) -> ResourceSample:
        owned = 0
        cpu_now: dict[int, float] = {}
        for pid in self.tree():
            found = self._process(pid)
            if found is not None:
                owned += found[0]
                cpu_now[pid] = found[1]
        now = self._clock()
        cpu_percent = 0.0
        if self._at is not None and now > self._at:
            used = sum(max(0.0, t - self._cpu.get(pid, t)) for pid, t in cpu_now.items())
            cpu_percent = min(100.0, 100.0 * used / ((now - self._at) * self.usable_cores()))
        self._cpu, self._at = cpu_now, now
        cgroup_bytes = cgroup_limit = None
        if self._cgroup is not None:
            cgroup_bytes, cgroup_limit = self._cgroup.read()
        vm = psutil.virtual_memory()
        available = 100.0 * vm.available / vm.total if vm.total else 100.0
        return ResourceSample(owned, cgroup_bytes, cgroup_limit, available, cpu_percent)


def _monotonic() -> float:
    import time

    return time.monotonic()


def psutil_sampler(also: Callable[[], Sequence[int]] | None = None) -> Sampler:
    """The default sampler: this process and its descendants (and the `also` trees)."""
    return ProcessTreeSampler(also=also)


@dataclass
class ResourceStats:
    pressure: float = 0.0
    band: str = Band.NORMAL.name.lower()
    owned_bytes: int = 0
    budget_bytes: int = 0
    cgroup_bytes: int | None = None
    cgroup_limit: int | None = None
    available_percent: float = 100.0
    cpu_percent: float = 0.0
    cpu_overloaded: bool = False
    admission: str = Admission.ALL.name.lower()
    quality: int = 3
    samples: int = 0
    collections: int = 0
    refused: int = 0
    throttled: bool = False
    actions: dict[str, int] = field(default_factory=dict)
    freed: dict[str, int] = field(default_factory=dict)

    def to_wire(self) -> dict[str, object]:
        return {
            "pressure": self.pressure,
            "band": self.band,
            "ownedBytes": self.owned_bytes,
            "budgetBytes": self.budget_bytes,
            "cgroupBytes": self.cgroup_bytes,
            "cgroupLimitBytes": self.cgroup_limit,
            "machineAvailablePercent": self.available_percent,
            "cpuPercent": self.cpu_percent,
            "cpuOverloaded": self.cpu_overloaded,
            "admission": self.admission,
            "refused": self.refused,
            "collections": self.collections,
        }


class ResourceManager:
    def __init__(
        self,
        *,
        budget_bytes: int = DEFAULT_BUDGET_BYTES,
        clock: Clock = SYSTEM_CLOCK,
        sampler: Sampler | None = None,
        policy: PressurePolicy | None = None,
        interval: float = 1.0,
        busy_interval: float = 0.25,
        degrade: Callable[[str], object] | None = None,
        restore: Callable[[str], object] | None = None,
        collect: Callable[[], object] = gc.collect,
        collect_every: float = 5.0,
        machine_floor_percent: float = 5.0,
    ) -> None:
        if budget_bytes <= 0:
            raise ValueError(f"the memory budget must be positive, got {budget_bytes}")
        self.budget_bytes = budget_bytes
        self._clock = clock
        self._sampler = sampler or psutil_sampler()
        self.policy = policy or PressurePolicy()
        self.interval = interval
        self.busy_interval = min(busy_interval, interval)
        self._degrade = degrade
        self._restore = restore
        self._collect = collect
        self.collect_every = collect_every
        self.machine_floor_percent = machine_floor_percent
        self._collected_at: float | None = None
        self._reliefs: list[Relief] = []
        self._stats = ResourceStats(budget_bytes=budget_bytes, quality=self.policy.quality)
        self._task: asyncio.Task[None] | None = None
        self._refusal_logged: dict[str, float] = {}

    def register(self, relief: Relief) -> Callable[[], None]:
        self._reliefs.append(relief)

        def remove() -> None:
            if relief in self._reliefs:
                self._reliefs.remove(relief)

        return remove

    @property
    def pressure(self) -> float:
        return self._stats.pressure

    def admit(self, operation: str) -> None:
        """Raise ResourceExhausted when `operation` must wait for pressure to ease."""
        if self.policy.admits(operation):
            return
        stats = self._stats
        stats.refused += 1
        memory_only = self.policy.admission_for(self.policy.band, cpu_overloaded=False)
        if self.policy.admits(operation, memory_only):
            why = f"CPU overload ({stats.cpu_percent:.0f} % of the usable cores)"
        else:
            why = f"memory pressure {stats.pressure:.0f}/100 ({stats.band})"
        # One line per operation per interval of tight admission, not one per request.
        now = self._clock.now()
        last = self._refusal_logged.get(operation)
        if last is None or now - last >= 10.0:
            self._refusal_logged[operation] = now
            log.warning("refusing %s: %s", operation, why)
        raise ResourceExhausted(f"{operation} refused: {why}; retry later")

    async def _read(self) -> tuple[ResourceSample, float]:
        if getattr(self._sampler, "blocking", False):
            # Off the loop: reading every process's /proc files must not delay a request.
            sample = await asyncio.to_thread(self._sampler)
        else:
            sample = self._sampler()
        return sample, sample.pressure(
            self.budget_bytes, machine_floor_percent=self.machine_floor_percent
        )

    def _should_collect(self, pressure: float, now: float) -> bool:
        policy = self.policy
        entering = policy.admission_for(policy.band_for(pressure), cpu_overloaded=False)
        if entering > policy.admission_for(policy.band, cpu_overloaded=False):
            return True
        if policy.throttled and not policy.cpu_overloaded:
            return self._collected_at is None or now - self._collected_at >= self.collect_every
        return False

    async def check(self) -> PressureDecision:
        """Sample once (twice around a collection), decide, and carry out the decision."""
        now = self._clock.now()
        sample, pressure = await self._read()
        stats = self._stats
        if self._should_collect(pressure, now):
            self._collect()
            self._collected_at = now
            stats.collections += 1
            cpu = sample.cpu_percent  # the collection's own CPU time is not the load's
            sample, pressure = await self._read()
            sample = ResourceSample(
                sample.owned_bytes,
                sample.cgroup_bytes,
                sample.cgroup_limit,
                sample.available_percent,
                cpu,
            )
        before = (self.policy.band, self.policy.admission, self.policy.cpu_overloaded)
        decision = self.policy.decide(pressure, now, cpu_percent=sample.cpu_percent)
        stats.pressure, stats.band = pressure, decision.band.name.lower()
        stats.owned_bytes, stats.samples = sample.owned_bytes, stats.samples + 1
        stats.cgroup_bytes, stats.cgroup_limit = sample.cgroup_bytes, sample.cgroup_limit
        stats.available_percent, stats.cpu_percent = sample.available_percent, sample.cpu_percent
        stats.cpu_overloaded = decision.cpu_overloaded
        stats.admission = decision.admission.name.lower()
        stats.quality = decision.quality
        stats.throttled = self.policy.throttled
        after = (decision.band, decision.admission, decision.cpu_overloaded)
        if after != before:
            log.warning(
                "pressure %.0f/100: band %s, admission %s, CPU %.0f %%%s",
                pressure,
                stats.band,
                stats.admission,
                sample.cpu_percent,
                " (overloaded)" if decision.cpu_overloaded else "",
            )
        for action in decision.actions:
            stats.actions[action.value] = stats.actions.get(action.value, 0) + 1
            await self._carry_out(action, pressure)
        return decision

    async def _carry_out(self, action: Action, pressure: float) -> None:
        reason = f"pressure {pressure:.0f}/100 ({self._stats.band})"
        if action is Action.DEGRADE and self._degrade is not None:
            self._degrade(reason)
        elif action is Action.RESTORE and self._restore is not None:
            self._restore(reason)
        for relief in list(self._reliefs):
            freed = 0
            try:
                if action is Action.TRIM_CACHE and relief.trim_cache is not None:
                    freed = relief.trim_cache(0.5)
                elif action is Action.CLEAR_CACHE and relief.clear_cache is not None:
                    freed = relief.clear_cache()
                elif action is Action.SPILL_SPOOLS and relief.spill_spools is not None:
                    spilled = relief.spill_spools()
                    freed = await spilled if isinstance(spilled, Awaitable) else spilled
                elif action is Action.REAP_IDLE and relief.reap_idle is not None:
                    freed = await relief.reap_idle()
            except Exception:  # one failing relief must not stop the others, nor sampling
                log.exception("relief %s failed on %s", relief.name, action.value)
                continue
            if freed:
                key = f"{relief.name}.{action.value}"
                self._stats.freed[key] = self._stats.freed.get(key, 0) + freed

    async def run(self) -> None:
        while True:
            try:
                await self.check()
            except Exception:  # a failed sample must not end sampling for good
                log.exception("resource sampling failed")
            await self._clock.sleep(self.next_interval())

    def next_interval(self) -> float:
        """Seconds to the next sample: short while a quality step or a refusal is pending."""
        return self.interval if self.policy.settled else self.busy_interval

    async def __aenter__(self) -> ResourceManager:
        self._task = asyncio.get_running_loop().create_task(self.run(), name="resource-manager")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def statistics(self) -> ResourceStats:
        s = self._stats
        return ResourceStats(
            **{**s.__dict__, "actions": dict(s.actions), "freed": dict(s.freed)},
        )
