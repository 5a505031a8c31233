"""Resource pressure: from a memory reading to the actions that relieve it.

Theory of operation: pressure is a number 0..100, the larger of the process's resident set as
a share of its budget and the machine's used memory share. `PressurePolicy.decide()` maps a
reading to a band and the band to actions, with hysteresis so a reading that hovers at a
threshold does not flap: a band is entered at its threshold and left only `hysteresis` points
below it. Actions escalate with the band, following the recovery matrix's resource rows:
Resource/Recoverable "throttle operations → reduce quality" (elevated, high) and
Resource/Critical "free resources → graceful shutdown" (critical: everything that can be
dropped is dropped; shutdown is left to the operator, since losing work is worse than being
slow). Quality comes back one level at a time, only after pressure has stayed under
`restore_below` for `restore_after` seconds, so relief is not undone by the next sample.
The policy is pure: it never measures or frees anything itself.
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
    TRIM_SPOOLS = "trim_spools"  # delete finished command output spools, oldest first
    REAP_IDLE_TERMINALS = "reap_idle_terminals"
    THROTTLE = "throttle"  # refuse new expensive work (terminal/create, large reads)
    UNTHROTTLE = "unthrottle"
    DEGRADE = "degrade"  # one quality level down
    RESTORE = "restore"  # one quality level up


@dataclass(frozen=True, slots=True)
class ResourceSample:
    rss_bytes: int
    system_used_percent: float  # 0..100

    def pressure(self, budget_bytes: int) -> float:
        own = 100.0 * self.rss_bytes / budget_bytes if budget_bytes > 0 else 0.0
        return max(0.0, min(100.0, max(own, self.system_used_percent)))


@dataclass(frozen=True, slots=True)
class PressureDecision:
    pressure: float
    band: Band
    actions: tuple[Action, ...]


_BAND_ACTIONS: dict[Band, tuple[Action, ...]] = {
    Band.NORMAL: (),
    Band.ELEVATED: (Action.TRIM_CACHE, Action.TRIM_SPOOLS),
    Band.HIGH: (Action.TRIM_CACHE, Action.TRIM_SPOOLS, Action.REAP_IDLE_TERMINALS,
                Action.THROTTLE, Action.DEGRADE),
    Band.CRITICAL: (Action.CLEAR_CACHE, Action.TRIM_SPOOLS, Action.REAP_IDLE_TERMINALS,
                    Action.THROTTLE, Action.DEGRADE),
}  # fmt: skip


class PressurePolicy:
    def __init__(
        self,
        *,
        elevated: float = 70.0,
        high: float = 85.0,
        critical: float = 95.0,
        hysteresis: float = 5.0,
        restore_below: float = 30.0,
        restore_after: float = 5.0,
        max_degrade: int = 3,
    ) -> None:
        if not 0 < elevated < high < critical <= 100:
            raise ValueError("thresholds must rise: 0 < elevated < high < critical <= 100")
        self._thresholds = {Band.ELEVATED: elevated, Band.HIGH: high, Band.CRITICAL: critical}
        self.hysteresis = hysteresis
        self.restore_below = restore_below
        self.restore_after = restore_after
        self.max_degrade = max_degrade
        self.band = Band.NORMAL
        self._calm_since: float | None = None
        self._degraded_steps = 0
        self._throttled = False

    def _band_for(self, pressure: float) -> Band:
        band = Band.NORMAL
        for candidate, threshold in self._thresholds.items():
            # The current band (and those below it) are kept until pressure falls
            # `hysteresis` under their threshold.
            limit = threshold - self.hysteresis if candidate <= self.band else threshold
            if pressure >= limit:
                band = candidate
        return band

    def decide(self, pressure: float, now: float) -> PressureDecision:
        self.band = self._band_for(pressure)
        actions = list(_BAND_ACTIONS[self.band])
        if Action.DEGRADE in actions:
            self._calm_since = None
            if self._degraded_steps < self.max_degrade:
                self._degraded_steps += 1
            else:  # already at the lowest quality: nothing more to give up
                actions.remove(Action.DEGRADE)
        if Action.THROTTLE in actions:
            if self._throttled:
                actions.remove(Action.THROTTLE)
            self._throttled = True
        elif self._throttled and self.band <= Band.ELEVATED:
            self._throttled = False
            actions.append(Action.UNTHROTTLE)
        if pressure < self.restore_below and self._degraded_steps > 0:
            if self._calm_since is None:
                self._calm_since = now
            elif now - self._calm_since >= self.restore_after:
                self._degraded_steps -= 1
                self._calm_since = now  # the next level needs its own calm period
                actions.append(Action.RESTORE)
        elif pressure >= self.restore_below:
            self._calm_since = None
        return PressureDecision(pressure, self.band, tuple(actions))

    @property
    def throttled(self) -> bool:
        return self._throttled
