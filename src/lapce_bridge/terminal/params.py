"""The terminal methods' names, how their params are checked, and the time limits their own
params give them.

Light on purpose (no terminal code): a server whose terminals live in the terminal host
routes and bounds every terminal request with this table alone, so it starts without loading
the terminals (`host.proxy`); `TerminalService.methods()` serves exactly these names.
"""

from __future__ import annotations

import math
from typing import Any

from lapce_bridge.core.errors import InvalidParams
from lapce_bridge.rpc import Limit, Params

DEFAULT_MAX_WAIT_MS = 120_000
MAX_WAIT_PARAM_MS = 7 * 24 * 3600 * 1000
# Beyond a command's own limit: starting the default terminal, then settling after SIGINT.
ANSWER_MARGIN_S = 30.0
MISSING = object()


def param(params: Params, name: str, kind: type | tuple[type, ...], default: Any = MISSING) -> Any:
    value = params.get(name, MISSING)
    if value is MISSING or (value is None and default is not MISSING):
        if default is MISSING:
            raise InvalidParams(f"missing required parameter {name!r}")
        return default
    # bool is an int in Python, never in JSON-RPC params.
    if not isinstance(value, kind) or (isinstance(value, bool) and bool not in _kinds(kind)):
        raise InvalidParams(
            f"parameter {name!r} must be {_describe(kind)}, not {type(value).__name__}"
        )
    return value


def _kinds(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def _describe(kind: type | tuple[type, ...]) -> str:
    names = {
        str: "a string",
        int: "an integer",
        float: "a number",
        bool: "a boolean",
        dict: "an object",
    }
    return " or ".join(names.get(k, k.__name__) for k in _kinds(kind))


def seconds(params: Params, name: str, default: float | None) -> float | None:
    value = param(params, name, (int, float), None)
    if value is None:
        return default
    if not 0 < value <= MAX_WAIT_PARAM_MS:
        raise InvalidParams(
            f"parameter {name!r} must be positive and at most {MAX_WAIT_PARAM_MS} (7 days)"
        )
    return float(value) / 1000.0


def execute_limit(params: Params) -> float:
    """How long `terminal/execute` may hold its request: its answer is due by `timeoutMs`
    (`timed_out`) or `maxWaitMs` (`running`), whichever is first; the dispatcher's limit
    is never shorter."""
    timeout = seconds(params, "timeoutMs", None)
    max_wait = seconds(params, "maxWaitMs", DEFAULT_MAX_WAIT_MS / 1000.0)
    assert max_wait is not None
    due = max_wait if timeout is None else min(timeout, max_wait)
    return due + ANSWER_MARGIN_S


def wait_limit(params: Params) -> float:
    """`terminal/wait` lasts its `timeoutMs`, or, without one, as long as the command runs
    (bounded by the command's own `timeoutMs`, and by the caller's `$/cancelRequest`)."""
    within = seconds(params, "timeoutMs", None)
    return math.inf if within is None else within + ANSWER_MARGIN_S


METHODS: dict[str, Limit | None] = {
    "terminal/create": None,
    "terminal/execute": execute_limit,
    "terminal/sendText": None,
    "terminal/interrupt": None,
    "terminal/readOutput": None,
    "terminal/wait": wait_limit,
    "terminal/list": None,
    "terminal/close": None,
    "terminal/resume": None,
}
"""Every terminal method, with the limit its own params give it (None: the configured one)."""


__all__ = [
    "ANSWER_MARGIN_S",
    "DEFAULT_MAX_WAIT_MS",
    "MAX_WAIT_PARAM_MS",
    "METHODS",
    "MISSING",
    "execute_limit",
    "param",
    "seconds",
    "wait_limit",
]
