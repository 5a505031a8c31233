from __future__ import annotations

import asyncio
import errno
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from lapce_bridge.core.errors import (
    BridgeError,
    BridgeTimeout,
    Cancelled,
    Classification,
    ErrorCategory,
    ErrorSeverity,
    FileSystemError,
    InternalError,
    NetworkError,
    ParseError,
    ParserError,
    PermissionDenied,
    ResourceExhausted,
    ShellCrashed,
    TerminalError,
)
from lapce_bridge.core.matrix import DEFAULT_MATRIX, MatrixRow, Strategy
from lapce_bridge.core.recovery import (
    AttemptContext,
    FailureContext,
    RecoveryAction,
    RecoveryEngine,
    RecoveryStep,
    steps_of,
)
from lapce_bridge.core.retry import RetryPolicy
from lapce_bridge.testing import FakeClock

S = Strategy
CRITICAL_NETWORK = Classification(ErrorCategory.NETWORK, ErrorSeverity.CRITICAL, True, True)
CRITICAL_PARSER = Classification(ErrorCategory.PARSER, ErrorSeverity.CRITICAL, False, True)
EXPONENTIAL = [0.05, 0.1, 0.2, 0.4, 0.8]


class Operation:
    """An operation that fails with the given errors in turn, then returns "ok"."""

    def __init__(self, *errors: Exception, forever: Callable[[], Exception] | None = None):
        self.errors = list(errors)
        self.forever = forever
        self.contexts: list[AttemptContext] = []

    async def __call__(self, ctx: AttemptContext) -> Any:
        self.contexts.append(ctx)
        if self.errors:
            raise self.errors.pop(0)
        if self.forever is not None:
            raise self.forever()
        return "ok"

    @property
    def runs(self) -> int:
        return len(self.contexts)


class Actions:
    """Records which strategies' actions ran, with the context they were given."""

    def __init__(self) -> None:
        self.calls: list[tuple[Strategy, FailureContext]] = []

    def returning(self, strategy: Strategy, value: Any = None) -> RecoveryAction:
        async def action(ctx: FailureContext) -> Any:
            self.calls.append((strategy, ctx))
            return value

        return action

    def raising(self, strategy: Strategy, exc: Exception) -> RecoveryAction:
        async def action(ctx: FailureContext) -> Any:
            self.calls.append((strategy, ctx))
            raise exc

        return action

    @property
    def ran(self) -> list[Strategy]:
        return [s for s, _ in self.calls]


def engine(clock: FakeClock, **kw: Any) -> RecoveryEngine:
    clock.autojump = True
    backoff = RetryPolicy(jitter=0.0, clock=clock)
    return RecoveryEngine(clock=clock, backoff=backoff, **kw)


def trail(steps: tuple[RecoveryStep, ...]) -> list[tuple[str, str, int]]:
    return [(s.action.value, s.outcome, s.attempt) for s in steps]


async def test_first_run_success_takes_no_step(clock: FakeClock) -> None:
    op = Operation()
    outcome = await engine(clock).run(op, op="fs/read")
    assert outcome.value == "ok"
    assert outcome.steps == ()
    assert not outcome.recovered
    assert op.contexts == [AttemptContext(1, 10.0)]


# -- every row of the matrix -------------------------------------------------------------------


async def test_terminal_critical_recreates_the_terminal_then_reruns(clock: FakeClock) -> None:
    acts = Actions()
    op = Operation(ShellCrashed("shell exited 137"))
    actions = {S.RECREATE_TERMINAL: acts.returning(S.RECREATE_TERMINAL)}
    outcome = await engine(clock).run(op, actions)
    assert outcome.value == "ok"
    assert trail(outcome.steps) == [("recreate_terminal", "done", 1)]
    assert outcome.steps[0].reason == "ShellCrashed: shell exited 137"
    assert clock.sleeps == []  # re-creating is the remedy: no backoff
    assert op.runs == 2
    ctx = acts.calls[0][1]
    assert ctx.row == DEFAULT_MATRIX.lookup(ErrorCategory.TERMINAL, ErrorSeverity.CRITICAL)
    assert ctx.attempt == 1


