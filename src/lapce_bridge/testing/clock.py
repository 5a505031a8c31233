"""A virtual clock: time stands still until a test advances it.

Theory of operation: sleepers and timeouts are kept in a heap ordered by (deadline, sequence).
`advance(dt)` walks the heap in deadline order: it sets `now` to each due deadline, wakes that
entry, and lets the event loop run so the woken task can schedule new sleeps, which are then
honoured within the same advance if they fall due before its end. So a retry loop that sleeps
1 s, 2 s, 4 s inside `advance(7)` sees exactly those delays, in order, and `now` ends at the
target. With `autojump=True`, whenever every task is blocked on this clock the clock jumps to
the next deadline by itself (trio's MockClock autojump), which suits tests that only care that
waits happen, not when the test is stepping.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field


@dataclass(order=True)
class _Entry:
    deadline: float
    seq: int
    wake: Callable[[], None] = field(compare=False)
    cancelled: bool = field(default=False, compare=False)

    def cancel(self) -> None:
        self.cancelled = True


class FakeClock:
    """A `Clock` whose time moves only through `advance()` (or autojump)."""

    def __init__(self, start: float = 0.0, *, autojump: bool = False) -> None:
        self._now = start
        self._heap: list[_Entry] = []
        self._seq = itertools.count()
        self.autojump = autojump
        self._jumper: asyncio.Task[None] | None = None
        self.sleeps: list[float] = []  # every requested sleep duration, in call order

    # -- the Clock protocol -------------------------------------------------------------
    def now(self) -> float:
        return self._now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def wake() -> None:
            if not fut.done():
                fut.set_result(None)

        entry = self._push(self._now + seconds, wake)
        self._kick_autojump()
        try:
            await fut
        finally:
            entry.cancelled = True

    def timeout(self, seconds: float | None) -> AbstractAsyncContextManager[object]:
        return self._timeout(seconds)

    def call_later(self, seconds: float, callback: Callable[[], None]) -> _Entry:
        entry = self._push(self._now + max(0.0, seconds), callback)
        self._kick_autojump()
        return entry

    @asynccontextmanager
    async def _timeout(self, seconds: float | None) -> AsyncIterator[object]:
        if seconds is None:
            yield None
            return
        task = asyncio.current_task()
        assert task is not None, "FakeClock.timeout must be used inside a task"
        fired = False

        def expire() -> None:
            nonlocal fired
            fired = True
            task.cancel()

        entry = self._push(self._now + max(0.0, seconds), expire)
        handle: asyncio.Handle | None = None
        if seconds <= 0:
            # Expire on the next loop iteration, as asyncio.timeout does: cancelling the task
            # here would leave a stray cancellation behind when the block never awaits.
            entry.cancelled = True
            handle = asyncio.get_running_loop().call_soon(expire)
        self._kick_autojump()
        try:
            yield None
        except asyncio.CancelledError:
            if fired and task.uncancel() == 0:
                raise TimeoutError from None
            raise
        finally:
            entry.cancelled = True
            if handle is not None:
                handle.cancel()

    # -- test controls ------------------------------------------------------------------
    @property
    def pending(self) -> int:
        """How many sleepers and timeouts are waiting on this clock."""
        return sum(1 for e in self._heap if not e.cancelled)

    def next_deadline(self) -> float | None:
        self._drop_cancelled()
        return self._heap[0].deadline if self._heap else None

    async def advance(self, seconds: float) -> None:
        """Move time forward by `seconds`, waking every due entry in deadline order."""
        if seconds < 0:
            raise ValueError("time cannot go backwards")
        target = self._now + seconds
        await _settle()
        while True:
            self._drop_cancelled()
            if not self._heap or self._heap[0].deadline > target:
                break
            entry = heapq.heappop(self._heap)
            self._now = max(self._now, entry.deadline)
            entry.wake()
            await _settle()
        self._now = target
        await _settle()

    async def wait_for_sleepers(self, count: int = 1, *, max_spins: int = 10_000) -> None:
        """Let the loop run until at least `count` entries wait on this clock."""
        for _ in range(max_spins):
            if self.pending >= count:
                return
            await asyncio.sleep(0)
        raise AssertionError(f"expected {count} sleepers, have {self.pending}")

    # -- internals ----------------------------------------------------------------------
    def _push(self, deadline: float, wake: Callable[[], None]) -> _Entry:
        entry = _Entry(deadline, next(self._seq), wake)
        heapq.heappush(self._heap, entry)
        return entry

    def _drop_cancelled(self) -> None:
        while self._heap and self._heap[0].cancelled:
            heapq.heappop(self._heap)

    def _kick_autojump(self) -> None:
        if self.autojump and (self._jumper is None or self._jumper.done()):
            self._jumper = asyncio.get_running_loop().create_task(self._autojump())

    async def _autojump(self) -> None:
        while True:
            # Jump only once the loop has nothing else ready: every task waits on us.
            await _settle(rounds=20)
            deadline = self.next_deadline()
            if deadline is None:
                return
            await self.advance(max(0.0, deadline - self._now))


async def _settle(rounds: int = 5) -> None:
    # A few zero-sleeps let woken tasks run and chain follow-up callbacks.
    for _ in range(rounds):
        await asyncio.sleep(0)
