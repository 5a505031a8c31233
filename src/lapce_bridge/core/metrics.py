"""Latency histograms, counters, and the registry behind `metrics/get`.

Theory of operation: a `Histogram` keeps one count per logarithmic bucket. Bucket `i` holds
durations in `[1 us * 2**(i/128), 1 us * 2**((i+1)/128))`, so every bucket is 0.54 % wide
relative to its lower edge and a quantile reported as the bucket's geometric middle is within
0.28 % of the sample it stands for. 4064 buckets reach 1 hour; durations below 1 us share the
first bucket, durations of an hour or more share an overflow bucket and are reported as the
largest one seen. The index is `int(log2(seconds) * 128 + offset)`: one C call, one multiply,
one truncation (about 0.35 us a `record` in CPython here, where the frexp mantissa/exponent
split with linear sub-buckets measured 0.47 us for the same 1 % bound).

Invariants:
- `record` accepts any finite duration >= 0 and nothing else: NaN, infinities and negative
  durations are refused with `InvalidParams` before anything is counted.
- Nearest-rank quantiles (the same definition as the benchmark report): the first and last
  ranks are the exact min and max; any other is the middle of the bucket holding the sample
  of that rank, clamped to min and max, so a quantile of samples at or above 1 us is within
  0.28 % of the exact one. No samples: 0.
- `count_below(t)` never overstates: it counts the buckets wholly below the one holding `t`
  (exact when `t` is above the maximum or at or below the minimum).
- Snapshots are frozen and self-consistent: the count is derived from the copied buckets.
  Writers are expected on one thread (the event loop); a snapshot may be taken from another
  (a metrics scrape), since copying the bucket list is a single step under the GIL.
- The registry keeps at most `max_operations` names; further names (a client inventing
  method names, say) are folded into `OTHER_OPERATION` so memory stays bounded.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from bisect import bisect_left
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from itertools import accumulate, compress
from operator import add
from typing import Any

from lapce_bridge.core.errors import InvalidParams

SUB_BUCKETS = 128  # buckets per doubling: 2**(1/128) - 1 = 0.54 % wide
LOWEST = 1e-6  # seconds: the lower edge of bucket 0
HIGHEST = 3600.0  # seconds: at and above this, the overflow bucket
_OFFSET = -math.log2(LOWEST) * SUB_BUCKETS  # makes bucket 0 start exactly at LOWEST
BUCKETS = math.ceil(math.log2(HIGHEST / LOWEST) * SUB_BUCKETS)  # 4064 regular buckets
OVERFLOW = BUCKETS  # index of the overflow bucket
_SLOTS = BUCKETS + 1

# Precomputed so that reads cost a table lookup, not a power. The last bucket is cut short
# at HIGHEST, so its middle is that of what remains of it.
_MIDDLES: tuple[float, ...] = (
    *(LOWEST * math.exp2((i + 0.5) / SUB_BUCKETS) for i in range(BUCKETS - 1)),
    math.sqrt(LOWEST * math.exp2((BUCKETS - 1) / SUB_BUCKETS) * HIGHEST),
)
_log2 = math.log2


def bucket_index(seconds: float) -> int:
    """The bucket a (valid) duration falls in: 0 below 1 us, OVERFLOW from 1 h."""
    if seconds < LOWEST:
        return 0
    if seconds >= HIGHEST:
        return OVERFLOW
    return min(int(_log2(seconds) * SUB_BUCKETS + _OFFSET), BUCKETS - 1)


def bucket_lower_edge(index: int) -> float:
    """Seconds at which bucket `index` starts (0 for the first, HIGHEST for the overflow)."""
    if index <= 0:
        return 0.0
    if index >= OVERFLOW:
        return HIGHEST
    return LOWEST * math.exp2(index / SUB_BUCKETS)


def bucket_middle(index: int) -> float:
    """The value reported for a sample in bucket `index` (its geometric middle)."""
    return _MIDDLES[min(index, BUCKETS - 1)]


def check_duration(seconds: float) -> None:
    """Refuse what no clock can measure: NaN, infinities, negative durations."""
    if not (0.0 <= seconds < math.inf):
        raise InvalidParams(f"a duration must be finite seconds >= 0, got {seconds!r}")


def nearest_rank(q: float, n: int) -> int:
    """The 1-based rank of the nearest-rank `q`-quantile (q in 0..1) of `n` samples."""
    # ceil(q * n) on floats misranks: 0.999 * 1000 is 999.0000000000001, which would make the
    # p99.9 of 1000 samples their maximum. A product meant to be whole is off by an ulp or
    # two, so it is nudged down by a relative 1e-15 before rounding up.
    x = q * n
    return min(n, max(1, math.ceil(x - x * 1e-15)))


def check_quantile(q: float) -> None:
    if not (0.0 <= q <= 1.0):
        raise InvalidParams(f"a quantile must be within 0..1, got {q!r}")


class _Quantiles(ABC):
    """p50 / p99 / p999 for anything with a `quantile(q)`."""

    __slots__ = ()

    @abstractmethod
    def quantile(self, q: float) -> float: ...

    @property
    def p50(self) -> float:
        return self.quantile(0.5)

    @property
    def p99(self) -> float:
        return self.quantile(0.99)

    @property
    def p999(self) -> float:
        return self.quantile(0.999)


@dataclass(frozen=True, slots=True)
class HistogramSnapshot(_Quantiles):
    """A frozen view: the non-empty buckets in index order and their running totals."""

    indices: tuple[int, ...]
    cumulative: tuple[int, ...]  # cumulative[k]: samples in buckets indices[0..k]
    sum: float
    min: float  # a lower bound: exact for a Histogram's snapshot, else a bucket edge
    max: float  # an upper bound: exact for a Histogram's snapshot, else a bucket edge
    exact: bool = True  # whether min and max are the samples' own

    @classmethod
    def from_buckets(
        cls,
        buckets: Mapping[int, int],
        *,
        total: float = 0.0,
        low: float | None = None,
        high: float | None = None,
    ) -> HistogramSnapshot:
        """Build from sparse `{bucket index: count}`; min and max default to bucket edges."""
        indices = tuple(sorted(i for i, c in buckets.items() if c > 0))
        cumulative = tuple(accumulate(buckets[i] for i in indices))
        if not indices:
            return EMPTY_SNAPSHOT
        exact = low is not None and high is not None
        if low is None:
            low = bucket_lower_edge(indices[0])
        if high is None:
            last = indices[-1]
            high = HIGHEST if last >= OVERFLOW else bucket_lower_edge(last + 1)
        return cls(indices, cumulative, total, low, high, exact)

    @property
    def count(self) -> int:
        return self.cumulative[-1] if self.cumulative else 0

    @property
    def overflow(self) -> int:
        """How many samples were an hour or longer."""
        if self.indices and self.indices[-1] == OVERFLOW:
            return self.count - (self.cumulative[-2] if len(self.cumulative) > 1 else 0)
        return 0

    @property
    def mean(self) -> float:
        return self.sum / self.count if self.count else 0.0

    def quantile(self, q: float) -> float:
        """Nearest-rank quantile in seconds (q in 0..1); 0.0 when there are no samples."""
        check_quantile(q)
        count = self.count
        if not count:
            return 0.0
        rank = nearest_rank(q, count)
        if self.exact:
            if rank == 1:
                return self.min  # the extremes are known exactly; no bucket needed
            if rank == count:
                return self.max
        index = self.indices[bisect_left(self.cumulative, rank)]
        value = self.max if index >= OVERFLOW else _MIDDLES[index]
        return min(max(value, self.min), self.max)

    def count_below(self, threshold_s: float) -> int:
        """Samples below `threshold_s`, never overstated (see the module's invariants)."""
        count = self.count
        if not count or threshold_s <= self.min:
            return 0
        if threshold_s > self.max:
            return count
        position = bisect_left(self.indices, bucket_index(threshold_s))
        return self.cumulative[position - 1] if position else 0


EMPTY_SNAPSHOT = HistogramSnapshot((), (), 0.0, 0.0, 0.0)


class Histogram(_Quantiles):
    """Durations in seconds, in logarithmic buckets (see the module docstring)."""

    __slots__ = ("_counts", "_max", "_min", "_sum")

    def __init__(self) -> None:
        self._counts = [0] * _SLOTS
        self._sum = 0.0
        self._min = math.inf
        self._max = 0.0

    def record(self, seconds: float) -> None:
        # The common case is one comparison chain and one indexed increment; everything
        # unusual (sub-microsecond, an hour or more, invalid) takes the slow path.
        if LOWEST <= seconds < HIGHEST:
            self._counts[int(_log2(seconds) * 128.0 + _OFFSET)] += 1
        else:
            check_duration(seconds)
            self._counts[0 if seconds < LOWEST else OVERFLOW] += 1
        self._sum += seconds
        if seconds > self._max:
            self._max = seconds
        if seconds < self._min:
            self._min = seconds

    def record_many(self, durations: Iterable[float]) -> None:
        for seconds in durations:
            self.record(seconds)

    def merge(self, other: Histogram) -> None:
        """Add `other`'s samples to this histogram (`other` is left as it was)."""
        self._counts = list(map(add, self._counts, other._counts))
        self._sum += other._sum
        self._min = min(self._min, other._min)
        self._max = max(self._max, other._max)

    def reset(self) -> None:
        self._counts = [0] * _SLOTS
        self._sum = 0.0
        self._min = math.inf
        self._max = 0.0

    def snapshot(self) -> HistogramSnapshot:
        counts = list(self._counts)  # one step under the GIL: a consistent copy
        indices = tuple(compress(range(_SLOTS), counts))
        if not indices:
            return EMPTY_SNAPSHOT
        cumulative = tuple(accumulate(counts[i] for i in indices))
        return HistogramSnapshot(indices, cumulative, self._sum, self._min, self._max)

    # Reads go through a snapshot: they are rare next to records, and it keeps one definition.
    @property
    def count(self) -> int:
        return sum(self._counts)

    @property
    def sum(self) -> float:
        return self._sum

    @property
    def min(self) -> float:
        """The smallest duration recorded (0.0 when empty)."""
        return self._min if self._min != math.inf else 0.0

    @property
    def max(self) -> float:
        return self._max

    def quantile(self, q: float) -> float:
        return self.snapshot().quantile(q)

    def count_below(self, threshold_s: float) -> int:
        return self.snapshot().count_below(threshold_s)


class Counter:
    """A monotonic count: only ever increased."""

    __slots__ = ("name", "value")

    def __init__(self, name: str) -> None:
        self.name = name
        self.value = 0

    def inc(self, n: int = 1) -> None:
        if n < 0:
            raise InvalidParams(f"counter {self.name!r} cannot decrease (inc({n}))")
        self.value += n


@dataclass(frozen=True, slots=True)
class OperationStats:
    operation: str
    count: int
    errors: int
    p50_us: float
    p99_us: float
    p999_us: float
    sum_s: float
    latency: HistogramSnapshot = field(default=EMPTY_SNAPSHOT, repr=False, compare=False)

    def to_wire(self) -> dict[str, Any]:
        """The per-operation object of `metrics/get`."""
        return {
            "count": self.count,
            "errors": self.errors,
            "p50Us": self.p50_us,
            "p99Us": self.p99_us,
            "p999Us": self.p999_us,
        }


def operation_stats(operation: str, snap: HistogramSnapshot, errors: int) -> OperationStats:
    return OperationStats(
        operation,
        snap.count,
        errors,
        snap.p50 * 1e6,
        snap.p99 * 1e6,
        snap.p999 * 1e6,
        snap.sum,
        snap,
    )


class _Operation:
    __slots__ = ("errors", "histogram")

    def __init__(self) -> None:
        self.histogram = Histogram()
        self.errors = 0


OTHER_OPERATION = "other"


class MetricsRegistry:
    """Per-operation latency and errors, plus named counters; the source of `metrics/get`."""

    __slots__ = ("_counters", "_errors", "_ops", "max_operations")

    def __init__(self, *, max_operations: int = 256) -> None:
        if max_operations < 1:
            raise InvalidParams(f"max_operations must be at least 1, got {max_operations}")
        self.max_operations = max_operations
        self._ops: dict[str, _Operation] = {}
        self._counters: dict[str, Counter] = {}
        # (operation, category, fault) -> errors answered; every error, the caller's too,
        # since "who gets it wrong, and how" is what a fleet's dashboard asks.
        self._errors: dict[tuple[str, str, str], int] = {}

    def observe(self, op: str, seconds: float, ok: bool) -> None:
        """Record one call of `op` that took `seconds` and succeeded or not."""
        entry = self._ops.get(op)
        if entry is None:
            entry = self._new_operation(op)
        entry.histogram.record(seconds)
        if not ok:
            entry.errors += 1

    def _new_operation(self, op: str) -> _Operation:
        if len(self._ops) >= self.max_operations:
            op = OTHER_OPERATION
            found = self._ops.get(op)
            if found is not None:
                return found
        entry = self._ops[op] = _Operation()
        return entry

    def record_error(self, op: str, category: str, fault: str) -> None:
        """Count one error answer of `op` by its classification (category, whose fault)."""
        if op not in self._ops and len(self._ops) >= self.max_operations:
            op = OTHER_OPERATION  # the same bound as the latency table
        key = (op, category, fault)
        self._errors[key] = self._errors.get(key, 0) + 1

    def errors(self) -> dict[tuple[str, str, str], int]:
        """Error answers by `(operation, category, fault)`."""
        return dict(self._errors)

    def counter(self, name: str) -> Counter:
        """The counter called `name`, created at zero on first use."""
        found = self._counters.get(name)
        if found is None:
            found = self._counters[name] = Counter(name)
        return found

    def histogram(self, op: str) -> HistogramSnapshot:
        entry = self._ops.get(op)
        return entry.histogram.snapshot() if entry is not None else EMPTY_SNAPSHOT

    def operation(self, op: str) -> OperationStats:
        """A snapshot of one operation (all zeros if it was never observed)."""
        entry = self._ops.get(op)
        if entry is None:
            return operation_stats(op, EMPTY_SNAPSHOT, 0)
        errors = entry.errors  # read first: a concurrent snapshot then never has errors > count
        return operation_stats(op, entry.histogram.snapshot(), errors)

    def operations(self) -> dict[str, OperationStats]:
        return {op: self.operation(op) for op in list(self._ops)}

    def counters(self) -> dict[str, int]:
        return {name: c.value for name, c in list(self._counters.items())}

    def snapshot(self) -> dict[str, Any]:
        """The `metrics/get` result as PROTOCOL.md shapes it."""
        return {
            "operations": {op: s.to_wire() for op, s in self.operations().items()},
            "counters": self.counters(),
            "errors": [
                {"operation": op, "category": category, "fault": fault, "count": count}
                for (op, category, fault), count in sorted(self.errors().items())
            ],
        }