async def test_terminal_critical_alerts_the_user_when_recreating_fails(clock: FakeClock) -> None:
    acts = Actions()
    last = ShellCrashed("died again")
    op = Operation(ShellCrashed("died"), last)
    actions = {
        S.RECREATE_TERMINAL: acts.returning(S.RECREATE_TERMINAL),
        S.ALERT_USER: acts.returning(S.ALERT_USER, "ignored"),
    }
    with pytest.raises(ShellCrashed) as info:
        await engine(clock).run(op, actions)
    assert info.value is last
    assert acts.ran == [S.RECREATE_TERMINAL, S.ALERT_USER]
    assert trail(steps_of(last)) == [("recreate_terminal", "done", 1), ("alert_user", "done", 2)]
    assert last.data["recoveries"][0] == {
        "action": "recreate_terminal",
        "reason": "ShellCrashed: died",
    }


async def test_terminal_recoverable_retries_then_raw_output_mode(clock: FakeClock) -> None:
    acts = Actions()
    op = Operation(forever=lambda: TerminalError("no end marker"))
    actions = {S.RAW_OUTPUT_MODE: acts.returning(S.RAW_OUTPUT_MODE, "raw text")}
    outcome = await engine(clock).run(op, actions)
    assert outcome.value == "raw text"
    assert clock.sleeps == EXPONENTIAL[:3]
    assert op.runs == 4
    assert trail(outcome.steps) == [
        ("retry_command", "done", 1),
        ("retry_command", "done", 2),
        ("retry_command", "done", 3),
        ("raw_output_mode", "done", 4),
    ]
    assert [s.at for s in outcome.steps] == pytest.approx([0.05, 0.15, 0.35, 0.35])


async def test_filesystem_critical_alerts_once_and_raises_classified(clock: FakeClock) -> None:
    acts = Actions()
    denied = PermissionError(errno.EACCES, "denied")
    op = Operation(denied)
    with pytest.raises(PermissionDenied) as info:
        await engine(clock).run(op, {S.ALERT_USER: acts.returning(S.ALERT_USER)})
    assert info.value.__cause__ is denied
    assert acts.ran == [S.ALERT_USER]
    assert op.runs == 1
    assert trail(steps_of(info.value)) == [("alert_user", "done", 1)]
    assert info.value.to_wire()["recoveries"] == [
        {"action": "alert_user", "reason": "PermissionError: [Errno 13] denied"}
    ]


async def test_filesystem_recoverable_backs_off_then_succeeds(clock: FakeClock) -> None:
    op = Operation(OSError(errno.EIO, "io"), OSError(errno.ESTALE, "stale"))
    outcome = await engine(clock).run(op)
    assert outcome.value == "ok"
    assert clock.sleeps == [0.05, 0.1]
    assert trail(outcome.steps) == [
        ("retry_with_backoff", "done", 1),
        ("retry_with_backoff", "done", 2),
    ]


async def test_filesystem_recoverable_falls_back_to_the_cached_copy(clock: FakeClock) -> None:
    acts = Actions()
    op = Operation(forever=lambda: OSError(errno.EIO, "io"))
    outcome = await engine(clock).run(
        op, {S.CACHE_PREVIOUS: acts.returning(S.CACHE_PREVIOUS, "old")}
    )
    assert outcome.value == "old"
    assert op.runs == 4
    assert clock.sleeps == EXPONENTIAL[:3]
    assert acts.calls[0][1].error.category is ErrorCategory.FILESYSTEM


async def test_network_critical_reconnects_five_times_then_local_mode(clock: FakeClock) -> None:
    acts = Actions()
    op = Operation(forever=lambda: NetworkError("ipc down", classification=CRITICAL_NETWORK))
    actions = {
        S.RECONNECT_IPC: acts.returning(S.RECONNECT_IPC),
        S.LOCAL_MODE: acts.returning(S.LOCAL_MODE, "local"),
    }
    outcome = await engine(clock).run(op, actions)
    assert outcome.value == "local"
    assert acts.ran == [S.RECONNECT_IPC] * 5 + [S.LOCAL_MODE]
    assert clock.sleeps == EXPONENTIAL
    assert op.runs == 6


