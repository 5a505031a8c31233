"""Quality levels: which optional features are on, stepped down under trouble and back up.

Theory of operation: quality is a level 0..3. Each optional feature has the lowest level at
which it is on: `decorations` 3, `shell_integration` 2, `file_watching` 1; so level 3 is
everything, 2 drops decorations, 1 also shell integration, 0 also file watching. `degrade`
and `restore` move one level (a pressure policy or a failing subsystem calls them, with a
reason); `set_level` jumps. A per-feature override (`force`) pins one feature on or off
whatever the level, until cleared with `force(feature, None)`.

Invariants: the level stays within 0..max; `is_enabled` is one dict lookup (services call it
on hot paths) and answers True for a feature this manager does not govern, so asking about a
new feature never disables it by accident; every change of what is enabled publishes exactly
one `QualityChanged` on the bus, and a call that changes nothing publishes nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from lapce_bridge.core.errors import InvalidParams
from lapce_bridge.core.retry import system_clock

if TYPE_CHECKING:
    from lapce_bridge.core.clock import Clock
    from lapce_bridge.core.events import EventBus

SHELL_INTEGRATION = "shell_integration"
FILE_WATCHING = "file_watching"
DECORATIONS = "decorations"

# feature -> lowest level at which it is on
DEFAULT_FEATURES: Mapping[str, int] = {
    DECORATIONS: 3,
    SHELL_INTEGRATION: 2,
    FILE_WATCHING: 1,
}
MAX_LEVEL = 3


@dataclass(frozen=True, slots=True)
class QualityChanged:
    from_level: int
    to_level: int
    reason: str
    features: dict[str, bool]  # what is enabled after the change


@dataclass(frozen=True, slots=True)
class DegradationStats:
    level: int
    features: dict[str, bool]
    forced: dict[str, bool]
    degradations: int
    restorations: int
    changes: int
    last_reason: str
    last_change_at: float | None
    seconds_degraded: float  # total time spent below the top level


class DegradationManager:
    __slots__ = (
        "_bus",
        "_changes",
        "_clock",
        "_degradations",
        "_degraded_since",
        "_degraded_total",
        "_enabled",
        "_forced",
        "_last_change_at",
        "_last_reason",
        "_level",
        "_restorations",
        "_thresholds",
        "max_level",
    )

    def __init__(
        self,
        *,
        level: int = MAX_LEVEL,
        features: Mapping[str, int] | None = None,
        bus: EventBus | None = None,
        clock: Clock | None = None,
    ) -> None:
        thresholds = dict(DEFAULT_FEATURES if features is None else features)
        self.max_level = max(MAX_LEVEL, *thresholds.values()) if thresholds else MAX_LEVEL
        for name, minimum in thresholds.items():
            if not 0 <= minimum <= self.max_level:
                raise InvalidParams(f"feature {name!r} needs a level in 0..{self.max_level}")
        self._thresholds = thresholds
        self._check_level(level)
        self._bus = bus
        self._clock = clock if clock is not None else system_clock()
        self._level = level
        self._forced: dict[str, bool] = {}
        self._enabled: dict[str, bool] = {}
        self._degradations = 0
        self._restorations = 0
        self._changes = 0
        self._last_reason = ""
        self._last_change_at: float | None = None
        self._degraded_total = 0.0
        self._degraded_since = self._clock.now() if level < self.max_level else None
        self._recompute()

    # -- queries (hot) --------------------------------------------------------------------
    @property
    def level(self) -> int:
        return self._level

    def is_enabled(self, feature: str) -> bool:
        return self._enabled.get(feature, True)

    def features(self) -> dict[str, bool]:
        return dict(self._enabled)

    # -- changes --------------------------------------------------------------------------
    def degrade(self, reason: str) -> int:
        """One level down (not below 0); returns the new level."""
        if self._level > 0:
            self._degradations += 1
            self._move(self._level - 1, reason)
        return self._level

    def restore(self, reason: str) -> int:
        """One level up (not above the top); returns the new level."""
        if self._level < self.max_level:
            self._restorations += 1
            self._move(self._level + 1, reason)
        return self._level

    def set_level(self, level: int, reason: str = "set") -> int:
        self._check_level(level)
        if level < self._level:
            self._degradations += 1
        elif level > self._level:
            self._restorations += 1
        self._move(level, reason)
        return self._level

    def force(self, feature: str, enabled: bool | None, reason: str = "") -> None:
        """Pin `feature` on or off whatever the level; None lets the level decide again."""
        if feature not in self._thresholds:
            known = ", ".join(sorted(self._thresholds))
            raise InvalidParams(f"unknown feature {feature!r}; known: {known}")
        if enabled is None:
            self._forced.pop(feature, None)
        else:
            self._forced[feature] = bool(enabled)
        self._move(self._level, reason or f"force {feature}={enabled}")

    # -- internals ------------------------------------------------------------------------
    def _check_level(self, level: int) -> None:
        if isinstance(level, bool) or not isinstance(level, int):
            raise InvalidParams(f"quality level must be an integer, got {level!r}")
        if not 0 <= level <= self.max_level:
            raise InvalidParams(f"quality level must be in 0..{self.max_level}, got {level}")

    def _recompute(self) -> dict[str, bool]:
        level, forced = self._level, self._forced
        self._enabled = {
            name: forced.get(name, level >= minimum) for name, minimum in self._thresholds.items()
        }
        return self._enabled

    def _move(self, level: int, reason: str) -> None:
        before_level, before = self._level, self._enabled
        self._level = level
        after = self._recompute()
        if level == before_level and after == before:
            return
        now = self._clock.now()
        if level < self.max_level and self._degraded_since is None:
            self._degraded_since = now
        elif level == self.max_level and self._degraded_since is not None:
            self._degraded_total += now - self._degraded_since
            self._degraded_since = None
        self._changes += 1
        self._last_reason = reason
        self._last_change_at = now
        if self._bus is not None:
            self._bus.publish(QualityChanged(before_level, level, reason, dict(after)))

    def statistics(self) -> DegradationStats:
        degraded = self._degraded_total
        if self._degraded_since is not None:
            degraded += self._clock.now() - self._degraded_since
        return DegradationStats(
            level=self._level,
            features=dict(self._enabled),
            forced=dict(self._forced),
            degradations=self._degradations,
            restorations=self._restorations,
            changes=self._changes,
            last_reason=self._last_reason,
            last_change_at=self._last_change_at,
            seconds_degraded=degraded,
        )


__all__ = [
    "DECORATIONS",
    "DEFAULT_FEATURES",
    "FILE_WATCHING",
    "MAX_LEVEL",
    "SHELL_INTEGRATION",
    "DegradationManager",
    "DegradationStats",
    "QualityChanged",
]
