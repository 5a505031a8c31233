"""Histogram accuracy against exact percentiles, its edges, counters and the registry."""

from __future__ import annotations

import dataclasses
import math
import threading
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lapce_bridge.core.errors import InvalidParams
from lapce_bridge.core.metrics import (
    BUCKETS,
    HIGHEST,
    LOWEST,
    OTHER_OPERATION,
    OVERFLOW,
    Counter,
    Histogram,
    HistogramSnapshot,
    MetricsRegistry,
    bucket_index,
    bucket_lower_edge,
    bucket_middle,
    nearest_rank,
)
from lapce_bridge.core.windows import SlidingWindow
from lapce_bridge.rpc import Observe

# A bucket is 2**(1/128) wide and reports its geometric middle: the worst error is half that.
WORST_ERROR = 2 ** (1 / 256) - 1  # 0.271 %


def exact_quantile(samples: list[float], q: float) -> float:
    """Nearest rank, computed on the decimal the quantile was written as."""
    ordered = sorted(samples)
    return ordered[max(1, math.ceil(Fraction(str(q)) * len(ordered))) - 1]


# Log-uniform durations across the whole range, 1 us to just under an hour, plus clusters
# (real latencies bunch up) so that many samples share a bucket.
durations = st.floats(min_value=math.log(LOWEST), max_value=math.log(3599.0)).map(math.exp)
clustered = st.tuples(durations, st.integers(1, 50)).map(lambda p: [p[0]] * p[1])
sample_lists = st.lists(st.one_of(durations.map(lambda d: [d]), clustered), min_size=1).map(
    lambda parts: [d for part in parts for d in part]
)
quantiles = st.one_of(
    st.sampled_from([0.0, 0.5, 0.9, 0.99, 0.999, 0.9999, 1.0]),
    st.integers(0, 10_000).map(lambda k: k / 10_000),
)


@settings(max_examples=300, deadline=None)
@given(samples=sample_lists, q=quantiles)
def test_any_quantile_is_within_one_percent_of_the_exact_one(
    samples: list[float], q: float
) -> None:
    hist = Histogram()
    hist.record_many(samples)
    exact = exact_quantile(samples, q)
    got = hist.quantile(q)
    assert abs(got - exact) / exact <= WORST_ERROR + 1e-12
    assert WORST_ERROR < 0.01


@settings(max_examples=200, deadline=None)
@given(samples=sample_lists, threshold=durations)
def test_count_below_never_overstates_and_misses_at_most_one_bucket(
    samples: list[float], threshold: float
) -> None:
    hist = Histogram()
    hist.record_many(samples)
    below = hist.count_below(threshold)
    exact = sum(1 for s in samples if s < threshold)
    edge = bucket_lower_edge(bucket_index(threshold))
    near = sum(1 for s in samples if edge * (1 - 1e-12) <= s < threshold)
    assert exact - near <= below <= exact


def test_lognormal_latencies_keep_p50_p99_p999_within_a_third_of_a_percent() -> None:
    import random

    rng = random.Random(11)
    samples = [rng.lognormvariate(math.log(80e-6), 1.2) for _ in range(20_000)]
    hist = Histogram()
    hist.record_many(samples)
    for q, got in ((0.5, hist.p50), (0.99, hist.p99), (0.999, hist.p999)):
        exact = exact_quantile(samples, q)
        assert abs(got - exact) / exact <= WORST_ERROR
    assert hist.count == 20_000
    assert hist.sum == pytest.approx(math.fsum(samples))
    assert hist.min == min(samples)
    assert hist.max == max(samples)


@pytest.mark.parametrize(
    ("q", "n", "rank"),
    [
        (0.999, 1000, 999),
        (0.999, 2000, 1998),
        (0.99, 100, 99),
        (0.9, 10, 9),
        (0.5, 3, 2),
        (0.0, 5, 1),
        (1.0, 5, 5),
        (0.999, 999, 999),
        (0.9999, 10_000, 9999),
    ],
)
def test_nearest_rank_is_not_fooled_by_float_products(q: float, n: int, rank: int) -> None:
    assert nearest_rank(q, n) == rank
    samples = [float(i) * 1e-3 for i in range(1, n + 1)]
    hist = Histogram()
    hist.record_many(samples)
    assert abs(hist.quantile(q) - samples[rank - 1]) <= samples[rank - 1] * WORST_ERROR


