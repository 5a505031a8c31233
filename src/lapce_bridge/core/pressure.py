"""Resource pressure: from readings of what the bridge owns to the actions that relieve it.

Theory of operation: pressure is a number 0..100, the largest of
- the memory the bridge owns (the server and its terminals, the process tree's proportional
  set size) as a share of its budget (`serve --memory-budget`);
- the working set of the bridge's container as a share of its cgroup limit (v2 `memory.max`
  or v1 `memory.limit_in_bytes`), when there is one: a container is killed at its limit,
  whatever the budget says;
- the machine, only as a last resort: when less than `machine_floor_percent` (5 %) of its
  memory is available, pressure is `100 - available %`, so critical. Above that floor the
  machine's use plays no part: a developer laptop at 70 % is not the bridge's problem, and
  shedding our load would not relieve it.
CPU (the server and its terminals, as a share of the cores this process may use: its
affinity, or its cgroup's CPU quota where that is less) is a
second, separate signal: past `cpu_high` it throttles new terminals, until it falls under
`cpu_low`; it never sheds or degrades anything.

`PressurePolicy.decide()` maps pressure to a band, with hysteresis so a reading that hovers at
a threshold does not flap: a band is entered above its threshold and left only `hysteresis`
points below it. The bands are the specification's: 0-30 normal, 31-60 elevated, 61-80 high,
81-100 critical. Each band has its actions (the recovery matrix's resource rows: "throttle
operations -> reduce quality" for recoverable pressure, "free resources" for critical; a
graceful shutdown is left to the operator, since losing work is worse than being slow):

    band      relief                                 admission                 quality at most
    normal    -                                      all                       3
    elevated  trim caches, spill spools to disk      all                       2
    high      + reap idle terminals and connections  no new terminals/watches  1
    critical  clear caches instead of trimming       no new async work         0

Whatever the band, what stops, finishes or reads back admitted work (interrupt, close,
sendText, wait, readOutput, unwatch, shutdown) is admitted: refusing it would keep the load.

Quality follows the band's ceiling: it is stepped down one level per sample while above the
ceiling, and stepped back up one level at a time as pressure falls through the bands, each
step after `restore_after` seconds under that band's ceiling, so relief is not undone by the
next sample and a machine that stays at 50 % is not kept at quality 0.

The driver samples often while the policy is not `settled` (quality away from its band's
ceiling, or memory admission tight), and rarely otherwise: the specification gives quality
5 s to come back once a load ends, and three steps of `restore_after` (0.5 s) after a
sample 0.25 s late take 1.75 s, where one sample a second and 1 s steps took up to 4 s
and more on a busy machine.

The policy is pure: it never measures or frees anything itself; `resources.py` drives it.
Invariants: the quality it asks for stays within 0..max_level; a step up happens only after
`restore_after` seconds in which every sample allowed it; admission is never looser than
the band's (the CPU signal can only tighten it).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum, StrEnum


class Band(IntEnum):
    NORMAL = 0
    ELEVATED = 1
    HIGH = 2
    CRITICAL = 3


class Action(StrEnum):
    TRIM_CACHE = "trim_cache"  # drop the colder half of cached file contents
    CLEAR_CACHE = "clear_cache"
    SPILL_SPOOLS = "spill_spools"  # move finished outputs held in memory to their files
    REAP_IDLE = "reap_idle"  # close idle terminals and connections (remembered, recreated)
    THROTTLE = "throttle"  # admission tightened (see `Admission`)
    UNTHROTTLE = "unthrottle"  # admission loosened
    DEGRADE = "degrade"  # one quality level down
    RESTORE = "restore"  # one quality level up


class Admission(IntEnum):
    """What new work is let in; a larger value refuses more."""

    ALL = 0
    NO_NEW_TERMINALS = 1  # new terminals and watches refused (high memory, or CPU overload)
    NO_NEW_WORK = 2  # every new async request refused (critical memory)


# Operations refused at NO_NEW_TERMINALS: what costs a process or a watch per call.
COSTLY_OPERATIONS = frozenset({"terminal/create", "fs/watch"})
# Never refused: what stops, finishes or reads back work already admitted. Refusing them
# would keep the very load that causes the pressure (an interrupt refused under pressure
# leaves its command running).
RELIEVING_OPERATIONS = frozenset(
    {
        "terminal/interrupt",
        "terminal/close",
        "terminal/sendText",
        "terminal/wait",
        "terminal/readOutput",
        "terminal/resume",
        "fs/unwatch",
        "shutdown",
    }
)


@dataclass(frozen=True, slots=True)
class ResourceSample:
    """One reading. Byte counts are None where the source does not exist (no cgroup limit)."""

    owned_bytes: int  # the server and its terminals
    cgroup_bytes: int | None = None  # the container's working set (memory.current - inactive file)
    cgroup_limit: int | None = None  # memory.max
    available_percent: float = 100.0  # the machine's available memory, 0..100
    cpu_percent: float = 0.0  # the server and its terminals, share of the usable cores, 0..100

    def pressure(self, budget_bytes: int, *, machine_floor_percent: float = 5.0) -> float:
        own = 100.0 * self.owned_bytes / budget_bytes if budget_bytes > 0 else 0.0
        container = 0.0
        if self.cgroup_bytes is not None and self.cgroup_limit:
            container = 100.0 * self.cgroup_bytes / self.cgroup_limit
        machine = 0.0
        if self.available_percent < machine_floor_percent:
            machine = 100.0 - self.available_percent
        return max(0.0, min(100.0, max(own, container, machine)))


@dataclass(frozen=True, slots=True)
class PressureDecision:
    pressure: float
    band: Band
    actions: tuple[Action, ...]
    admission: Admission
    quality: int  # the quality level the policy wants now
    cpu_overloaded: bool


_RELIEF: dict[Band, tuple[Action, ...]] = {
    Band.NORMAL: (),
    Band.ELEVATED: (Action.TRIM_CACHE, Action.SPILL_SPOOLS),
    Band.HIGH: (Action.TRIM_CACHE, Action.SPILL_SPOOLS, Action.REAP_IDLE),
    Band.CRITICAL: (Action.CLEAR_CACHE, Action.SPILL_SPOOLS, Action.REAP_IDLE),
}
_ADMISSION: dict[Band, Admission] = {
    Band.NORMAL: Admission.ALL,
    Band.ELEVATED: Admission.ALL,
    Band.HIGH: Admission.NO_NEW_TERMINALS,
    Band.CRITICAL: Admission.NO_NEW_WORK,
}


class PressurePolicy:
    def __init__(
        self,
        *,
        elevated: float = 30.0,
        high: float = 60.0,
        critical: float = 80.0,
        hysteresis: float = 5.0,
        restore_after: float = 0.5,
        max_level: int = 3,
        cpu_high: float = 90.0,
        cpu_low: float = 70.0,
    ) -> None:
        if not 0 < elevated < high < critical < 100:
            raise ValueError("thresholds must rise: 0 < elevated < high < critical < 100")
        if not 0 <= hysteresis < elevated:
            raise ValueError("hysteresis must be within 0..elevated")
        if not 0 < cpu_low <= cpu_high:
            raise ValueError("CPU thresholds need 0 < cpu_low <= cpu_high")
        self._thresholds = {Band.ELEVATED: elevated, Band.HIGH: high, Band.CRITICAL: critical}
        self.hysteresis = hysteresis
        self.restore_after = restore_after
        self.max_level = max_level
        self.cpu_high = cpu_high
        self.cpu_low = cpu_low
        self.band = Band.NORMAL
        self.quality = max_level
        self.admission = Admission.ALL
        self.cpu_overloaded = False
        self._allowed_since: float | None = None  # since when a step up has been allowed

    def threshold(self, band: Band) -> float:
        """Pressure above which `band` is entered (0 for normal)."""
        return self._thresholds.get(band, 0.0)

    def ceiling(self, band: Band) -> int:
        """The highest quality level a band allows."""
        return max(0, self.max_level - int(band))

    def band_for(self, pressure: float) -> Band:
        """The band `pressure` puts the policy in, from its current band (no state change)."""
        band = Band.NORMAL
        for candidate, threshold in self._thresholds.items():
            # The current band (and those below it) are kept until pressure falls
            # `hysteresis` under their threshold.
            limit = threshold - self.hysteresis if candidate <= self.band else threshold
            if pressure > limit:
                band = candidate
        return band

    def admission_for(self, band: Band, cpu_overloaded: bool) -> Admission:
        admission = _ADMISSION[band]
        if cpu_overloaded:
            admission = max(admission, Admission.NO_NEW_TERMINALS)
        return admission

    def decide(self, pressure: float, now: float, *, cpu_percent: float = 0.0) -> PressureDecision:
        self.band = band = self.band_for(pressure)
        if self.cpu_overloaded:
            self.cpu_overloaded = cpu_percent >= self.cpu_low
        else:
            self.cpu_overloaded = cpu_percent > self.cpu_high
        actions = list(_RELIEF[band])
        admission = self.admission_for(band, self.cpu_overloaded)
        if admission > self.admission:
            actions.append(Action.THROTTLE)
        elif admission < self.admission:
            actions.append(Action.UNTHROTTLE)
        self.admission = admission
        ceiling = self.ceiling(band)
        if self.quality > ceiling:
            self.quality -= 1
            self._allowed_since = None
            actions.append(Action.DEGRADE)
        elif self.quality < ceiling:
            if self._allowed_since is None:
                self._allowed_since = now
            elif now - self._allowed_since >= self.restore_after:
                self.quality += 1
                self._allowed_since = now  # the next level needs its own calm period
                actions.append(Action.RESTORE)
        else:
            self._allowed_since = None
        return PressureDecision(
            pressure, band, tuple(actions), admission, self.quality, self.cpu_overloaded
        )

    @property
    def throttled(self) -> bool:
        return self.admission is not Admission.ALL

    @property
    def settled(self) -> bool:
        """Nothing pending: quality at its band's ceiling and memory admitting all new work.

        (CPU overload alone leaves the policy settled: sampling faster would add to it.)"""
        return self.quality == self.ceiling(self.band) and _ADMISSION[self.band] is Admission.ALL

    def admits(self, operation: str, admission: Admission | None = None) -> bool:
        """Whether new work called `operation` (an async method) is let in now (or under
        `admission`)."""
        admission = self.admission if admission is None else admission
        if admission is Admission.ALL or operation in RELIEVING_OPERATIONS:
            return True
        if admission is Admission.NO_NEW_TERMINALS:
            return operation not in COSTLY_OPERATIONS
        return False
