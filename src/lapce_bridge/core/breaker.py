"""A circuit breaker with resilience4j's semantics, on an injectable clock.

Theory of operation: outcomes (success or failure, and whether the call was slow) are counted
in a sliding window, either the last N calls or the last N seconds (per-second buckets, so a
record is O(1) and the window's totals are kept, not summed). States:

    CLOSED ──(failure or slow rate ≥ threshold, once minimum calls are in)──▶ OPEN
    OPEN ──(wait_duration_in_open passed; on the next acquire, lazily)──▶ HALF_OPEN
    HALF_OPEN ──(all permitted calls recorded: rates below the thresholds)──▶ CLOSED
    HALF_OPEN ──(... rates at or above a threshold)──▶ OPEN
    any ──(`reset()`)──▶ CLOSED, with an empty window

Invariants:
- In HALF_OPEN at most `permitted_calls_in_half_open` permits are out at once; a permit given
  back with `release()` (a cancelled call) may be handed out again.
- Every transition bumps `generation`; an outcome reported with the generation of an earlier
  state is dropped (counted as stale), so calls admitted before a trip cannot vote in the
  half-open trial that follows. `call()` does this for you.
- Cancellation (CancelledError, KeyboardInterrupt, a `Cancelled` error) is never a failure: it
  gives the permit back. An exception `record_exception` rejects counts as a success: the
  protected dependency answered, the request was wrong (the default rejects warning- and
  info-severity errors that are not retryable, such as ENOENT or invalid params).
- State changes are published synchronously on the bus as `BreakerStateChanged`.
- No state is held across an await: `call()` takes the permit, awaits, then records.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Literal, TypeVar

from lapce_bridge.core.errors import ErrorSeverity, Fault, InvalidParams, Unavailable, classify
from lapce_bridge.core.retry import is_cancellation, system_clock

if TYPE_CHECKING:
    from lapce_bridge.core.clock import Clock
    from lapce_bridge.core.events import EventBus

T = TypeVar("T")


class CircuitState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


def default_record_exception(exc: BaseException) -> bool:
    if is_cancellation(exc):
        return False
    c = classify(exc).classification
    if c.fault is Fault.CALLER:
        return False  # the caller's mistake says nothing about the health of what it called
    return c.retryable or c.severity in (ErrorSeverity.CRITICAL, ErrorSeverity.RECOVERABLE)


@dataclass(frozen=True, slots=True)
class CircuitBreakerConfig:
    failure_rate_threshold: float = 50.0  # percent
    slow_call_rate_threshold: float = 100.0  # percent
    slow_call_duration: float = 60.0  # seconds; a call this long or longer is slow
    sliding_window_type: Literal["count", "time"] = "count"
    sliding_window_size: int = 100  # calls, or seconds
    minimum_number_of_calls: int = 10
    wait_duration_in_open: float = 60.0
    permitted_calls_in_half_open: int = 10
    automatic_transition_from_open: bool = True
    record_exception: Callable[[BaseException], bool] | None = None

    def __post_init__(self) -> None:
        for name in ("failure_rate_threshold", "slow_call_rate_threshold"):
            value = getattr(self, name)
            if not 0 < value <= 100:
                raise InvalidParams(f"{name} must be a percentage in (0, 100], got {value}")
        for name in ("slow_call_duration", "wait_duration_in_open"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise InvalidParams(f"{name} must be finite seconds >= 0, got {value}")
        for name in (
            "sliding_window_size",
            "minimum_number_of_calls",
            "permitted_calls_in_half_open",
        ):
            if getattr(self, name) < 1:
                raise InvalidParams(f"{name} must be at least 1")
        if self.sliding_window_type not in ("count", "time"):
            kind = self.sliding_window_type
            raise InvalidParams(f"sliding_window_type must be 'count' or 'time', not {kind!r}")


@dataclass(frozen=True, slots=True)
class BreakerStateChanged:
    name: str
    from_state: CircuitState
    to_state: CircuitState
    at: float


@dataclass(frozen=True, slots=True)
class BreakerMetrics:
    name: str
    state: CircuitState
    failure_rate: float  # percent; -1.0 while fewer than the minimum calls are buffered
    slow_call_rate: float  # percent; -1.0 likewise
    buffered_calls: int
    failed_calls: int
    slow_calls: int
    successful_calls: int
    not_permitted_calls: int
    stale_outcomes: int
    half_open_permits_left: int


class _Window(ABC):
    """Totals of the outcomes in a sliding window; subclasses decide what leaves it."""

    __slots__ = ("calls", "failed", "minimum", "size", "slow")
    by_time = False

    def __init__(self, size: int, minimum: int) -> None:
        self.size = size
        self.minimum = minimum
        self.calls = self.failed = self.slow = 0

    @abstractmethod
    def record(self, failed: bool, slow: bool, now: float) -> None: ...

    def roll(self, now: float) -> None:  # noqa: B027 - a hook: a count window keeps all
        """Expire what fell out of the window by `now` (only time windows expire)."""

    def rates(self) -> tuple[float, float] | None:
        """(failure %, slow %), or None while fewer than `minimum` calls are buffered."""
        if self.calls < self.minimum:
            return None
        return 100.0 * self.failed / self.calls, 100.0 * self.slow / self.calls


class _CountWindow(_Window):
    """The last `size` calls: a ring of outcome codes."""

    __slots__ = ("codes", "next")

    def __init__(self, size: int, minimum: int) -> None:
        super().__init__(size, minimum)
        self.codes = [-1] * size  # -1: empty slot; else bit 0 failed, bit 1 slow
        self.next = 0

    def record(self, failed: bool, slow: bool, now: float) -> None:
        i = self.next
        old = self.codes[i]
        if old < 0:
            self.calls += 1
        elif old:  # the oldest call, a failed or slow one, leaves the window
            self.failed -= old & 1
            self.slow -= old >> 1
        self.codes[i] = (2 if slow else 0) | (1 if failed else 0)
        self.next = 0 if i + 1 == self.size else i + 1
        if failed:
            self.failed += 1
        if slow:
            self.slow += 1


class _TimeWindow(_Window):
    """The last `size` whole seconds of the clock: per-second buckets."""

    __slots__ = ("b_calls", "b_failed", "b_slow", "newest")
    by_time = True

    def __init__(self, size: int, minimum: int) -> None:
        super().__init__(size, minimum)
        self.b_calls = [0] * size
        self.b_failed = [0] * size
        self.b_slow = [0] * size
        self.newest: int | None = None  # the newest second seen; bucket = second % size

    def record(self, failed: bool, slow: bool, now: float) -> None:
        self.roll(now)
        i = (self.newest or 0) % self.size  # roll() has set the newest second
        self.b_calls[i] += 1
        self.b_failed[i] += failed
        self.b_slow[i] += slow
        self.calls += 1
        self.failed += failed
        self.slow += slow

    def roll(self, now: float) -> None:
        """Expire the seconds that fell out of the window."""
        second = math.floor(now)
        newest = self.newest
        self.newest = second if newest is None else max(newest, second)
        if newest is None or second <= newest:
            return
        # A bucket about to be reused holds a second that has left the window; a silence
        # longer than the window clears every bucket once.
        for offset in range(1, min(second - newest, self.size) + 1):
            i = (newest + offset) % self.size
            self.calls -= self.b_calls[i]
            self.failed -= self.b_failed[i]
            self.slow -= self.b_slow[i]
            self.b_calls[i] = self.b_failed[i] = self.b_slow[i] = 0


class CircuitBreaker:
    def __init__(
        self,
        name: str,
        config: CircuitBreakerConfig | None = None,
        *,
        clock: Clock | None = None,
        bus: EventBus | None = None,
    ) -> None:
        self.name = name
        self.config = config = config or CircuitBreakerConfig()
        self._clock = clock if clock is not None else system_clock()
        self._bus = bus
        self._record_exception = config.record_exception or default_record_exception
        self._slow_call_duration = config.slow_call_duration
        self._state = CircuitState.CLOSED
        self._generation = 0
        self._window = self._closed_window()
        self._opened_at = 0.0
        self._half_open_left = 0
        self._not_permitted = 0
        self._stale = 0

    # -- state ----------------------------------------------------------------------------
    @property
    def state(self) -> CircuitState:
        if (
            self._state is CircuitState.OPEN
            and self.config.automatic_transition_from_open
            and self._wait_over()
        ):
            self._to(CircuitState.HALF_OPEN)
        return self._state

    @property
    def generation(self) -> int:
        return self._generation

    def retry_after(self) -> float:
        """Seconds until an OPEN breaker lets a trial call through (0 when not OPEN)."""
        if self._state is not CircuitState.OPEN:
            return 0.0
        return max(0.0, self._opened_at + self.config.wait_duration_in_open - self._clock.now())

    # -- permits --------------------------------------------------------------------------
    def try_acquire(self) -> bool:
        state = self._state
        if state is CircuitState.CLOSED:
            return True
        if state is CircuitState.OPEN and self._wait_over():
            self._to(CircuitState.HALF_OPEN)
            state = CircuitState.HALF_OPEN
        if state is CircuitState.HALF_OPEN and self._half_open_left > 0:
            self._half_open_left -= 1
            return True
        self._not_permitted += 1
        return False

    def acquire(self) -> None:
        """Take a permit or raise `Unavailable` (-32002) saying when to try again."""
        if not self.try_acquire():
            state = self._state
            wait = self.retry_after()
            raise Unavailable(
                f"circuit breaker {self.name!r} is {state.value}"
                + (f"; retry in {wait:.3g} s" if wait else ""),
                data={"breaker": self.name, "state": state.value, "retryAfterMs": wait * 1e3},
            )

    def release(self, *, generation: int | None = None) -> None:
        """Give a permit back without recording an outcome (the call was cancelled)."""
        if generation is not None and generation != self._generation:
            return
        if self._state is CircuitState.HALF_OPEN:
            cap = self.config.permitted_calls_in_half_open - self._window.calls
            self._half_open_left = min(cap, self._half_open_left + 1)

    # -- outcomes -------------------------------------------------------------------------
    def on_success(self, duration: float, *, generation: int | None = None) -> None:
        if generation is not None and generation != self._generation:
            self._stale += 1
            return
        self._record(False, duration >= self._slow_call_duration)

    def on_error(
        self, duration: float, exc: BaseException, *, generation: int | None = None
    ) -> None:
        if is_cancellation(exc):
            self.release(generation=generation)
        elif not self._record_exception(exc):
            self.on_success(duration, generation=generation)
        elif generation is not None and generation != self._generation:
            self._stale += 1
        else:
            self._record(True, duration >= self._slow_call_duration)

    async def call(self, fn: Callable[[], Awaitable[T]]) -> T:
        """Run `fn()` under the breaker: `Unavailable` when not permitted, else its result."""
        self.acquire()
        generation = self._generation
        clock = self._clock
        started = clock.now()
        try:
            result = await fn()
        except BaseException as exc:
            self.on_error(clock.now() - started, exc, generation=generation)
            raise
        self.on_success(clock.now() - started, generation=generation)
        return result

    # -- explicit transition --------------------------------------------------------------
    def reset(self) -> None:
        """Back to CLOSED with empty metrics and no not-permitted count."""
        self._not_permitted = 0
        self._stale = 0
        if self._state is CircuitState.CLOSED:
            self._generation += 1
            self._window = self._closed_window()
        else:
            self._to(CircuitState.CLOSED)

    # -- metrics --------------------------------------------------------------------------
    def metrics(self) -> BreakerMetrics:
        state = self.state
        window = self._window
        window.roll(self._clock.now())
        rates = window.rates()
        failure_rate, slow_rate = rates if rates is not None else (-1.0, -1.0)
        return BreakerMetrics(
            name=self.name,
            state=state,
            failure_rate=failure_rate,
            slow_call_rate=slow_rate,
            buffered_calls=window.calls,
            failed_calls=window.failed,
            slow_calls=window.slow,
            successful_calls=window.calls - window.failed,
            not_permitted_calls=self._not_permitted,
            stale_outcomes=self._stale,
            half_open_permits_left=self._half_open_left if state is CircuitState.HALF_OPEN else 0,
        )

    statistics = metrics

    # -- internals ------------------------------------------------------------------------
    def _closed_window(self) -> _Window:
        c = self.config
        if c.sliding_window_type == "time":
            return _TimeWindow(c.sliding_window_size, c.minimum_number_of_calls)
        # A count window can never hold more than its size, so it needs no more than that.
        minimum = min(c.minimum_number_of_calls, c.sliding_window_size)
        return _CountWindow(c.sliding_window_size, minimum)

    def _wait_over(self) -> bool:
        return self._clock.now() - self._opened_at >= self.config.wait_duration_in_open

    def _tripped(self, rates: tuple[float, float]) -> bool:
        c = self.config
        return rates[0] >= c.failure_rate_threshold or rates[1] >= c.slow_call_rate_threshold

    def _record(self, failed: bool, slow: bool) -> None:
        state = self._state
        if state is CircuitState.CLOSED:
            window = self._window
            if window.by_time:
                window.record(failed, slow, self._clock.now())
            else:
                window.record(failed, slow, 0.0)
                # A fast success into a count window that already held its minimum cannot
                # raise either rate, so the evaluation is skipped on the common path. (In a
                # time window expiry can raise them, so those are always evaluated.)
                if not (failed or slow) and window.calls > window.minimum:
                    return
            rates = window.rates()
            if rates is not None and self._tripped(rates):
                self._to(CircuitState.OPEN)
        elif state is CircuitState.HALF_OPEN:
            window = self._window
            window.record(failed, slow, 0.0)
            if window.calls >= self.config.permitted_calls_in_half_open:
                rates = window.rates()
                tripped = rates is not None and self._tripped(rates)
                self._to(CircuitState.OPEN if tripped else CircuitState.CLOSED)
        # OPEN: no permit was issued in this state; nothing to count.

    def _to(self, new: CircuitState) -> None:
        old = self._state
        if new is old:
            return
        now = self._clock.now()
        self._state = new
        self._generation += 1
        self._half_open_left = 0
        if new is CircuitState.OPEN:
            self._opened_at = now  # the window that tripped stays readable in metrics()
        elif new is CircuitState.HALF_OPEN:
            permitted = self.config.permitted_calls_in_half_open
            self._window = _CountWindow(permitted, permitted)
            self._half_open_left = permitted
        else:
            self._window = self._closed_window()
        if self._bus is not None:
            self._bus.publish(BreakerStateChanged(self.name, old, new, now))


__all__ = [
    "BreakerMetrics",
    "BreakerStateChanged",
    "CircuitBreaker",
    "CircuitBreakerConfig",
    "CircuitState",
    "default_record_exception",
]
