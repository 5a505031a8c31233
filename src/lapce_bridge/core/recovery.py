"""Carrying out the recovery matrix: retry as the row allows, then fall back.

Theory of operation: `RecoveryEngine.run(operation, actions)` calls the operation once with
an `AttemptContext`. If that fails, the failure is classified and its matrix row decides the
course; the caller supplies what each strategy *does* as `actions: {Strategy: async fn}`:

1. Primary. A re-running strategy (retry command, retry with backoff, recreate terminal,
   reconnect IPC, throttle, increase timeout, ...) is applied up to `max_retries` times: wait
   on the backoff schedule when the strategy calls for it, await the caller's action if one
   was supplied, then run the operation again. "Increase timeout" needs no action: each
   re-run gets `timeout` grown by the `TimeoutManager` (x2 per retry, capped). A one-shot
   strategy (alert user, reset parser state, free resources) runs its action once and
   nothing is re-run. Unbounded rows stop at the engine's `deadline` or `unbounded_retries`.
2. Fallback. Its action produces the result (raw output mode, cached previous value, queue
   for later, ...), or, for strategies that end in an error (alert user, graceful shutdown,
   cancel operation, none), runs as a side effect before the error is raised.

Invariants:
- The first run is a plain await: no classification, no allocation beyond the outcome.
- A strategy that needs the caller's action and has none is recorded as "unavailable" and
  skipped; when nothing is left, the last error is raised classified (`to_bridge_error`,
  chained `from` a foreign original) with the steps attached (`steps_of(exc)`, and for the
  wire in `data["recoveries"]`).
- Cancellation is never retried or handled: CancelledError (a BaseException) passes through
  untouched, and an error classified user_cancelled is re-raised at once.
- The row is chosen by the first failure. A later failure ends the retries early (straight to
  the fallback) when its own row allows no retry, e.g. a re-run that hits ENOENT.
- Every step taken is recorded in order as `RecoveryStep(action, reason, attempt, at)`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, Literal, NamedTuple, NoReturn, TypeVar

from lapce_bridge.core.errors import ClassifiedError, ErrorCategory, classify, to_bridge_error
from lapce_bridge.core.matrix import (
    DEFAULT_MATRIX,
    STRATEGY_SPECS,
    UNBOUNDED_RETRIES,
    MatrixRow,
    RecoveryMatrix,
    Strategy,
)
from lapce_bridge.core.retry import RetryPolicy, is_cancellation, system_clock
from lapce_bridge.core.timeouts import TimeoutManager

if TYPE_CHECKING:
    from lapce_bridge.core.clock import Clock

T = TypeVar("T")
StepOutcome = Literal["done", "failed", "unavailable"]


class AttemptContext(NamedTuple):  # a tuple: built on every run, so it must be cheap
    attempt: int  # 1 for the first run
    timeout: float | None  # the limit this run should hold to
    last_error: BaseException | None = None  # what made the previous run fail


@dataclass(frozen=True, slots=True)
class RecoveryStep:
    action: Strategy
    reason: str
    attempt: int  # the run of the operation that had failed when the step was taken
    at: float
    outcome: StepOutcome = "done"

    def to_wire(self) -> dict[str, str]:
        """The `recoveries` entry of PROTOCOL.md's ExecResult."""
        return {"action": self.action.value, "reason": self.reason}


@dataclass(frozen=True, slots=True)
class FailureContext:
    """What a strategy's action is given."""

    error: ClassifiedError
    row: MatrixRow
    attempt: int
    timeout: float | None
    steps: tuple[RecoveryStep, ...]


RecoveryAction = Callable[[FailureContext], Awaitable[Any]]


class RecoveryOutcome(NamedTuple, Generic[T]):  # a tuple, for the same reason
    value: T
    steps: tuple[RecoveryStep, ...] = ()

    @property
    def recovered(self) -> bool:
        return bool(self.steps)


