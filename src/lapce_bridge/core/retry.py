"""Retry with capped, jittered exponential backoff, on an injectable clock.

Theory of operation: a `RetryPolicy` is a small immutable strategy. `delays()` is its schedule
(pure: the i-th delay is `min(max_delay, initial_delay * multiplier**i)` scaled by a uniform
factor in `[1 - jitter, 1 + jitter]`, then clamped to `[0, max_delay]`); `run` and `run_async`
are the thin driver that carries the schedule out, awaiting only `clock.sleep`.

Invariants:
- The first attempt is a plain call inside a `try`: no clock reading (unless a deadline is
  set), no allocation, no wrapper. The retry machinery is entered only after a failure, so a
  call that succeeds costs what the call costs plus an await (well under 2 us).
- Only `Exception`s are candidates: `CancelledError`, `KeyboardInterrupt`, `SystemExit` and
  `GeneratorExit` pass straight through, and an exception that classifies as a cancellation
  (category user_cancelled) is never retried whatever `retry_if` says.
- EINTR (`InterruptedError`, or any error whose `errno` is EINTR) is retried at once: no sleep,
  no step of the schedule and no attempt consumed, at most `eintr_limit` times per call.
- No sleep ever runs past the deadline: when the next delay would end after it, the policy
  gives up instead of sleeping.
- Giving up re-raises the last error itself (never a wrapper), with `retry_attempts` set to
  the number of calls made and, when it was retried, a note saying why it stopped.
"""

from __future__ import annotations

import errno as _errno
import math
import random
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from lapce_bridge.core.errors import ErrorCategory, InvalidParams, classify

if TYPE_CHECKING:
    from lapce_bridge.core.clock import Clock

T = TypeVar("T")
OnRetry = Callable[[int, BaseException, float], None]
"""Called before each retry with (number of the failed call, its error, delay before the next)."""

_EINTR = _errno.EINTR


def system_clock() -> Clock:
    """The process's real clock, imported lazily so the pure core never imports asyncio."""
    from lapce_bridge.clock import SYSTEM_CLOCK

    return SYSTEM_CLOCK


def is_eintr(exc: BaseException) -> bool:
    return isinstance(exc, InterruptedError) or getattr(exc, "errno", None) == _EINTR


def is_cancellation(exc: BaseException) -> bool:
    """True for errors that mean "stop": never retried, never recorded as a failure."""
    if not isinstance(exc, Exception):
        return True
    return classify(exc).category is ErrorCategory.USER_CANCELLED


def default_retry_if(exc: BaseException) -> bool:
    return classify(exc).retryable


def attempts_made(exc: BaseException) -> int:
    """How many calls a RetryPolicy made before re-raising `exc` (1 if it never saw it)."""
    value = getattr(exc, "retry_attempts", 1)
    return value if isinstance(value, int) else 1


def backoff_schedule(
    initial_delay: float,
    max_delay: float,
    multiplier: float,
    jitter: float,
    rng: random.Random,
    count: int | None,
) -> Iterator[float]:
    """`count` delays (None: endless) of capped exponential backoff with ± `jitter` spread."""
    base = min(max_delay, initial_delay)
    produced = 0
    while count is None or produced < count:
        delay = base
        if jitter:
            delay = base * (1.0 + rng.uniform(-jitter, jitter))
        yield min(max_delay, max(0.0, delay))
        produced += 1
        # Multiplying step by step (not multiplier**i) cannot overflow on an endless schedule.
        base = min(max_delay, base * multiplier)


@dataclass(slots=True)
class _Counters:
    first_try_failures: int = 0
    retries: int = 0
    eintr_retries: int = 0
    recovered: int = 0
    not_retried: int = 0
    exhausted: int = 0
    deadline_exceeded: int = 0


@dataclass(frozen=True, slots=True)
class RetryStats:
    calls: int
    first_try_failures: int
    retries: int  # re-runs after a backoff delay
    eintr_retries: int  # immediate re-runs after EINTR
    recovered: int  # calls that failed at first and then succeeded
    not_retried: int  # gave up at once: the error was not retryable
    exhausted: int  # gave up: attempts ran out
    deadline_exceeded: int  # gave up: the next delay would end after the deadline
    total_delay: float  # seconds slept between attempts