async def test_network_critical_without_reconnect_is_unavailable(clock: FakeClock) -> None:
    first = NetworkError("ipc down", classification=CRITICAL_NETWORK)
    op = Operation(first)
    with pytest.raises(NetworkError) as info:
        await engine(clock).run(op, {})
    assert info.value is first
    assert op.runs == 1
    assert trail(steps_of(first)) == [
        ("reconnect_ipc", "unavailable", 1),
        ("local_mode", "unavailable", 1),
    ]


async def test_network_recoverable_retries_then_queues(clock: FakeClock) -> None:
    acts = Actions()
    op = Operation(forever=lambda: ConnectionResetError(errno.ECONNRESET, "reset"))
    actions = {S.QUEUE_FOR_LATER: acts.returning(S.QUEUE_FOR_LATER, {"queued": True})}
    outcome = await engine(clock).run(op, actions)
    assert outcome.value == {"queued": True}
    assert [s.action for s in outcome.steps] == [S.RETRY_REQUEST] * 3 + [S.QUEUE_FOR_LATER]
    assert clock.sleeps == EXPONENTIAL[:3]


async def test_parser_critical_resets_once_then_skips_markers(clock: FakeClock) -> None:
    acts = Actions()
    op = Operation(ParserError("marker stack corrupt", classification=CRITICAL_PARSER))
    actions = {
        S.RESET_PARSER_STATE: acts.returning(S.RESET_PARSER_STATE),
        S.SKIP_MARKERS: acts.returning(S.SKIP_MARKERS, "plain output"),
    }
    outcome = await engine(clock).run(op, actions)
    assert outcome.value == "plain output"
    assert acts.ran == [S.RESET_PARSER_STATE, S.SKIP_MARKERS]
    assert op.runs == 1  # 0 retries: the operation is not run again
    assert clock.sleeps == []


async def test_parser_recoverable_buffers_and_retries_once(clock: FakeClock) -> None:
    acts = Actions()
    op = Operation(ParseError("split sequence"), ParseError("still split"))
    actions = {S.RAW_PASSTHROUGH: acts.returning(S.RAW_PASSTHROUGH, b"raw")}
    outcome = await engine(clock).run(op, actions)
    assert outcome.value == b"raw"
    assert op.runs == 2
    assert trail(outcome.steps) == [("buffer_and_retry", "done", 1), ("raw_passthrough", "done", 2)]


async def test_resource_critical_frees_then_shuts_down_and_raises(clock: FakeClock) -> None:
    acts = Actions()
    oom = MemoryError()
    op = Operation(oom)
    actions = {
        S.FREE_RESOURCES: acts.returning(S.FREE_RESOURCES),
        S.GRACEFUL_SHUTDOWN: acts.returning(S.GRACEFUL_SHUTDOWN),
    }
    with pytest.raises(ResourceExhausted) as info:
        await engine(clock).run(op, actions)
    assert info.value.__cause__ is oom
    assert acts.ran == [S.FREE_RESOURCES, S.GRACEFUL_SHUTDOWN]
    assert op.runs == 1


async def test_resource_recoverable_throttles_up_to_the_cap_then_reduces_quality(
    clock: FakeClock,
) -> None:
    acts = Actions()
    op = Operation(forever=lambda: ResourceExhausted("outbox full"))
    actions = {
        S.THROTTLE_OPERATIONS: acts.returning(S.THROTTLE_OPERATIONS),
        S.REDUCE_QUALITY: acts.returning(S.REDUCE_QUALITY, "degraded"),
    }
    outcome = await engine(clock, unbounded_retries=4).run(op, actions)
    assert outcome.value == "degraded"
    assert acts.ran == [S.THROTTLE_OPERATIONS] * 4 + [S.REDUCE_QUALITY]
    assert clock.sleeps == EXPONENTIAL[:4]


