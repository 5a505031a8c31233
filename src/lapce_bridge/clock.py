"""The real clock: `time.monotonic` and the running event loop's timers.

`timeout` is `asyncio.timeout`'s contract (`TimeoutError` when the deadline passes, a
cancel from outside never turned into one, nested deadlines each their own) on one loop
timer and a task cancel (`Deadline`): about half the cost of `asyncio.timeout`, whose
rescheduling and states nobody here uses, on a path every request and command takes
(the dispatcher's limit, a command's wait).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

from lapce_bridge.core.clock import Clock, Timer


class SystemClock:
    """Monotonic wall-clock time; sleeps and timeouts through asyncio."""

    __slots__ = ()

    def now(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))

    def timeout(self, seconds: float | None) -> AbstractAsyncContextManager[object]:
        return Deadline(seconds)

    def call_later(self, seconds: float, callback: Callable[[], None]) -> Timer:
        return asyncio.get_running_loop().call_later(max(0.0, seconds), callback)


class Deadline:
    """Bounds the enclosed block: when `seconds` pass (None: never; 0 or less: at its first
    await) the task is cancelled and the block raises `TimeoutError`, unless the task was
    being cancelled from outside as well (then the `CancelledError` goes on)."""

    __slots__ = ("_cancelling", "_fired", "_handle", "_seconds", "_task")

    def __init__(self, seconds: float | None) -> None:
        self._seconds = seconds
        self._fired = False
        self._handle: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[Any] | None = None
        self._cancelling = 0

    async def __aenter__(self) -> Deadline:
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("a deadline bounds a block inside a task")
        self._task = task
        self._cancelling = task.cancelling()
        if self._seconds is not None:
            loop = asyncio.get_running_loop()
            self._handle = loop.call_later(max(0.0, self._seconds), self._expire)
        return self

    def _expire(self) -> None:
        self._fired = True
        assert self._task is not None
        self._task.cancel()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object
    ) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        if self._fired:
            assert self._task is not None
            # Our cancel is withdrawn; only when no other is pending is it a timeout.
            if self._task.uncancel() <= self._cancelling and exc_type is asyncio.CancelledError:
                raise TimeoutError from exc


SYSTEM_CLOCK: Clock = SystemClock()

__all__ = ["SYSTEM_CLOCK", "Clock", "Deadline", "SystemClock"]