def test_min_and_max_quantiles_are_exact() -> None:
    hist = Histogram()
    hist.record_many([123.456e-6, 7.5e-3, 0.25])
    assert hist.quantile(0.0) == 123.456e-6
    assert hist.quantile(1.0) == 0.25
    single = Histogram()
    single.record(0.0421)
    assert single.p50 == single.p99 == single.p999 == 0.0421


def test_bucket_layout_spans_one_microsecond_to_one_hour() -> None:
    assert BUCKETS == 4064
    assert bucket_index(LOWEST) == 0
    assert bucket_index(LOWEST * 2) == 128  # one doubling is 128 buckets
    assert bucket_index(3599.999) == BUCKETS - 1
    assert bucket_index(HIGHEST) == OVERFLOW
    assert bucket_lower_edge(128) == pytest.approx(2e-6)
    assert bucket_lower_edge(OVERFLOW) == HIGHEST
    for i in (0, 1, 500, 2000, BUCKETS - 1):
        low, high = bucket_lower_edge(i) or LOWEST, bucket_lower_edge(i + 1)
        assert low < bucket_middle(i) < high
        assert (high - low) / low < 0.0055


def test_sub_microsecond_durations_share_the_first_bucket() -> None:
    hist = Histogram()
    hist.record_many([0.0, 0.3e-6, 0.9e-6])
    snap = hist.snapshot()
    assert snap.indices == (0,)
    assert snap.count == 3
    assert hist.min == 0.0
    # Reported no higher than the first bucket allows, and never above the largest sample.
    assert hist.p50 == 0.9e-6
    assert hist.quantile(0.0) == 0.0


def test_an_hour_or_more_goes_to_the_overflow_bucket_and_reports_as_max() -> None:
    hist = Histogram()
    hist.record_many([1e-3] * 98 + [3600.0, 7200.5])
    snap = hist.snapshot()
    assert snap.overflow == 2
    assert snap.indices[-1] == OVERFLOW
    assert hist.quantile(0.99) == 7200.5
    assert hist.quantile(1.0) == 7200.5
    assert hist.p50 == pytest.approx(1e-3, rel=WORST_ERROR)
    assert hist.count_below(3600.0) == 98
    assert hist.count_below(8000.0) == 100


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, -1e-9, -5.0])
def test_invalid_durations_are_refused_and_nothing_is_counted(bad: float) -> None:
    hist = Histogram()
    hist.record(1e-3)
    with pytest.raises(InvalidParams, match="duration"):
        hist.record(bad)
    assert hist.count == 1
    assert hist.sum == 1e-3
    assert hist.max == 1e-3


@pytest.mark.parametrize("q", [-0.01, 1.01, math.nan])
def test_quantiles_outside_zero_to_one_are_refused(q: float) -> None:
    hist = Histogram()
    hist.record(1e-3)
    with pytest.raises(InvalidParams, match="quantile"):
        hist.quantile(q)


def test_an_empty_histogram_reports_zeros() -> None:
    hist = Histogram()
    assert (hist.count, hist.sum, hist.min, hist.max) == (0, 0.0, 0.0, 0.0)
    assert hist.p50 == hist.p99 == hist.p999 == 0.0
    assert hist.count_below(1.0) == 0
    assert hist.snapshot().mean == 0.0
    assert hist.snapshot().overflow == 0


def test_count_below_is_exact_outside_the_samples_range() -> None:
    hist = Histogram()
    hist.record_many([10e-6, 20e-6, 30e-6, 1.0])
    assert hist.count_below(10e-6) == 0  # strictly below
    assert hist.count_below(5e-6) == 0
    assert hist.count_below(1.0000001) == 4
    assert hist.count_below(25e-6) == 2
    assert hist.count_below(0.5) == 3


