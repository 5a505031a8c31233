"""Time-slotted sliding windows of calls and failures, on the injected clock's time.

Invariants:
- A `SlidingWindow` counts calls and failures in `slots` time slots of equal width: a record
  made at time t counts until the clock reaches `floor(t / width) * width + length` and not an
  instant longer, however far the clock jumps (at most `slots` slots are emptied per roll).
- A record costs O(1): the current slot is kept in plain attributes and only a change of slot
  walks the ring.
"""

from __future__ import annotations

import math

from lapce_bridge.core.metrics import HistogramSnapshot


class SlidingWindow:
    """Calls and failures over the last `slots` slots of `width` seconds (module docstring).

    The current slot is kept in plain attributes (`calls_now`, ...), the finished ones in a
    ring with their live total (`calls_past`, ...), so a record touches two attributes and
    only a change of slot walks the ring. Callers bump the `*_now` counts themselves after
    `roll(now)`, which keeps the hot path free of a method call; subclasses add counts by
    extending `_close` and `_expire`.
    """

    __slots__ = (
        "calls_now",
        "calls_past",
        "edge",
        "failures_now",
        "failures_past",
        "head",
        "ring_calls",
        "ring_failures",
        "slots",
        "width",
    )

    def __init__(self, length: float, slots: int) -> None:
        self.width = length / slots
        self.slots = slots
        self.head = -slots  # the current slot's number; far enough back to start empty
        self.edge = -math.inf  # when the current slot ends: records before it need no roll
        self.ring_calls = [0] * slots
        self.ring_failures = [0] * slots
        self.calls_past = self.failures_past = self.calls_now = self.failures_now = 0

    @property
    def calls(self) -> int:
        return self.calls_past + self.calls_now

    @property
    def failures(self) -> int:
        return self.failures_past + self.failures_now

    def roll(self, now: float) -> bool:
        """Move to the slot of `now` if it has begun; returns whether the window changed."""
        if now < self.edge:
            return False
        slot = int(now // self.width)
        self.edge = (slot + 1) * self.width
        if slot <= self.head:
            return False
        self._close(self.head % self.slots)
        # Each slot passed takes the ring position of the slot a whole window before it.
        for passed in range(max(self.head + 1, slot - self.slots + 1), slot + 1):
            self._expire(passed % self.slots)
        self.head = slot
        return True

    def _close(self, pos: int) -> None:
        self.ring_calls[pos] = self.calls_now
        self.ring_failures[pos] = self.failures_now
        self.calls_past += self.calls_now
        self.failures_past += self.failures_now
        self.calls_now = self.failures_now = 0

    def _expire(self, pos: int) -> None:
        self.calls_past -= self.ring_calls[pos]
        self.failures_past -= self.ring_failures[pos]
        self.ring_calls[pos] = self.ring_failures[pos] = 0


class OperationWindow(SlidingWindow):
    """Adds calls slower than twice the target and sparse latency buckets per slot."""

    __slots__ = (
        "alerts",
        "buckets_now",
        "ring_buckets",
        "ring_slow",
        "slow_now",
        "slow_past",
        "slow_threshold",
        "target",
    )

    def __init__(self, length: float, slots: int, target: float | None) -> None:
        super().__init__(length, slots)
        self.target = target
        self.slow_threshold = math.inf if target is None else 2.0 * target
        self.ring_slow = [0] * slots
        self.ring_buckets: list[dict[int, int]] = [{} for _ in range(slots)]
        self.slow_past = self.slow_now = 0
        self.buckets_now: dict[int, int] = {}
        self.alerts = 0  # how many of this operation's alerts are active

    @property
    def slow(self) -> int:
        return self.slow_past + self.slow_now

    def _close(self, pos: int) -> None:
        super()._close(pos)
        self.ring_slow[pos] = self.slow_now
        self.slow_past += self.slow_now
        self.slow_now = 0
        self.ring_buckets[pos], self.buckets_now = self.buckets_now, self.ring_buckets[pos]

    def _expire(self, pos: int) -> None:
        super()._expire(pos)
        self.slow_past -= self.ring_slow[pos]
        self.ring_slow[pos] = 0
        self.ring_buckets[pos].clear()

    def latency(self) -> HistogramSnapshot:
        merged = dict(self.buckets_now)
        for buckets in self.ring_buckets:
            for index, count in buckets.items():
                merged[index] = merged.get(index, 0) + count
        return HistogramSnapshot.from_buckets(merged)
