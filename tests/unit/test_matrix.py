from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lapce_bridge.core.errors import (
    ErrorCategory,
    ErrorSeverity,
    InvalidParams,
    ParseError,
    ResourceExhausted,
    ShellCrashed,
    TerminalError,
)
from lapce_bridge.core.matrix import (
    DEFAULT_MATRIX,
    STRATEGY_SPECS,
    MatrixRow,
    RecoveryMatrix,
    Strategy,
    load_matrix,
)

C, V, S = ErrorCategory, ErrorSeverity, Strategy

# The specification's table, written out independently of the module.
SPEC_TABLE = {
    ("terminal", "critical"): ("recreate_terminal", "alert_user", 1),
    ("terminal", "recoverable"): ("retry_command", "raw_output_mode", 3),
    ("filesystem", "critical"): ("alert_user", "none", 0),
    ("filesystem", "recoverable"): ("retry_with_backoff", "cache_previous", 3),
    ("network", "critical"): ("reconnect_ipc", "local_mode", 5),
    ("network", "recoverable"): ("retry_request", "queue_for_later", 3),
    ("parser", "critical"): ("reset_parser_state", "skip_markers", 0),
    ("parser", "recoverable"): ("buffer_and_retry", "raw_passthrough", 1),
    ("resource", "critical"): ("free_resources", "graceful_shutdown", 0),
    ("resource", "recoverable"): ("throttle_operations", "reduce_quality", None),
    ("timeout", "recoverable"): ("increase_timeout", "cancel_operation", 2),
}


def test_the_default_matrix_is_the_specifications_table() -> None:
    got = {
        (r.category.value, r.severity.value): (r.primary.value, r.fallback.value, r.max_retries)
        for r in DEFAULT_MATRIX
    }
    assert got == SPEC_TABLE
    assert len(DEFAULT_MATRIX) == 11


@given(st.sampled_from(list(C)), st.sampled_from(list(V)))
def test_every_pair_has_exactly_its_row(category: ErrorCategory, severity: ErrorSeverity) -> None:
    row = DEFAULT_MATRIX.lookup(category, severity)
    assert (row.category, row.severity) == (category, severity)
    spec = SPEC_TABLE.get((category.value, severity.value))
    if spec is None:  # not in the table: surface the error, retry nothing
        assert (row.primary, row.fallback, row.max_retries) == (S.NONE, S.NONE, 0)
    else:
        assert (row.primary.value, row.fallback.value, row.max_retries) == spec


@pytest.mark.parametrize("severity", list(V))
def test_user_cancelled_is_never_retried(severity: ErrorSeverity) -> None:
    row = DEFAULT_MATRIX.lookup(C.USER_CANCELLED, severity)
    assert row.max_retries == 0
    assert row.primary is S.NONE
    assert row.fallback is S.NONE


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (ShellCrashed("died"), ("terminal", "critical")),
        (TerminalError("no prompt"), ("terminal", "recoverable")),
        (OSError(errno.EIO, "io"), ("filesystem", "recoverable")),
        (PermissionError(errno.EACCES, "no"), ("filesystem", "critical")),
        (ConnectionResetError(errno.ECONNRESET, "reset"), ("network", "recoverable")),
        (ParseError("bad frame"), ("parser", "recoverable")),
        (MemoryError(), ("resource", "critical")),
        (ResourceExhausted("queue full"), ("resource", "recoverable")),
        (TimeoutError(), ("timeout", "recoverable")),
    ],
)
def test_lookup_error_classifies_then_looks_up(
    exc: BaseException, expected: tuple[str, str]
) -> None:
    row = DEFAULT_MATRIX.lookup_error(exc)
    assert (row.category.value, row.severity.value) == expected
    assert row.primary.value == SPEC_TABLE[expected][0]


def test_request_errors_surface_without_retry() -> None:
    row = DEFAULT_MATRIX.lookup_error(FileNotFoundError(errno.ENOENT, "gone"))
    assert (row.severity, row.primary, row.max_retries) == (V.WARNING, S.NONE, 0)


def test_every_strategy_has_a_spec_and_one_shot_primaries_do_not_rerun() -> None:
    assert set(STRATEGY_SPECS) == set(Strategy)
    for row in DEFAULT_MATRIX:
        spec = STRATEGY_SPECS[row.primary]
        if not spec.reruns:
            assert row.max_retries == 0, row
    assert STRATEGY_SPECS[S.RETRY_WITH_BACKOFF].backoff
    assert not STRATEGY_SPECS[S.RECREATE_TERMINAL].backoff
    assert STRATEGY_SPECS[S.ALERT_USER].ends_in_error
    assert not STRATEGY_SPECS[S.CACHE_PREVIOUS].ends_in_error


def test_with_row_replaces_one_row_and_leaves_the_original() -> None:
    row = MatrixRow(C.TERMINAL, V.RECOVERABLE, S.RETRY_COMMAND, S.NONE, 7)
    changed = DEFAULT_MATRIX.with_row(row)
    assert changed.lookup(C.TERMINAL, V.RECOVERABLE) == row
    assert DEFAULT_MATRIX.lookup(C.TERMINAL, V.RECOVERABLE).max_retries == 3
    assert len(changed) == len(DEFAULT_MATRIX)


