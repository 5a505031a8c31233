"""The recovery matrix: which strategy answers which kind of failure, as data.

Theory of operation: a failure is classified (`core.errors.classify`) into a category and a
severity; the matrix maps that pair to one frozen `MatrixRow`: a primary strategy, tried up to
`max_retries` times (None: as often as the engine's own bounds allow), then a fallback. The
table is the specification's, row for row. `STRATEGY_SPECS` says what each strategy *means* to
the engine that carries it out (`core.recovery.RecoveryEngine`): whether the operation is run
again after it, whether it is meaningless without an action supplied by the caller, whether
re-runs wait on the backoff schedule, and whether, as a fallback, it ends in the error being
raised (an alert, a shutdown, a cancellation) rather than in a value.

The matrix is the running policy: the server (`App`: the file service's read retries) and
the client (`BridgeClient`: retrying retryable answers, reconnecting) take their retry counts
from `attempts()`/`retry_policy()`, so changing a row changes what they do.

Invariants: every (category, severity) pair has exactly one row; pairs the table does not
name get a row that retries nothing and has no fallback, so the error is surfaced:
- warning and info failures are the request's own fault (ENOENT, bad params, a conflict) and
  would fail the same way again;
- user_cancelled is never retried, whatever its severity;
- a critical timeout (not in the table) is not retried either: only recoverable ones are.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from enum import StrEnum

from lapce_bridge.core.errors import ErrorCategory, ErrorSeverity, InvalidParams, classify
from lapce_bridge.core.retry import RetryPolicy


class Strategy(StrEnum):
    NONE = "none"
    RECREATE_TERMINAL = "recreate_terminal"
    ALERT_USER = "alert_user"
    RETRY_COMMAND = "retry_command"
    RAW_OUTPUT_MODE = "raw_output_mode"
    RETRY_WITH_BACKOFF = "retry_with_backoff"
    CACHE_PREVIOUS = "cache_previous"
    RECONNECT_IPC = "reconnect_ipc"
    LOCAL_MODE = "local_mode"
    RETRY_REQUEST = "retry_request"
    QUEUE_FOR_LATER = "queue_for_later"
    RESET_PARSER_STATE = "reset_parser_state"
    SKIP_MARKERS = "skip_markers"
    BUFFER_AND_RETRY = "buffer_and_retry"
    RAW_PASSTHROUGH = "raw_passthrough"
    FREE_RESOURCES = "free_resources"
    GRACEFUL_SHUTDOWN = "graceful_shutdown"
    THROTTLE_OPERATIONS = "throttle_operations"
    REDUCE_QUALITY = "reduce_quality"
    INCREASE_TIMEOUT = "increase_timeout"
    CANCEL_OPERATION = "cancel_operation"


@dataclass(frozen=True, slots=True)
class StrategySpec:
    reruns: bool  # as a primary: the operation runs again after the strategy's action
    needs_action: bool  # nothing to do without the caller's action (else: a plain re-run)
    backoff: bool  # re-runs wait on the backoff schedule first
    ends_in_error: bool  # as a fallback: the action is a side effect, the error is raised after


def _spec(reruns: bool, needs_action: bool, backoff: bool, ends_in_error: bool) -> StrategySpec:
    return StrategySpec(reruns, needs_action, backoff, ends_in_error)


_S = Strategy
STRATEGY_SPECS: dict[Strategy, StrategySpec] = {
    _S.NONE:                _spec(False, False, False, True),
    # Re-creating the terminal or lengthening the timeout is itself the remedy: no waiting.
    _S.RECREATE_TERMINAL:   _spec(True, True, False, False),
    _S.INCREASE_TIMEOUT:    _spec(True, False, False, False),
    _S.RETRY_COMMAND:       _spec(True, False, True, False),
    _S.RETRY_WITH_BACKOFF:  _spec(True, False, True, False),
    _S.RETRY_REQUEST:       _spec(True, False, True, False),
    _S.BUFFER_AND_RETRY:    _spec(True, False, True, False),
    _S.RECONNECT_IPC:       _spec(True, True, True, False),
    _S.THROTTLE_OPERATIONS: _spec(True, False, True, False),
    # One-shot actions: run once, the operation is not re-run.
    _S.ALERT_USER:          _spec(False, True, False, True),
    _S.RESET_PARSER_STATE:  _spec(False, True, False, False),
    _S.FREE_RESOURCES:      _spec(False, True, False, False),
    _S.GRACEFUL_SHUTDOWN:   _spec(False, True, False, True),
    _S.CANCEL_OPERATION:    _spec(False, False, False, True),
    # Fallbacks that produce the result in a lesser way.
    _S.RAW_OUTPUT_MODE:     _spec(False, True, False, False),
    _S.CACHE_PREVIOUS:      _spec(False, True, False, False),
    _S.LOCAL_MODE:          _spec(False, True, False, False),
    _S.QUEUE_FOR_LATER:     _spec(False, True, False, False),
    _S.SKIP_MARKERS:        _spec(False, True, False, False),
    _S.RAW_PASSTHROUGH:     _spec(False, True, False, False),
    _S.REDUCE_QUALITY:      _spec(False, True, False, False),
}  # fmt: skip


@dataclass(frozen=True, slots=True)
class MatrixRow:
    category: ErrorCategory
    severity: ErrorSeverity
    primary: Strategy
    fallback: Strategy
    max_retries: int | None  # None: unbounded (the engine's deadline and cap still apply)

    @property
    def unbounded(self) -> bool:
        return self.max_retries is None

    def to_json(self) -> dict[str, object]:
        return {
            "category": self.category.value,
            "severity": self.severity.value,
            "primary": self.primary.value,
            "fallback": self.fallback.value,
            "maxRetries": self.max_retries,
        }


_C, _V = ErrorCategory, ErrorSeverity
_CRIT, _RECOV = _V.CRITICAL, _V.RECOVERABLE

DEFAULT_ROWS: tuple[MatrixRow, ...] = (
    MatrixRow(_C.TERMINAL, _CRIT, _S.RECREATE_TERMINAL, _S.ALERT_USER, 1),
    MatrixRow(_C.TERMINAL, _RECOV, _S.RETRY_COMMAND, _S.RAW_OUTPUT_MODE, 3),
    MatrixRow(_C.FILESYSTEM, _CRIT, _S.ALERT_USER, _S.NONE, 0),
    MatrixRow(_C.FILESYSTEM, _RECOV, _S.RETRY_WITH_BACKOFF, _S.CACHE_PREVIOUS, 3),
    MatrixRow(_C.NETWORK, _CRIT, _S.RECONNECT_IPC, _S.LOCAL_MODE, 5),
    MatrixRow(_C.NETWORK, _RECOV, _S.RETRY_REQUEST, _S.QUEUE_FOR_LATER, 3),
    MatrixRow(_C.PARSER, _CRIT, _S.RESET_PARSER_STATE, _S.SKIP_MARKERS, 0),
    MatrixRow(_C.PARSER, _RECOV, _S.BUFFER_AND_RETRY, _S.RAW_PASSTHROUGH, 1),
    MatrixRow(_C.RESOURCE, _CRIT, _S.FREE_RESOURCES, _S.GRACEFUL_SHUTDOWN, 0),
    MatrixRow(_C.RESOURCE, _RECOV, _S.THROTTLE_OPERATIONS, _S.REDUCE_QUALITY, None),
    MatrixRow(_C.TIMEOUT, _RECOV, _S.INCREASE_TIMEOUT, _S.CANCEL_OPERATION, 2),
)


def surface_row(category: ErrorCategory, severity: ErrorSeverity) -> MatrixRow:
    """The row for a pair the table does not name: no retry, no fallback, surface the error."""
    return MatrixRow(category, severity, _S.NONE, _S.NONE, 0)


class RecoveryMatrix:
    """An immutable lookup table over `MatrixRow`s; `with_row` derives a modified copy."""

    __slots__ = ("_rows",)

    def __init__(self, rows: Iterable[MatrixRow] = DEFAULT_ROWS) -> None:
        table: dict[tuple[ErrorCategory, ErrorSeverity], MatrixRow] = {}
        for row in rows:
            key = (row.category, row.severity)
            if key in table:
                raise InvalidParams(f"two matrix rows for {row.category}/{row.severity}")
            if row.max_retries is not None and row.max_retries < 0:
                raise InvalidParams(f"max_retries must not be negative in {key}")
            if row.category is ErrorCategory.USER_CANCELLED and row.max_retries != 0:
                raise InvalidParams("user_cancelled failures are never retried")
            table[key] = row
        self._rows = table

    def lookup(self, category: ErrorCategory, severity: ErrorSeverity) -> MatrixRow:
        row = self._rows.get((category, severity))
        return row if row is not None else surface_row(category, severity)

    def lookup_error(self, exc: BaseException) -> MatrixRow:
        c = classify(exc)
        return self.lookup(c.category, c.severity)

    def attempts(
        self, category: ErrorCategory, severity: ErrorSeverity, *, unbounded: int | None = None
    ) -> int | None:
        """How many times an operation failing this way may run in all: once when the row's
        primary strategy does not re-run it, else 1 + `max_retries` (`unbounded` when the row
        sets no bound). Every retry count in the server and the client is read here."""
        row = self.lookup(category, severity)
        if not STRATEGY_SPECS[row.primary].reruns:
            return 1
        return unbounded if row.max_retries is None else 1 + row.max_retries

    def retry_policy(
        self, category: ErrorCategory, severity: ErrorSeverity, base: RetryPolicy
    ) -> RetryPolicy:
        """`base`'s backoff with as many attempts as the row allows."""
        return base.with_attempts(self.attempts(category, severity, unbounded=base.max_attempts))

    def with_row(self, row: MatrixRow) -> RecoveryMatrix:
        """A copy of this matrix with `row` replacing the one for its pair."""
        rows = {**self._rows, (row.category, row.severity): row}
        return RecoveryMatrix(rows.values())

    def __iter__(self) -> Iterator[MatrixRow]:
        return iter(self._rows.values())

    def __len__(self) -> int:
        return len(self._rows)


DEFAULT_MATRIX = RecoveryMatrix()

__all__ = [
    "DEFAULT_MATRIX",
    "DEFAULT_ROWS",
    "STRATEGY_SPECS",
    "MatrixRow",
    "RecoveryMatrix",
    "Strategy",
    "StrategySpec",
    "surface_row",
]