@dataclass(frozen=True, slots=True)
class RecoveryStats:
    runs: int
    failures: int  # runs whose first attempt failed
    recovered_by_retry: int
    recovered_by_fallback: int
    raised: int
    steps: dict[str, int] = field(default_factory=dict)  # "strategy:outcome" -> count


def steps_of(exc: BaseException) -> tuple[RecoveryStep, ...]:
    """The recovery steps attached to an error the engine raised (empty if none)."""
    steps = getattr(exc, "recovery_steps", ())
    return steps if isinstance(steps, tuple) else ()


def _describe(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


class RecoveryEngine:
    def __init__(
        self,
        matrix: RecoveryMatrix | None = None,
        *,
        clock: Clock | None = None,
        backoff: RetryPolicy | None = None,
        timeouts: TimeoutManager | None = None,
        deadline: float | None = None,
        unbounded_retries: int = UNBOUNDED_RETRIES,
    ) -> None:
        self.matrix = matrix or DEFAULT_MATRIX
        self._clock = clock if clock is not None else system_clock()
        self.backoff = backoff or RetryPolicy(clock=self._clock)
        self.timeouts = timeouts or TimeoutManager(clock=self._clock)
        self.deadline = deadline
        self.unbounded_retries = unbounded_retries
        self._runs = self._failures = self._by_retry = self._by_fallback = self._raised = 0
        self._step_counts: dict[str, int] = {}

    async def run(
        self,
        operation: Callable[[AttemptContext], Awaitable[T]],
        actions: Mapping[Strategy, RecoveryAction] | None = None,
        *,
        op: str = "",
        base_timeout: float | None = None,
    ) -> RecoveryOutcome[T]:
        """Run `operation` under the row its failure classifies to; see the module docstring."""
        self._runs += 1
        base = base_timeout
        if base is None and op:
            base = self.timeouts.timeout_for(op)
        try:
            return RecoveryOutcome(await operation(AttemptContext(1, base)))
        except Exception as exc:
            first = exc
        self._failures += 1
        return await _Recovery(self, operation, actions or {}, op, base).recover(first)

    def _count(self, step: RecoveryStep) -> None:
        key = f"{step.action.value}:{step.outcome}"
        self._step_counts[key] = self._step_counts.get(key, 0) + 1

    def statistics(self) -> RecoveryStats:
        return RecoveryStats(
            self._runs,
            self._failures,
            self._by_retry,
            self._by_fallback,
            self._raised,
            dict(self._step_counts),
        )


class _Recovery(Generic[T]):
    """One recovery in progress: the driver that carries out a matrix row."""

    def __init__(
        self,
        engine: RecoveryEngine,
        operation: Callable[[AttemptContext], Awaitable[T]],
        actions: Mapping[Strategy, RecoveryAction],
        op: str,
        base: float | None,
    ) -> None:
        self.engine = engine
        self.clock = engine._clock
        self.operation = operation
        self.actions = actions
        self.op = op
        self.base = base
        self.timeout = base
        self.run_no = 1
        self.steps: list[RecoveryStep] = []

    async def recover(self, exc: Exception) -> RecoveryOutcome[T]:
        error = classify(exc)
        if error.category is ErrorCategory.USER_CANCELLED:
            raise exc
        row = self.engine.matrix.lookup(error.category, error.severity)
        outcome, error = await self._primary(row, error)
        if outcome is not None:
            self.engine._by_retry += 1
            return outcome
        return await self._fallback(row, error)

    async def _primary(
        self, row: MatrixRow, error: ClassifiedError
    ) -> tuple[RecoveryOutcome[T] | None, ClassifiedError]:
        strategy, engine = row.primary, self.engine
        spec = STRATEGY_SPECS[strategy]
        action = self.actions.get(strategy)
        limit = row.max_retries if row.max_retries is not None else engine.unbounded_retries
        if strategy is Strategy.NONE or (spec.reruns and limit == 0):
            return None, error
        if action is None and spec.needs_action:
            self._step(strategy, _describe(error.error), "unavailable")
            return None, error
        if not spec.reruns:  # a one-shot action: nothing is run again
            await self._act(action, strategy, row, error)
            return None, error
        started = self.clock.now()
        schedule = engine.backoff.schedule(None)
        for retry in range(1, limit + 1):
            delay = next(schedule) if spec.backoff else 0.0
            if engine.deadline is not None and (
                self.clock.now() + delay > started + engine.deadline
            ):
                break  # the next re-run could not start before the deadline
            if delay > 0:
                await self.clock.sleep(delay)
            if action is None:
                self._step(strategy, _describe(error.error), "done")
            elif not await self._act(action, strategy, row, error):
                break
            if strategy is Strategy.INCREASE_TIMEOUT:
                self.timeout = engine.timeouts.increased(self.op, retry, base=self.base)
            self.run_no += 1
            try:
                value = await self.operation(AttemptContext(self.run_no, self.timeout, error.error))
            except Exception as later:
                error = classify(later)
                if error.category is ErrorCategory.USER_CANCELLED:
                    self._raise(error)
                if engine.matrix.lookup(error.category, error.severity).max_retries == 0:
                    break
                continue
            return RecoveryOutcome(value, tuple(self.steps)), error
        return None, error

    async def _fallback(self, row: MatrixRow, error: ClassifiedError) -> RecoveryOutcome[T]:
        strategy = row.fallback
        if strategy is Strategy.NONE:
            self._raise(error)
        spec = STRATEGY_SPECS[strategy]
        action = self.actions.get(strategy)
        if action is None:
            self._step(
                strategy, _describe(error.error), "unavailable" if spec.needs_action else "done"
            )
            self._raise(error)
        reason = _describe(error.error)
        at = self.clock.now()
        try:
            value = await action(self._context(row, error))
        except Exception as failed:
            if is_cancellation(failed):
                raise
            self._step(strategy, f"{reason}; fallback failed: {_describe(failed)}", "failed", at)
            self._raise(classify(failed))
        self._step(strategy, reason, "done", at)
        if spec.ends_in_error:
            self._raise(error)
        self.engine._by_fallback += 1
        return RecoveryOutcome(value, tuple(self.steps))

    async def _act(
        self,
        action: RecoveryAction | None,
        strategy: Strategy,
        row: MatrixRow,
        error: ClassifiedError,
    ) -> bool:
        """Await a strategy's action, recording the step; False when the action failed."""
        reason = _describe(error.error)
        at = self.clock.now()
        if action is not None:
            try:
                await action(self._context(row, error))
            except Exception as failed:
                if is_cancellation(failed):
                    raise
                self._step(strategy, f"{reason}; action failed: {_describe(failed)}", "failed", at)
                return False
        self._step(strategy, reason, "done", at)
        return True

    def _context(self, row: MatrixRow, error: ClassifiedError) -> FailureContext:
        return FailureContext(error, row, self.run_no, self.timeout, tuple(self.steps))

    def _step(
        self, strategy: Strategy, reason: str, outcome: StepOutcome, at: float | None = None
    ) -> None:
        step = RecoveryStep(
            strategy, reason, self.run_no, self.clock.now() if at is None else at, outcome
        )
        self.steps.append(step)
        self.engine._count(step)

    def _raise(self, error: ClassifiedError) -> NoReturn:
        self.engine._raised += 1
        original = error.error
        err = to_bridge_error(original)
        steps = tuple(self.steps)
        err.recovery_steps = steps  # type: ignore[attr-defined]
        if steps:
            err.data = {**err.data, "recoveries": [s.to_wire() for s in steps]}
            done = ", ".join(f"{s.action.value} ({s.outcome})" for s in steps)
            err.add_note(f"recovery: {done}")
        if err is original:
            raise err
        raise err from original


__all__ = [
    "AttemptContext",
    "FailureContext",
    "RecoveryAction",
    "RecoveryEngine",
    "RecoveryOutcome",
    "RecoveryStats",
    "RecoveryStep",
    "steps_of",
]
