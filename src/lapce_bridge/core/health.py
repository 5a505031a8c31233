"""Health: windowed failure rates and latency per operation, alerts, SLO burn rates, status.

Theory of operation: every window is a ring of `slots` time slots of equal width on the
injected clock. A record lands in the slot of `floor(now / width)`; moving the clock forward
empties the slots it passes (at most `slots` of them, however far it moved), so a record costs
O(1) and memory is bounded whatever the traffic. Each operation has a window (`window`, 60 s)
counting calls, failures, calls slower than twice its target, and a sparse bucket count for
windowed quantiles; the SLO keeps a short and a long window (300 s and 3600 s) of calls and
failures across all operations.

Invariants:
- A record made at time t counts until the clock reaches `floor(t / width) * width + window`
  and not an instant longer: windows slide in whole slots, exactly at slot boundaries.
- Alerts are episodes: one event when a condition starts holding, one `AlertCleared` when it
  stops; records in between publish nothing. Conditions are checked for an operation at each
  of its records (so an alert fires at the very record that crosses) and for all operations in
  `evaluate()` and `report()` (so an alert clears once its window has slid past the episode
  even when no new calls arrive).
- `HighFailureRate`: at least `min_calls` calls in the window and failures / calls above
  `failure_rate_threshold`. `HighLatency`: at least `min_calls` calls and the window's
  nearest-rank p99 above twice the target, i.e. more than `calls - ceil(0.99 * calls)` calls
  slower than twice the target (an exact count, no quantile estimate). `HighBurnRate` (the
  SRE multi-window page): the error-budget burn rate above `burn_rate_threshold` (14.4) in
  both the short and the long window, with at least `min_calls` calls in the short one.
- Burn rate = error rate / (1 - slo_target). Availability, error rate and error budget are
  over the long window; with no calls, availability is 1 and the budget untouched.
- Status (report): "unhealthy" when quality level is 0, pressure >= 90, or a breaker is open
  while a critical alert (HighFailureRate, HighBurnRate) is active; "degraded" when any alert
  is active, any breaker is not closed, quality level < 3 or pressure >= 70; else "healthy".
- Operation names are bounded by `max_operations`; further names fold into "other".
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from lapce_bridge.core.errors import InvalidParams
from lapce_bridge.core.metrics import (
    OTHER_OPERATION,
    HistogramSnapshot,
    bucket_index,
    check_duration,
)

if TYPE_CHECKING:
    from lapce_bridge.core.clock import Clock
    from lapce_bridge.core.events import EventBus

# Target p99 per operation, from the goal column of BENCHMARKS.md.
DEFAULT_TARGETS: Mapping[str, float] = {
    "terminal/execute": 3e-3,  # `echo test` end to end
    "fs/read": 200e-6,  # a disk read; a cached one is far below
    "fs/read/cached": 30e-6,  # for a service that times cache hits apart
    "ping": 200e-6,  # IPC round trip
}
PAGE_BURN_RATE = 14.4  # spends 2 % of a 30-day budget in an hour
BREAKER_STATES = frozenset({"closed", "open", "half_open"})


# -- alerts (published on the bus; `to_wire` is the `health/alert` notification) -------------


@dataclass(frozen=True, slots=True)
class HighFailureRate:
    operation: str
    detail: str
    failure_rate: float
    calls: int
    kind: ClassVar[str] = "HighFailureRate"
    critical: ClassVar[bool] = True

    def to_wire(self) -> dict[str, Any]:
        return {"kind": self.kind, "operation": self.operation, "detail": self.detail}


@dataclass(frozen=True, slots=True)
class HighLatency:
    operation: str
    detail: str
    slow_calls: int  # calls slower than twice the target
    calls: int
    target_p99: float
    kind: ClassVar[str] = "HighLatency"
    critical: ClassVar[bool] = False

    def to_wire(self) -> dict[str, Any]:
        return {"kind": self.kind, "operation": self.operation, "detail": self.detail}


@dataclass(frozen=True, slots=True)
class HighBurnRate:
    operation: str  # "*": the SLO covers every operation
    detail: str
    short_burn_rate: float
    long_burn_rate: float
    kind: ClassVar[str] = "HighBurnRate"
    critical: ClassVar[bool] = True

    def to_wire(self) -> dict[str, Any]:
        return {"kind": self.kind, "operation": self.operation, "detail": self.detail}


@dataclass(frozen=True, slots=True)
class AlertCleared:
    operation: str
    detail: str
    cleared: str  # the kind of the alert that ended
    kind: ClassVar[str] = "AlertCleared"
    critical: ClassVar[bool] = False

    def to_wire(self) -> dict[str, Any]:
        return {"kind": self.kind, "operation": self.operation, "detail": self.detail}


Alert = HighFailureRate | HighLatency | HighBurnRate
ALERT_TYPES: tuple[type, ...] = (HighFailureRate, HighLatency, HighBurnRate, AlertCleared)
ALL_OPERATIONS = "*"


@dataclass(frozen=True, slots=True)
class SloStatus:
    availability: float
    error_rate: float
    error_budget_remaining: float  # fraction of the long window's budget left, 0..1
    short_burn_rate: float
    long_burn_rate: float
    calls: int  # in the long window

    def to_wire(self) -> dict[str, Any]:
        return {
            "availability": self.availability,
            "errorRate": self.error_rate,
            "errorBudgetRemaining": self.error_budget_remaining,
            "burnRateShort": self.short_burn_rate,
            "burnRateLong": self.long_burn_rate,
            "calls": self.calls,
        }


@dataclass(frozen=True, slots=True)
class OperationHealth:
    operation: str
    calls: int
    failures: int
    failure_rate: float
    latency: HistogramSnapshot
    target_p99: float | None

    def to_wire(self) -> dict[str, Any]:
        return {
            "p50Us": self.latency.p50 * 1e6,
            "p99Us": self.latency.p99 * 1e6,
            "p999Us": self.latency.p999 * 1e6,
            "failureRate": self.failure_rate,
            "targetP99Us": None if self.target_p99 is None else self.target_p99 * 1e6,
            "calls": self.calls,
        }


@dataclass(frozen=True, slots=True)
class HealthStats:
    operations: int
    records: int
    alerts_fired: int
    alerts_cleared: int
    active_alerts: int


# -- sliding windows ----------------------------------------------------------------------


class _Window:
    """Calls and failures over the last `slots` slots of `width` seconds."""

    __slots__ = ("calls", "failures", "head", "slot_calls", "slot_failures", "slots", "width")

    def __init__(self, length: float, slots: int) -> None:
        self.width = length / slots
        self.slots = slots
        self.head = -1  # the slot number the ring was last moved to
        self.slot_calls = [0] * slots
        self.slot_failures = [0] * slots
        self.calls = 0
        self.failures = 0

    def roll(self, now: float) -> int:
        """Move to the slot of `now`, emptying the ones passed; returns its ring position."""
        slot = int(now // self.width)
        if slot > self.head:
            first = max(self.head + 1, slot - self.slots + 1)
            for passed in range(first, slot + 1):
                self._clear(passed % self.slots)
            self.head = slot
        return self.head % self.slots

    def _clear(self, pos: int) -> None:
        self.calls -= self.slot_calls[pos]
        self.failures -= self.slot_failures[pos]
        self.slot_calls[pos] = 0
        self.slot_failures[pos] = 0

    def add(self, now: float, success: bool) -> int:
        pos = self.roll(now)
        self.slot_calls[pos] += 1
        self.calls += 1
        if not success:
            self.slot_failures[pos] += 1
            self.failures += 1
        return pos


class _OperationWindow(_Window):
    """Adds slow calls and a sparse latency bucket count per slot."""

    __slots__ = ("slot_buckets", "slot_slow", "slow", "slow_threshold", "target")

    def __init__(self, length: float, slots: int, target: float | None) -> None:
        super().__init__(length, slots)
        self.target = target
        self.slow_threshold = math.inf if target is None else 2.0 * target
        self.slot_slow = [0] * slots
        self.slot_buckets: list[dict[int, int]] = [{} for _ in range(slots)]
        self.slow = 0

    def _clear(self, pos: int) -> None:
        super()._clear(pos)
        self.slow -= self.slot_slow[pos]
        self.slot_slow[pos] = 0
        self.slot_buckets[pos].clear()

    def record(self, now: float, duration: float, success: bool) -> None:
        pos = self.add(now, success)
        buckets = self.slot_buckets[pos]
        index = bucket_index(duration)
        buckets[index] = buckets.get(index, 0) + 1
        if duration > self.slow_threshold:
            self.slot_slow[pos] += 1
            self.slow += 1

    def latency(self) -> HistogramSnapshot:
        merged: dict[int, int] = {}
        for buckets in self.slot_buckets:
            for index, count in buckets.items():
                merged[index] = merged.get(index, 0) + count
        return HistogramSnapshot.from_buckets(merged)


# -- the monitor --------------------------------------------------------------------------


def _system_clock() -> Clock:
    from lapce_bridge.clock import SYSTEM_CLOCK  # lazily: the core never imports asyncio

    return SYSTEM_CLOCK


class HealthMonitor:
    def __init__(
        self,
        *,
        clock: Clock | None = None,
        bus: EventBus | None = None,
        targets: Mapping[str, float] | None = None,
        window: float = 60.0,
        failure_rate_threshold: float = 0.10,
        min_calls: int = 10,
        slo_target: float = 0.999,
        short_window: float = 300.0,
        long_window: float = 3600.0,
        burn_rate_threshold: float = PAGE_BURN_RATE,
        slots: int = 60,
        max_operations: int = 256,
    ) -> None:
        targets = dict(DEFAULT_TARGETS if targets is None else targets)
        for op, target in targets.items():
            if not (0.0 < target < math.inf):
                raise InvalidParams(f"target p99 for {op!r} must be positive seconds")
        for name, length in (("window", window), ("short_window", short_window)):
            if not (0.0 < length < math.inf):
                raise InvalidParams(f"{name} must be positive finite seconds, got {length!r}")
        if not (short_window <= long_window < math.inf):
            raise InvalidParams("long_window must be finite and at least short_window")
        if not (0.0 <= failure_rate_threshold < 1.0):
            raise InvalidParams("failure_rate_threshold must be a fraction in [0, 1)")
        if not (0.0 < slo_target < 1.0):
            raise InvalidParams(f"slo_target must be within (0, 1), got {slo_target!r}")
        if min_calls < 1 or slots < 1 or max_operations < 1:
            raise InvalidParams("min_calls, slots and max_operations must be at least 1")
        if not (burn_rate_threshold > 0.0):
            raise InvalidParams("burn_rate_threshold must be positive")
        self._clock = clock if clock is not None else _system_clock()
        self._bus = bus
        self.targets = targets
        self.window = window
        self.failure_rate_threshold = failure_rate_threshold
        self.min_calls = min_calls
        self.slo_target = slo_target
        self.burn_rate_threshold = burn_rate_threshold
        self.slots = slots
        self.max_operations = max_operations
        self._ops: dict[str, _OperationWindow] = {}
        self._short = _Window(short_window, slots)
        self._long = _Window(long_window, slots)
        self._alerts: dict[tuple[str, str], Alert] = {}
        self._records = 0
        self._fired = 0
        self._cleared = 0

    # -- recording ----------------------------------------------------------------------
    def record_operation(self, op: str, duration: float, success: bool) -> None:
        """Count one call of `op`; fires or clears this operation's alerts if that changed."""
        check_duration(duration)
        now = self._clock.now()
        win = self._ops.get(op)
        if win is None:
            op, win = self._new_operation(op)
        win.record(now, duration, success)
        self._short.add(now, success)
        self._long.add(now, success)
        self._records += 1
        self._check_operation(op, win)
        self._check_slo()

    def _new_operation(self, op: str) -> tuple[str, _OperationWindow]:
        if len(self._ops) >= self.max_operations:
            op = OTHER_OPERATION
            found = self._ops.get(op)
            if found is not None:
                return op, found
        win = self._ops[op] = _OperationWindow(self.window, self.slots, self.targets.get(op))
        return op, win

    def evaluate(self) -> None:
        """Slide every window to now and fire or clear alerts accordingly."""
        now = self._clock.now()
        for op, win in list(self._ops.items()):
            win.roll(now)
            self._check_operation(op, win)
        self._short.roll(now)
        self._long.roll(now)
        self._check_slo()

    # -- alert conditions ---------------------------------------------------------------
    def _check_operation(self, op: str, win: _OperationWindow) -> None:
        calls = win.calls
        enough = calls >= self.min_calls
        rate = win.failures / calls if calls else 0.0
        failing = enough and rate > self.failure_rate_threshold
        if failing != ((HighFailureRate.kind, op) in self._alerts):
            if failing:
                self._fire(
                    HighFailureRate(
                        op,
                        f"{win.failures} of {calls} calls failed in the last {self.window:g} s "
                        f"({rate:.1%}, threshold {self.failure_rate_threshold:.0%})",
                        rate,
                        calls,
                    )
                )
            else:
                self._clear(HighFailureRate.kind, op, f"failure rate {rate:.1%}")
        target = win.target
        if target is None:
            return
        # The nearest-rank p99 is the call of rank ceil(0.99 n) (integer arithmetic, so no
        # float rounding moves the rank); it exceeds 2x target exactly when more than
        # n - rank calls do.
        slow = enough and win.slow > calls - (99 * calls + 99) // 100
        if slow != ((HighLatency.kind, op) in self._alerts):
            if slow:
                self._fire(
                    HighLatency(
                        op,
                        f"p99 over the last {self.window:g} s is above {2e6 * target:g} us, "
                        f"twice the {1e6 * target:g} us target: {win.slow} of {calls} "
                        "calls slower",
                        win.slow,
                        calls,
                        target,
                    )
                )
            else:
                self._clear(HighLatency.kind, op, f"{win.slow} of {calls} calls slow")

    def _burn_rates(self) -> tuple[float, float]:
        budget = 1.0 - self.slo_target
        short, long = self._short, self._long
        short_rate = short.failures / short.calls if short.calls else 0.0
        long_rate = long.failures / long.calls if long.calls else 0.0
        return short_rate / budget, long_rate / budget

    def _check_slo(self) -> None:
        short_burn, long_burn = self._burn_rates()
        paging = (
            self._short.calls >= self.min_calls
            and short_burn > self.burn_rate_threshold
            and long_burn > self.burn_rate_threshold
        )
        if paging != ((HighBurnRate.kind, ALL_OPERATIONS) in self._alerts):
            if paging:
                self._fire(
                    HighBurnRate(
                        ALL_OPERATIONS,
                        f"error budget burning at {short_burn:.1f}x over "
                        f"{self._short.width * self.slots:g} s and {long_burn:.1f}x over "
                        f"{self._long.width * self.slots:g} s "
                        f"(page above {self.burn_rate_threshold:g}x)",
                        short_burn,
                        long_burn,
                    )
                )
            else:
                self._clear(
                    HighBurnRate.kind,
                    ALL_OPERATIONS,
                    f"burn rate {short_burn:.1f}x short, {long_burn:.1f}x long",
                )

    def _fire(self, alert: Alert) -> None:
        self._alerts[(alert.kind, alert.operation)] = alert
        self._fired += 1
        if self._bus is not None:
            self._bus.publish(alert)

    def _clear(self, kind: str, op: str, why: str) -> None:
        del self._alerts[(kind, op)]
        self._cleared += 1
        if self._bus is not None:
            self._bus.publish(AlertCleared(op, f"{kind} cleared: {why}", kind))

    # -- reading ------------------------------------------------------------------------
    def active_alerts(self) -> list[Alert]:
        """Alerts whose condition held at the last check, oldest first."""
        return list(self._alerts.values())

    def operation(self, op: str) -> OperationHealth:
        win = self._ops.get(op)
        if win is None:
            return OperationHealth(
                op, 0, 0, 0.0, HistogramSnapshot.from_buckets({}), self.targets.get(op)
            )
        win.roll(self._clock.now())
        rate = win.failures / win.calls if win.calls else 0.0
        return OperationHealth(op, win.calls, win.failures, rate, win.latency(), win.target)

    def slo(self) -> SloStatus:
        now = self._clock.now()
        self._short.roll(now)
        self._long.roll(now)
        short_burn, long_burn = self._burn_rates()
        long = self._long
        error_rate = long.failures / long.calls if long.calls else 0.0
        return SloStatus(
            availability=1.0 - error_rate,
            error_rate=error_rate,
            error_budget_remaining=max(0.0, 1.0 - long_burn),
            short_burn_rate=short_burn,
            long_burn_rate=long_burn,
            calls=long.calls,
        )

    def statistics(self) -> HealthStats:
        return HealthStats(
            len(self._ops), self._records, self._fired, self._cleared, len(self._alerts)
        )

    def status(self, *, quality_level: int, breakers: Mapping[str, str], pressure: float) -> str:
        """The report's status from its inputs and the active alerts (module docstring)."""
        critical = any(alert.critical for alert in self._alerts.values())
        if (
            quality_level == 0
            or pressure >= 90
            or (critical and any(state == "open" for state in breakers.values()))
        ):
            return "unhealthy"
        if (
            self._alerts
            or any(state != "closed" for state in breakers.values())
            or quality_level < 3
            or pressure >= 70
        ):
            return "degraded"
        return "healthy"

    def report(
        self,
        *,
        quality_level: int = 3,
        features: Mapping[str, bool] | None = None,
        breakers: Mapping[str, str] | None = None,
        pressure: float = 0.0,
    ) -> dict[str, Any]:
        """The `health/get` result (PROTOCOL.md `HealthReport`); evaluates alerts first."""
        breakers = dict(breakers or {})
        if not (isinstance(quality_level, int) and 0 <= quality_level <= 3):
            raise InvalidParams(f"quality level must be 0..3, got {quality_level!r}")
        if not (0.0 <= pressure <= 100.0):
            raise InvalidParams(f"pressure must be within 0..100, got {pressure!r}")
        unknown = {name: s for name, s in breakers.items() if s not in BREAKER_STATES}
        if unknown:
            raise InvalidParams(f"unknown breaker state(s): {unknown}")
        self.evaluate()
        return {
            "status": self.status(
                quality_level=quality_level, breakers=breakers, pressure=pressure
            ),
            "qualityLevel": quality_level,
            "features": dict(features or {}),
            "breakers": breakers,
            "pressure": pressure,
            "operations": {op: self.operation(op).to_wire() for op in list(self._ops)},
            "slo": {**self.slo().to_wire(), "target": self.slo_target},
            "alerts": [alert.to_wire() for alert in self._alerts.values()],
        }


__all__ = [
    "ALERT_TYPES",
    "ALL_OPERATIONS",
    "DEFAULT_TARGETS",
    "PAGE_BURN_RATE",
    "Alert",
    "AlertCleared",
    "HealthMonitor",
    "HealthStats",
    "HighBurnRate",
    "HighFailureRate",
    "HighLatency",
    "OperationHealth",
    "SloStatus",
]
