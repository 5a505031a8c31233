"""The one clock everything that waits or measures time is given.

Theory of operation: `now()` is monotonic seconds (never wall time, so a jump of the system
clock cannot fire a breaker or expire a cache). `sleep()` suspends the caller; `timeout()`
bounds a block and raises the builtin `TimeoutError` when the deadline passes, exactly like
`asyncio.timeout`; `call_later()` is the timer of what waits with no task of its own. Because
deadlines are expressed through the clock, a test clock that jumps
(`lapce_bridge.testing.FakeClock`) makes every timeout, backoff and window run on virtual
time. This module only declares the contract; `lapce_bridge.clock.SystemClock` is the real
one.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Protocol, runtime_checkable


class Timer(Protocol):
    def cancel(self) -> None:
        """The callback is not called (a no-op once it was)."""
        ...


@runtime_checkable
class Clock(Protocol):
    def now(self) -> float:
        """Monotonic time in seconds."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Suspend the calling task for `seconds` of this clock's time."""
        ...

    def timeout(self, seconds: float | None) -> AbstractAsyncContextManager[object]:
        """Bound the enclosed block; raise `TimeoutError` when `seconds` pass (None: no bound)."""
        ...

    def call_later(self, seconds: float, callback: Callable[[], None]) -> Timer:
        """Call `callback` from the event loop once `seconds` of this clock's time pass."""
        ...