@pytest.mark.parametrize(
    "rows",
    [
        [
            MatrixRow(C.PARSER, V.CRITICAL, S.NONE, S.NONE, 0),
            MatrixRow(C.PARSER, V.CRITICAL, S.NONE, S.NONE, 1),
        ],
        [MatrixRow(C.PARSER, V.CRITICAL, S.BUFFER_AND_RETRY, S.NONE, -1)],
        [MatrixRow(C.USER_CANCELLED, V.INFO, S.RETRY_REQUEST, S.NONE, 2)],
        [MatrixRow(C.USER_CANCELLED, V.INFO, S.RETRY_REQUEST, S.NONE, None)],
    ],
)
def test_inconsistent_tables_are_refused(rows: list[MatrixRow]) -> None:
    with pytest.raises(InvalidParams):
        RecoveryMatrix(rows)


def test_rows_serialise_with_wire_names() -> None:
    row = DEFAULT_MATRIX.lookup(C.RESOURCE, V.RECOVERABLE)
    assert row.unbounded
    assert row.to_json() == {
        "category": "resource",
        "severity": "recoverable",
        "primary": "throttle_operations",
        "fallback": "reduce_quality",
        "maxRetries": None,
    }


def test_a_matrix_file_lays_its_rows_over_the_default_ones(tmp_path: Path) -> None:
    toml = tmp_path / "rows.toml"
    toml.write_text(
        "[[rows]]\n"
        'category = "terminal"\nseverity = "critical"\nmaxRetries = 0\n'
        "[[rows]]\n"
        'category = "filesystem"\nseverity = "recoverable"\n'
        'fallback = "none"\nmaxRetries = "unbounded"\n'
    )
    matrix = load_matrix(toml)
    assert matrix.lookup(C.TERMINAL, V.CRITICAL) == MatrixRow(
        C.TERMINAL, V.CRITICAL, S.RECREATE_TERMINAL, S.ALERT_USER, 0
    )
    assert matrix.lookup(C.FILESYSTEM, V.RECOVERABLE) == MatrixRow(
        C.FILESYSTEM, V.RECOVERABLE, S.RETRY_WITH_BACKOFF, S.NONE, None
    )
    changed = {(C.TERMINAL, V.CRITICAL), (C.FILESYSTEM, V.RECOVERABLE)}
    kept = [r for r in DEFAULT_MATRIX if (r.category, r.severity) not in changed]
    assert [matrix.lookup(r.category, r.severity) for r in kept] == kept
    assert len(matrix) == len(DEFAULT_MATRIX)
    # The same rows in JSON (null: unbounded), a pair the table does not name added.
    as_json = tmp_path / "rows.json"
    as_json.write_text(
        json.dumps({"rows": [{"category": "parser", "severity": "warning", "maxRetries": None}]})
    )
    added = load_matrix(as_json).lookup(C.PARSER, V.WARNING)
    assert (added.primary, added.max_retries) == (S.NONE, None)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('rows = "x"', '"rows" must be a list'),
        ('[[row]]\ncategory = "terminal"', 'one key, "rows"'),
        ("[[rows]]\nseverity = 'critical'", "row 1: category is missing (one of terminal,"),
        ("[[rows]]\ncategory = 'term'\nseverity = 'critical'", "unknown category 'term'"),
        (
            "[[rows]]\ncategory = 'terminal'\nseverity = 'critical'\nprimary = 'restart'",
            "unknown primary 'restart' (one of none, recreate_terminal,",
        ),
        (
            "[[rows]]\ncategory = 'terminal'\nseverity = 'critical'\nmax_retries = 1",
            "unknown key 'max_retries' (known: category, severity, primary, fallback, maxRetries)",
        ),
        (
            "[[rows]]\ncategory = 'terminal'\nseverity = 'critical'\nmaxRetries = -1",
            "maxRetries must be a count (0 or more)",
        ),
        (
            "[[rows]]\ncategory = 'terminal'\nseverity = 'critical'\n"
            "[[rows]]\ncategory = 'network'\nseverity = 'critical'\n"
            "[[rows]]\ncategory = 'terminal'\nseverity = 'critical'",
            "row 3: a second row for terminal/critical",
        ),
        (
            "[[rows]]\ncategory = 'user_cancelled'\nseverity = 'warning'\nmaxRetries = 1",
            "row 1: user_cancelled failures are never retried",
        ),
        ("[[rows]\n", "not valid TOML"),
    ],
)
def test_a_bad_matrix_file_is_refused_saying_where_and_why(
    tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "rows.toml"
    path.write_text(text)
    with pytest.raises(InvalidParams) as info:
        load_matrix(path)
    assert info.value.detail.startswith(f"{path}: ")
    assert message in info.value.detail


def test_a_matrix_file_that_cannot_be_read_or_parsed_says_so(tmp_path: Path) -> None:
    with pytest.raises(InvalidParams, match="cannot read it"):
        load_matrix(tmp_path / "missing.toml")
    bad = tmp_path / "rows.json"
    bad.write_text("{rows: []}")
    with pytest.raises(InvalidParams, match="not valid JSON"):
        load_matrix(bad)