def test_merge_equals_recording_everything_in_one_and_leaves_the_other_alone() -> None:
    a, b, both = Histogram(), Histogram(), Histogram()
    first = [1e-6 * 1.37**i for i in range(40)]
    second = [0.4e-6, 2e-3, 2e-3, 4000.0]
    a.record_many(first)
    b.record_many(second)
    both.record_many(first + second)
    b_before = b.snapshot()
    a.merge(b)
    assert a.snapshot() == dataclasses.replace(both.snapshot(), sum=a.sum)
    assert a.sum == pytest.approx(both.sum)
    assert (a.min, a.max) == (0.4e-6, 4000.0)
    assert b.snapshot() == b_before
    empty = Histogram()
    empty.merge(Histogram())
    assert empty.count == 0
    assert empty.min == 0.0


def test_reset_forgets_everything() -> None:
    hist = Histogram()
    hist.record_many([1e-3, 2.0, 5000.0])
    hist.reset()
    assert hist.count == 0
    assert hist.snapshot() == Histogram().snapshot()
    hist.record(7e-6)
    assert hist.min == hist.max == 7e-6


def test_snapshot_is_frozen_and_unaffected_by_later_records() -> None:
    hist = Histogram()
    hist.record_many([1e-3, 2e-3])
    snap = hist.snapshot()
    hist.record_many([5.0] * 10)
    assert snap.count == 2
    assert snap.max == 2e-3
    assert snap.p99 == pytest.approx(2e-3, rel=WORST_ERROR)
    with pytest.raises(dataclasses.FrozenInstanceError):
        snap.sum = 1.0  # type: ignore[misc]


def test_snapshot_from_sparse_buckets_matches_the_dense_one() -> None:
    hist = Histogram()
    samples = [3e-6, 3e-6, 40e-6, 0.2, 9.0]
    hist.record_many(samples)
    sparse: dict[int, int] = {}
    for s in samples:
        sparse[bucket_index(s)] = sparse.get(bucket_index(s), 0) + 1
    built = HistogramSnapshot.from_buckets(sparse)
    dense = hist.snapshot()
    assert built.indices == dense.indices
    assert built.cumulative == dense.cumulative
    for q in (0.1, 0.5, 0.9):
        assert built.quantile(q) == pytest.approx(dense.quantile(q), rel=WORST_ERROR)
    assert built.min <= min(samples)
    assert built.max >= max(samples)
    overflowed = HistogramSnapshot.from_buckets({OVERFLOW: 2, 5: 0})
    assert overflowed.indices == (OVERFLOW,)
    assert overflowed.quantile(0.5) == HIGHEST  # "an hour or more", never infinity


def test_snapshots_taken_from_another_thread_are_consistent() -> None:
    hist = Histogram()
    seen: list[tuple[int, int]] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            snap = hist.snapshot()
            seen.append((snap.count, sum(snap.cumulative[-1:])))

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for i in range(50_000):
            hist.record(1e-6 * (1 + i % 1000))
    finally:
        stop.set()
        thread.join()
    counts = [count for count, _ in seen]
    assert seen
    assert all(count == last for count, last in seen)
    assert counts == sorted(counts)  # counts only grow between snapshots
    assert hist.count == 50_000


# -- counters and the registry ---------------------------------------------------------------


def test_counter_only_goes_up() -> None:
    counter = Counter("ipc.reconnects")
    counter.inc()
    counter.inc(4)
    counter.inc(0)
    assert counter.value == 5
    with pytest.raises(InvalidParams, match="cannot decrease"):
        counter.inc(-1)
    assert counter.value == 5


def test_registry_observe_has_the_hook_signature_services_take() -> None:
    registry = MetricsRegistry()
    hook: Observe = registry.observe
    hook("fs/read", 12e-6, True)
    hook("fs/read", 30e-6, False)
    hook("fs/read", 18e-6, True)
    stats = registry.operation("fs/read")
    assert (stats.count, stats.errors) == (3, 1)
    assert stats.p50_us == pytest.approx(18.0, rel=WORST_ERROR)
    assert stats.p99_us == pytest.approx(30.0, rel=WORST_ERROR)
    assert stats.sum_s == pytest.approx(60e-6)
    unseen = registry.operation("fs/stat")
    assert (unseen.count, unseen.errors, unseen.p99_us) == (0, 0, 0.0)