async def test_unbounded_rows_stop_at_the_engine_deadline(clock: FakeClock) -> None:
    acts = Actions()
    op = Operation(forever=lambda: ResourceExhausted("outbox full"))
    actions = {S.REDUCE_QUALITY: acts.returning(S.REDUCE_QUALITY, "degraded")}
    outcome = await engine(clock, deadline=0.3).run(op, actions)
    assert outcome.value == "degraded"
    assert clock.sleeps == [0.05, 0.1]  # a third wait (0.2) would end at 0.35 > 0.3
    assert op.runs == 3


async def test_timeout_recoverable_doubles_the_timeout_then_cancels(clock: FakeClock) -> None:
    acts = Actions()
    op = Operation(forever=lambda: BridgeTimeout("slow"))
    with pytest.raises(BridgeTimeout):
        await engine(clock).run(
            op, {S.CANCEL_OPERATION: acts.returning(S.CANCEL_OPERATION)}, op="fs/read"
        )
    assert [c.timeout for c in op.contexts] == [10.0, 20.0, 40.0]
    assert [c.attempt for c in op.contexts] == [1, 2, 3]
    assert acts.ran == [S.CANCEL_OPERATION]
    assert clock.sleeps == []


async def test_increase_timeout_from_an_explicit_base(clock: FakeClock) -> None:
    op = Operation(TimeoutError(), TimeoutError())
    outcome = await engine(clock).run(op, base_timeout=1.5)
    assert outcome.value == "ok"
    assert [c.timeout for c in op.contexts] == [1.5, 3.0, 6.0]
    assert isinstance(op.contexts[1].last_error, TimeoutError)


async def test_cancel_operation_needs_no_action(clock: FakeClock) -> None:
    op = Operation(forever=lambda: BridgeTimeout("slow"))
    with pytest.raises(BridgeTimeout) as info:
        await engine(clock).run(op, base_timeout=1.0)
    assert trail(steps_of(info.value))[-1] == ("cancel_operation", "done", 3)


# -- edges ------------------------------------------------------------------------------------


async def test_errors_outside_the_table_surface_classified_at_once(clock: FakeClock) -> None:
    missing = FileNotFoundError(errno.ENOENT, "gone")
    op = Operation(missing)
    with pytest.raises(FileSystemError) as info:
        await engine(clock).run(op)
    assert info.value.__cause__ is missing
    assert info.value.errno == errno.ENOENT
    assert steps_of(info.value) == ()
    assert op.runs == 1


async def test_a_rerunning_primary_with_zero_retries_is_skipped(clock: FakeClock) -> None:
    acts = Actions()
    row = MatrixRow(ErrorCategory.TERMINAL, ErrorSeverity.CRITICAL, S.RECREATE_TERMINAL, S.NONE, 0)
    eng = engine(clock, matrix=DEFAULT_MATRIX.with_row(row))
    op = Operation(ShellCrashed("died"))
    with pytest.raises(ShellCrashed) as info:
        await eng.run(op, {S.RECREATE_TERMINAL: acts.returning(S.RECREATE_TERMINAL)})
    assert acts.ran == []
    assert steps_of(info.value) == ()
    with pytest.raises(ShellCrashed) as info:
        await eng.run(Operation(ShellCrashed("died")))
    assert steps_of(info.value) == ()  # not even recorded as unavailable


async def test_a_later_request_error_goes_straight_to_the_fallback(clock: FakeClock) -> None:
    acts = Actions()
    op = Operation(OSError(errno.EIO, "io"), FileNotFoundError(errno.ENOENT, "gone"))
    actions = {S.CACHE_PREVIOUS: acts.returning(S.CACHE_PREVIOUS, "cached")}
    outcome = await engine(clock).run(op, actions)
    assert outcome.value == "cached"
    assert op.runs == 2
    assert isinstance(acts.calls[0][1].error.error, FileNotFoundError)