class RetryPolicy:
    __slots__ = (
        "_calls",
        "_clock",
        "_counts",
        "_rng",
        "_total_delay",
        "deadline",
        "eintr_limit",
        "initial_delay",
        "jitter",
        "max_attempts",
        "max_delay",
        "multiplier",
        "retry_if",
    )

    def __init__(
        self,
        max_attempts: int | None = 3,
        initial_delay: float = 0.05,
        max_delay: float = 1.0,
        multiplier: float = 2.0,
        jitter: float = 0.1,
        *,
        clock: Clock | None = None,
        retry_if: Callable[[BaseException], bool] | None = None,
        deadline: float | None = None,
        rng: random.Random | None = None,
        eintr_limit: int = 100,
    ) -> None:
        if max_attempts is not None and max_attempts < 1:
            raise InvalidParams(f"max_attempts must be at least 1 (or None), got {max_attempts}")
        if not (_finite(initial_delay) and _finite(max_delay) and initial_delay >= 0):
            raise InvalidParams("initial_delay and max_delay must be finite and non-negative")
        if max_delay < initial_delay:
            raise InvalidParams(f"max_delay {max_delay} is below initial_delay {initial_delay}")
        if not (_finite(multiplier) and multiplier >= 1.0):
            raise InvalidParams(f"multiplier must be finite and at least 1, got {multiplier}")
        if not 0.0 <= jitter <= 1.0:
            raise InvalidParams(f"jitter must be a fraction in [0, 1], got {jitter}")
        if deadline is not None and not (_finite(deadline) and deadline > 0):
            raise InvalidParams(f"deadline must be positive seconds or None, got {deadline}")
        if eintr_limit < 0:
            raise InvalidParams("eintr_limit must not be negative")
        self.max_attempts = max_attempts
        self.initial_delay = initial_delay
        self.max_delay = max_delay
        self.multiplier = multiplier
        self.jitter = jitter
        self.deadline = deadline
        self.eintr_limit = eintr_limit
        self.retry_if = retry_if or default_retry_if
        self._clock = clock if clock is not None else system_clock()
        self._rng = rng or random.Random()
        self._calls = 0
        self._counts = _Counters()
        self._total_delay = 0.0

    @property
    def clock(self) -> Clock:
        return self._clock

    def delays(self) -> Iterator[float]:
        """The backoff schedule: one delay before each retry (endless if max_attempts is None)."""
        return self.schedule(None if self.max_attempts is None else self.max_attempts - 1)

    def schedule(self, count: int | None) -> Iterator[float]:
        """`count` delays of this policy's backoff (None: endless), whatever max_attempts says."""
        return backoff_schedule(
            self.initial_delay, self.max_delay, self.multiplier, self.jitter, self._rng, count
        )

    def with_attempts(self, max_attempts: int | None) -> RetryPolicy:
        """This policy's backoff, clock and filters with another number of attempts."""
        return RetryPolicy(
            max_attempts,
            self.initial_delay,
            self.max_delay,
            self.multiplier,
            self.jitter,
            clock=self._clock,
            retry_if=self.retry_if,
            deadline=self.deadline,
            rng=self._rng,
            eintr_limit=self.eintr_limit,
        )

    async def run(self, fn: Callable[[], T], *, on_retry: OnRetry | None = None) -> T:
        """Call the synchronous `fn`, retrying per the policy; returns its result."""
        self._calls += 1
        started = self._clock.now() if self.deadline is not None else 0.0
        try:
            return fn()
        except Exception as exc:
            first = exc

        async def again() -> T:
            return fn()

        return await self._retry(again, first, started, on_retry)

    async def run_async(
        self, fn: Callable[[], Awaitable[T]], *, on_retry: OnRetry | None = None
    ) -> T:
        """Await `fn()`, retrying per the policy; returns its result."""
        self._calls += 1
        started = self._clock.now() if self.deadline is not None else 0.0
        try:
            return await fn()
        except Exception as exc:
            first = exc
        return await self._retry(fn, first, started, on_retry)

    async def _retry(
        self,
        again: Callable[[], Awaitable[T]],
        exc: Exception,
        started: float,
        on_retry: OnRetry | None,
    ) -> T:
        counts = self._counts
        counts.first_try_failures += 1
        clock = self._clock
        schedule = self.delays()
        made = 1  # calls of fn so far
        eintr = 0
        while True:
            if is_cancellation(exc):
                raise exc
            if is_eintr(exc) and eintr < self.eintr_limit:
                eintr += 1
                counts.eintr_retries += 1
                delay = 0.0
            elif not self.retry_if(exc):
                counts.not_retried += 1
                raise _give_up(exc, made, "the error is not retryable")
            else:
                next_delay = next(schedule, None)
                if next_delay is None:
                    counts.exhausted += 1
                    raise _give_up(exc, made, f"{self.max_attempts} attempts made")
                delay = next_delay
                if self.deadline is not None and clock.now() + delay > started + self.deadline:
                    counts.deadline_exceeded += 1
                    raise _give_up(exc, made, f"the {self.deadline:g} s deadline would pass")
                counts.retries += 1
            if on_retry is not None:
                on_retry(made, exc, delay)
            if delay > 0:
                self._total_delay += delay
                await clock.sleep(delay)
            made += 1
            try:
                result = await again()
            except Exception as later:
                exc = later
                continue
            counts.recovered += 1
            return result

    def statistics(self) -> RetryStats:
        c = self._counts
        return RetryStats(
            calls=self._calls,
            first_try_failures=c.first_try_failures,
            retries=c.retries,
            eintr_retries=c.eintr_retries,
            recovered=c.recovered,
            not_retried=c.not_retried,
            exhausted=c.exhausted,
            deadline_exceeded=c.deadline_exceeded,
            total_delay=self._total_delay,
        )

    def __repr__(self) -> str:
        return (
            f"RetryPolicy(max_attempts={self.max_attempts}, initial_delay={self.initial_delay}, "
            f"max_delay={self.max_delay}, multiplier={self.multiplier}, jitter={self.jitter}, "
            f"deadline={self.deadline})"
        )


def _give_up(exc: Exception, made: int, why: str) -> Exception:
    try:
        exc.retry_attempts = made  # type: ignore[attr-defined]
    except (AttributeError, TypeError):  # an exception type with __slots__ and no __dict__
        pass
    if made > 1:
        exc.add_note(f"retry: gave up after {made} calls: {why}")
    return exc


def _finite(value: float) -> bool:
    return math.isfinite(value)


__all__ = [
    "OnRetry",
    "RetryPolicy",
    "RetryStats",
    "attempts_made",
    "backoff_schedule",
    "default_retry_if",
    "is_cancellation",
    "is_eintr",
    "system_clock",
]