def test_registry_snapshot_has_the_metrics_get_shape() -> None:
    registry = MetricsRegistry()
    registry.observe("ping", 50e-6, True)
    registry.observe("terminal/execute", 1e-3, False)
    registry.counter("ipc.reconnects").inc(2)
    assert registry.counter("ipc.reconnects") is registry.counter("ipc.reconnects")
    snap = registry.snapshot()
    assert set(snap) == {"operations", "counters", "errors"}  # errors: added, by class
    assert snap["counters"] == {"ipc.reconnects": 2}
    assert snap["errors"] == []
    assert set(snap["operations"]) == {"ping", "terminal/execute"}
    execute = snap["operations"]["terminal/execute"]
    assert set(execute) == {"count", "errors", "p50Us", "p99Us", "p999Us"}
    assert execute["count"] == 1
    assert execute["errors"] == 1
    assert execute["p999Us"] == 1000.0
    assert registry.histogram("ping").count == 1
    assert registry.histogram("nothing").count == 0


def test_registry_folds_names_beyond_its_limit_into_other() -> None:
    registry = MetricsRegistry(max_operations=3)
    for i in range(10):
        registry.observe(f"made/up/{i}", 1e-3, True)
    registry.observe("made/up/0", 1e-3, False)  # a name already kept stays itself
    ops = registry.operations()
    assert set(ops) == {"made/up/0", "made/up/1", "made/up/2", OTHER_OPERATION}
    assert ops[OTHER_OPERATION].count == 7
    assert ops["made/up/0"].errors == 1
    with pytest.raises(InvalidParams):
        MetricsRegistry(max_operations=0)


def test_registry_refuses_an_invalid_duration_without_counting_it() -> None:
    registry = MetricsRegistry()
    with pytest.raises(InvalidParams):
        registry.observe("ping", math.nan, True)
    assert registry.operation("ping").count == 0


# -- sliding windows -------------------------------------------------------------------------


def _add(window: SlidingWindow, now: float, ok: bool) -> None:
    window.roll(now)
    window.calls_now += 1
    if not ok:
        window.failures_now += 1


@settings(max_examples=200, deadline=None)
@given(
    steps=st.lists(
        st.tuples(st.sampled_from([0.0, 0.25, 0.5, 1.0, 3.75, 7.0, 30.0]), st.booleans()),
        max_size=80,
    ),
    slots=st.sampled_from([1, 3, 6]),
)
def test_sliding_window_matches_a_model_that_keeps_every_record(
    steps: list[tuple[float, bool]], slots: int
) -> None:
    # Window 6 s: slot width 6, 2 or 1 s. Times are dyadic, so every sum is exact.
    length = 6.0
    width = length / slots
    window = SlidingWindow(length, slots)
    kept: list[tuple[float, bool]] = []
    now = 0.0
    for gap, ok in steps:
        now += gap
        _add(window, now, ok)
        kept.append((now, ok))
        window.roll(now)
        live = [(t, k) for t, k in kept if now < (t // width) * width + length]
        assert window.calls == len(live)
        assert window.failures == sum(1 for _, k in live if not k)


def test_sliding_window_roll_reports_a_change_of_slot_only() -> None:
    window = SlidingWindow(60.0, 60)
    assert window.roll(0.0) is True  # the first slot begins
    _add(window, 0.5, False)
    assert window.roll(0.75) is False
    assert window.roll(1.0) is True
    assert (window.calls, window.failures) == (1, 1)
    assert window.roll(59.5) is True
    assert window.calls == 1
    assert window.roll(60.0) is True  # floor(0.5) + 60: the record leaves exactly now
    assert (window.calls, window.failures) == (0, 0)
    _add(window, 1e6, True)  # a jump of many windows empties at most one ring
    assert window.calls == 1
