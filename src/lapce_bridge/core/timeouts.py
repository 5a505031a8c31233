"""How long each operation may take, and the one place a timeout becomes a `BridgeTimeout`.

Theory of operation: every operation has one name, the JSON-RPC method it is registered as.
Its limit is, in order: a runtime override, the configured default, the fallback (30 s).
Every served method has a configured default (a test checks the whole method table); the
dispatcher lengthens the limit of a request whose own params allow more (long commands).
`with_timeout` bounds an awaitable with `clock.timeout(...)`, so on a
`FakeClock` it expires in virtual time, and translates the builtin `TimeoutError` into a
`BridgeTimeout` carrying the operation and the limit, chained `from` the original.
`increased(op, attempt)` is the recovery matrix's "increase timeout" step: the limit doubles
(`growth`) with each attempt, capped at `max_timeout`.

Invariants: every limit is a finite positive number of seconds (anything else is refused with
`InvalidParams`, never stored); a `TimeoutError` raised by the awaited work itself before the
limit passed is still translated (it is a timeout) but says it came from inside; cancellation
from outside is never turned into a timeout.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from lapce_bridge.core.errors import BridgeTimeout, InvalidParams
from lapce_bridge.core.retry import system_clock

if TYPE_CHECKING:
    from lapce_bridge.core.clock import Clock

T = TypeVar("T")

FALLBACK_TIMEOUT = 30.0

DEFAULT_TIMEOUTS: Mapping[str, float] = {
    "initialize": 10.0,
    "shutdown": 30.0,
    "exit": 30.0,
    "ping": 5.0,
    "terminal/create": 15.0,
    # A command's own timeoutMs / maxWaitMs lengthen these (see the terminal service).
    "terminal/execute": 300.0,
    "terminal/wait": 300.0,
    "terminal/sendText": 5.0,
    "terminal/interrupt": 5.0,
    "terminal/readOutput": 10.0,
    "terminal/list": 5.0,
    "terminal/close": 10.0,
    "terminal/resume": 5.0,
    "fs/read": 10.0,
    "fs/write": 30.0,
    "fs/stat": 5.0,
    "fs/list": 10.0,
    "fs/watch": 10.0,
    "fs/unwatch": 5.0,
    "fs/edit": 30.0,
    "fs/search": 60.0,  # a content search of a large tree
    "fs/tree": 30.0,
    "health/get": 5.0,
    "metrics/get": 5.0,
}


@dataclass(frozen=True, slots=True)
class TimeoutStats:
    overrides: dict[str, float]
    expired: dict[str, int]  # operation -> how many times its limit passed


def _check_seconds(seconds: float, what: str) -> float:
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        raise InvalidParams(f"{what} must be a number of seconds, got {seconds!r}")
    if not (math.isfinite(seconds) and seconds > 0):
        raise InvalidParams(f"{what} must be finite and positive, got {seconds!r}")
    return float(seconds)


class TimeoutManager:
    __slots__ = (
        "_clock",
        "_defaults",
        "_expired",
        "_overrides",
        "fallback",
        "growth",
        "max_timeout",
    )

    def __init__(
        self,
        defaults: Mapping[str, float] | None = None,
        *,
        fallback: float = FALLBACK_TIMEOUT,
        growth: float = 2.0,
        max_timeout: float = 3600.0,
        clock: Clock | None = None,
    ) -> None:
        self.fallback = _check_seconds(fallback, "fallback")
        self.max_timeout = _check_seconds(max_timeout, "max_timeout")
        if not (math.isfinite(growth) and growth >= 1.0):
            raise InvalidParams(f"growth must be finite and at least 1, got {growth!r}")
        self.growth = float(growth)
        base = DEFAULT_TIMEOUTS if defaults is None else defaults
        self._defaults = {op: _check_seconds(s, f"default for {op}") for op, s in base.items()}
        self._overrides: dict[str, float] = {}
        self._expired: dict[str, int] = {}
        self._clock = clock if clock is not None else system_clock()

    @property
    def clock(self) -> Clock:
        """The clock the limits run on."""
        return self._clock

    def configured(self, op: str) -> bool:
        """Whether `op` has a limit of its own (else it gets the fallback)."""
        return op in self._overrides or op in self._defaults

    def timeout_for(self, op: str) -> float:
        limit = self._overrides.get(op)
        if limit is None:
            limit = self._defaults.get(op, self.fallback)
        return limit

    def set_override(self, op: str, seconds: float) -> None:
        self._overrides[op] = _check_seconds(seconds, f"timeout for {op}")

    def clear_override(self, op: str) -> None:
        self._overrides.pop(op, None)

    def increased(self, op: str, attempt: int, *, base: float | None = None) -> float:
        """The limit for retry number `attempt` of `op` (0: the first run), `growth` times each."""
        if attempt < 0:
            raise InvalidParams(f"attempt must not be negative, got {attempt}")
        start = self.timeout_for(op) if base is None else _check_seconds(base, "base timeout")
        if start >= self.max_timeout:
            return start  # an explicit limit above the cap is the caller's to keep
        # Compare in logarithms so a large attempt number cannot overflow the power.
        if attempt * math.log(self.growth) >= math.log(self.max_timeout / start):
            return self.max_timeout
        return min(self.max_timeout, start * self.growth**attempt)

    async def with_timeout(
        self, op: str, awaitable: Awaitable[T], *, seconds: float | None = None
    ) -> T:
        """Await `awaitable` within the limit for `op` (or `seconds`); BridgeTimeout when late."""
        try:
            limit = self.timeout_for(op) if seconds is None else _check_seconds(seconds, "seconds")
        except InvalidParams:
            _discard(awaitable)
            raise
        clock = self._clock
        started = clock.now()
        try:
            async with clock.timeout(limit):
                return await awaitable
        except TimeoutError as exc:
            raise self.expired(op, limit, clock.now() - started, exc) from exc

    def expired(
        self, op: str, limit: float, elapsed: float, cause: BaseException | None = None
    ) -> BridgeTimeout:
        """The error for `op` past its `limit` (counted): `with_timeout`'s, or that of work
        timed with no task of its own (`Clock.call_later`)."""
        self._expired[op] = self._expired.get(op, 0) + 1
        data = {"operation": op, "seconds": limit, "elapsed": elapsed}
        if elapsed < limit:
            detail = f"{op}: timed out inside after {elapsed:.3g} s ({cause or 'TimeoutError'})"
        else:
            detail = f"{op} timed out after {limit:g} s"
        return BridgeTimeout(detail, data=data)

    def statistics(self) -> TimeoutStats:
        return TimeoutStats(dict(self._overrides), dict(self._expired))


def _discard(awaitable: Awaitable[object]) -> None:
    # A coroutine that will never be awaited is closed, so it does not warn when collected.
    close = getattr(awaitable, "close", None)
    if callable(close):
        close()


__all__ = ["DEFAULT_TIMEOUTS", "FALLBACK_TIMEOUT", "TimeoutManager", "TimeoutStats"]
