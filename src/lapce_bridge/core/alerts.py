"""Health alerts: the events `HealthMonitor` publishes on the bus.

Each alert is an episode: one event when its condition starts holding, one `AlertCleared` when
it stops. `to_wire()` is the `health/alert` notification's params.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar


@dataclass(frozen=True, slots=True)
class HealthEvent:
    operation: str  # "*" for the SLO, which covers every operation
    detail: str
    kind: ClassVar[str] = ""
    critical: ClassVar[bool] = False  # a critical alert with an open breaker is "unhealthy"

    def to_wire(self) -> dict[str, Any]:
        return {"kind": self.kind, "operation": self.operation, "detail": self.detail}


@dataclass(frozen=True, slots=True)
class HighFailureRate(HealthEvent):
    failure_rate: float
    calls: int
    kind: ClassVar[str] = "HighFailureRate"
    critical: ClassVar[bool] = True


@dataclass(frozen=True, slots=True)
class HighLatency(HealthEvent):
    slow_calls: int  # calls slower than twice the target
    calls: int
    target_p99: float
    kind: ClassVar[str] = "HighLatency"


@dataclass(frozen=True, slots=True)
class HighBurnRate(HealthEvent):
    short_burn_rate: float
    long_burn_rate: float
    kind: ClassVar[str] = "HighBurnRate"
    critical: ClassVar[bool] = True


@dataclass(frozen=True, slots=True)
class AlertCleared(HealthEvent):
    cleared: str  # the kind of the alert that ended
    kind: ClassVar[str] = "AlertCleared"


Alert = HighFailureRate | HighLatency | HighBurnRate
ALERT_TYPES: tuple[type, ...] = (HighFailureRate, HighLatency, HighBurnRate, AlertCleared)
