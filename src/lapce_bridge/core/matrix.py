"""The recovery matrix: which strategy answers which kind of failure, as data.

Theory of operation: a failure is classified (`core.errors.classify`) into a category and a
severity; the matrix maps that pair to one frozen `MatrixRow`: a primary strategy, tried up to
`max_retries` times (None: as often as the reader's own bounds allow), then a fallback. The
table is the specification's, row for row. `STRATEGY_SPECS` says what each strategy *means* to
the code that reads its row: whether the operation is run again after it, whether it is
meaningless without an action supplied by the caller, whether re-runs wait on the backoff
schedule, and whether, as a fallback, it ends in the error being raised (an alert, a
shutdown, a cancellation) rather than in a value. Each recovery site reads its own row (there
is no generic executor: a terminal, a disk read and a reconnect recover in different ways).

The matrix is the running policy: the server (`App`: the file service's read retries) and
the client (`BridgeClient`: retrying retryable answers, reconnecting) take their retry counts
from `attempts()`/`retry_policy()`, so changing a row changes what they do.

A user changes rows without code: `load_matrix(path)` reads a TOML or JSON file of rows
(`lapce-bridge serve --recovery-matrix FILE`), each laid over the default row of its pair;
whatever is wrong in it is refused with the file, the row and the valid choices named.

Invariants: every (category, severity) pair has exactly one row; pairs the table does not
name get a row that retries nothing and has no fallback, so the error is surfaced:
- warning and info failures are the request's own fault (ENOENT, bad params, a conflict) and
  would fail the same way again;
- user_cancelled is never retried, whatever its severity;
- a critical timeout (not in the table) is not retried either: only recoverable ones are.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

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
    max_retries: int | None  # None: unbounded (the reader's own deadline and cap still apply)

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


# The tries a row "without bound" (`max_retries` None) still stops at, wherever it is read,
# unless the reader has a bound of its own: nothing is retried forever.
UNBOUNDED_RETRIES = 10

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

_ROW_KEYS = ("category", "severity", "primary", "fallback", "maxRetries")


def load_matrix(path: Path, base: RecoveryMatrix = DEFAULT_MATRIX) -> RecoveryMatrix:
    """`base` with the rows of a TOML (`[[rows]]` tables) or JSON (`{"rows": [...]}`) file
    laid over it. A row names its `category` and `severity` and any of `primary`,
    `fallback` and `maxRetries` (a count, or "unbounded"); what it leaves out keeps the base
    row's value. `InvalidParams` names the file, the row and what is wrong."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidParams(f"{path}: cannot read it: {exc}") from exc
    try:
        if path.suffix.lower() == ".json":
            import json

            data: Any = json.loads(text)
        else:
            import tomllib

            data = tomllib.loads(text)
    except ValueError as exc:  # json.JSONDecodeError, tomllib.TOMLDecodeError
        kind = "JSON" if path.suffix.lower() == ".json" else "TOML"
        raise InvalidParams(f"{path}: not valid {kind}: {exc}") from exc
    try:
        return matrix_with_rows(data, base)
    except InvalidParams as exc:
        raise InvalidParams(f"{path}: {exc.detail}") from None


def matrix_with_rows(data: object, base: RecoveryMatrix = DEFAULT_MATRIX) -> RecoveryMatrix:
    """`base` with the rows of `{"rows": [{category, severity, ...}, ...]}` laid over it."""
    if not isinstance(data, Mapping) or set(data) != {"rows"}:
        raise InvalidParams('expected one key, "rows": a list of rows ([[rows]] in TOML)')
    items = data["rows"]
    if not isinstance(items, list):
        raise InvalidParams('"rows" must be a list of rows')
    seen: set[tuple[ErrorCategory, ErrorSeverity]] = set()
    matrix = base
    for number, item in enumerate(items, 1):
        try:
            row = _row(item, matrix)
        except InvalidParams as exc:
            raise InvalidParams(f"row {number}: {exc.detail}") from None
        if (row.category, row.severity) in seen:
            raise InvalidParams(f"row {number}: a second row for {row.category}/{row.severity}")
        seen.add((row.category, row.severity))
        try:
            matrix = matrix.with_row(row)
        except InvalidParams as exc:
            raise InvalidParams(f"row {number}: {exc.detail}") from None
    return matrix


def _row(item: object, base: RecoveryMatrix) -> MatrixRow:
    if not isinstance(item, Mapping):
        raise InvalidParams("a row is a table of " + ", ".join(_ROW_KEYS))
    unknown = sorted(str(k) for k in item if k not in _ROW_KEYS)
    if unknown:
        raise InvalidParams(f"unknown key {unknown[0]!r} (known: {', '.join(_ROW_KEYS)})")
    category = _choice(item, "category", ErrorCategory)
    severity = _choice(item, "severity", ErrorSeverity)
    row = base.lookup(category, severity)
    if "primary" in item:
        row = replace(row, primary=_choice(item, "primary", Strategy))
    if "fallback" in item:
        row = replace(row, fallback=_choice(item, "fallback", Strategy))
    if "maxRetries" in item:
        value = item["maxRetries"]
        if value == "unbounded" or value is None:
            row = replace(row, max_retries=None)
        elif type(value) is int and value >= 0:
            row = replace(row, max_retries=value)
        else:
            raise InvalidParams(
                f'maxRetries must be a count (0 or more) or "unbounded", not {value!r}'
            )
    return row


def _choice(item: Mapping[str, object], key: str, kind: Any) -> Any:
    valid = ", ".join(member.value for member in kind)
    if key not in item:
        raise InvalidParams(f"{key} is missing (one of {valid})")
    value = item[key]
    try:
        return kind(value)
    except (ValueError, TypeError):
        raise InvalidParams(f"unknown {key} {value!r} (one of {valid})") from None


__all__ = [
    "DEFAULT_MATRIX",
    "DEFAULT_ROWS",
    "STRATEGY_SPECS",
    "UNBOUNDED_RETRIES",
    "MatrixRow",
    "RecoveryMatrix",
    "Strategy",
    "StrategySpec",
    "load_matrix",
    "matrix_with_rows",
    "surface_row",
]