async def test_a_failing_action_is_recorded_and_the_fallback_runs(clock: FakeClock) -> None:
    acts = Actions()
    op = Operation(ShellCrashed("died"))
    actions = {
        S.RECREATE_TERMINAL: acts.raising(S.RECREATE_TERMINAL, OSError(errno.EAGAIN, "fork")),
        S.ALERT_USER: acts.returning(S.ALERT_USER),
    }
    with pytest.raises(ShellCrashed) as info:
        await engine(clock).run(op, actions)
    steps = steps_of(info.value)
    assert trail(steps) == [("recreate_terminal", "failed", 1), ("alert_user", "done", 1)]
    assert "action failed: BlockingIOError" in steps[0].reason
    assert op.runs == 1


async def test_a_failing_fallback_raises_its_own_error_classified(clock: FakeClock) -> None:
    acts = Actions()
    op = Operation(forever=lambda: OSError(errno.EIO, "io"))
    actions = {S.CACHE_PREVIOUS: acts.raising(S.CACHE_PREVIOUS, KeyError("not cached"))}
    with pytest.raises(InternalError) as info:
        await engine(clock).run(op, actions)
    assert isinstance(info.value.__cause__, KeyError)
    assert trail(steps_of(info.value))[-1] == ("cache_previous", "failed", 4)


async def test_cancelled_error_passes_through_untouched(clock: FakeClock) -> None:
    op = Operation(OSError(errno.EIO, "io"))
    eng = engine(clock)
    task = asyncio.create_task(eng.run(op))
    clock.autojump = False
    await clock.wait_for_sleepers(1)  # backing off
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert op.runs == 1


async def test_user_cancellation_is_never_retried(clock: FakeClock) -> None:
    stop = Cancelled("client cancelled")
    op = Operation(stop)
    with pytest.raises(Cancelled) as info:
        await engine(clock).run(op)
    assert info.value is stop
    acts = Actions()
    op2 = Operation(OSError(errno.EIO, "io"), Cancelled("mid-retry"))
    with pytest.raises(Cancelled):
        await engine(clock).run(op2, {S.CACHE_PREVIOUS: acts.returning(S.CACHE_PREVIOUS)})
    assert op2.runs == 2
    assert acts.ran == []  # no fallback for a cancellation either


async def test_cancellation_inside_an_action_propagates(clock: FakeClock) -> None:
    acts = Actions()
    op = Operation(ShellCrashed("died"))
    actions = {S.RECREATE_TERMINAL: acts.raising(S.RECREATE_TERMINAL, Cancelled("stop"))}
    with pytest.raises(Cancelled):
        await engine(clock).run(op, actions)


async def test_statistics_count_runs_and_steps(clock: FakeClock) -> None:
    eng = engine(clock)
    acts = Actions()
    await eng.run(Operation())
    await eng.run(Operation(OSError(errno.EIO, "io")))
    await eng.run(
        Operation(forever=lambda: OSError(errno.EIO, "io")),
        {S.CACHE_PREVIOUS: acts.returning(S.CACHE_PREVIOUS, 1)},
    )
    with pytest.raises(BridgeError):
        await eng.run(Operation(PermissionError(errno.EPERM, "no")))
    stats = eng.statistics()
    assert (stats.runs, stats.failures, stats.recovered_by_retry) == (4, 3, 1)
    assert (stats.recovered_by_fallback, stats.raised) == (1, 1)
    assert stats.steps == {
        "retry_with_backoff:done": 4,
        "cache_previous:done": 1,
        "alert_user:unavailable": 1,
    }


def test_step_wire_form() -> None:
    step = RecoveryStep(S.RECREATE_TERMINAL, "shell died", 1, 0.5)
    assert step.to_wire() == {"action": "recreate_terminal", "reason": "shell died"}
    assert steps_of(ValueError()) == ()


async def test_long_reasons_are_shortened(clock: FakeClock) -> None:
    op: Callable[[AttemptContext], Awaitable[str]] = Operation(TerminalError("x" * 1000))
    outcome = await engine(clock).run(op)
    assert len(outcome.steps[0].reason) == 200
