"""Kernel rows: event dispatch and processing, histogram records, health and retry overheads.

A single publish or record takes well under a microsecond, below what one pair of
`perf_counter_ns` readings resolves reliably, so latency rows time batches of `BATCH` calls and
divide: each sample is the mean cost of one call within a batch, and the p99 / p99.9 are those
of batch means (a batch that met a page fault or another process shows up there). The loop
that drives a batch (about 20 ns a turn here) is included, as it is in any caller.
Throughput rows time one long run and take the median of a few.
"""

from __future__ import annotations

import gc
import math
import random
import statistics
import time
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, replace
from itertools import repeat
from typing import Any, TypeVar

from lapce_bridge.bench.report import Row, figure_row, latency_row
from lapce_bridge.bench.runner import BenchContext
from lapce_bridge.clock import SYSTEM_CLOCK
from lapce_bridge.core.events import EventBus
from lapce_bridge.core.health import HealthMonitor
from lapce_bridge.core.metrics import Histogram, MetricsRegistry

SUITE = "kernel"
T = TypeVar("T")
BATCH = 100


@dataclass(frozen=True, slots=True)
class _Ping:
    seq: int


def _batches(call: Callable[[T], object], arg: T, batches: int) -> list[float]:
    """Seconds per `call(arg)`, one sample per batch of BATCH calls."""
    clock = time.perf_counter_ns
    samples = []
    for _ in range(batches):
        started = clock()
        for _ in repeat(None, BATCH):
            call(arg)
        samples.append((clock() - started) / BATCH / 1e9)
    return samples


def _over_values(
    record: Callable[[float], object], values: list[float], batches: int
) -> list[float]:
    """Like `_batches`, feeding `record` the next BATCH values each time."""
    clock = time.perf_counter_ns
    samples = []
    chunks = [values[i : i + BATCH] for i in range(0, len(values) - BATCH + 1, BATCH)]
    for i in range(batches):
        chunk = chunks[i % len(chunks)]
        started = clock()
        for value in chunk:
            record(value)
        samples.append((clock() - started) / BATCH / 1e9)
    return samples


def latencies(n: int, rng: random.Random) -> list[float]:
    """Request-like durations: lognormal around 80 us with a long tail, 1 us to minutes."""
    return [min(600.0, rng.lognormvariate(math.log(80e-6), 1.5)) for _ in range(n)]


def event_dispatch(ctx: BenchContext) -> Row:
    bus = EventBus()
    sink: deque[object] = deque(maxlen=1)
    bus.subscribe(_Ping, sink.append)
    event = _Ping(1)
    publish = bus.publish
    samples = _batches(publish, event, ctx.n(20_000, 1_000))
    assert sink[0] is event  # the handler really ran
    return latency_row(
        SUITE,
        "event dispatch, in-process",
        samples,
        seed=(1, 10, 100),
        goal=(0.5, 2),
        note=f"EventBus.publish to one handler; means of batches of {BATCH}",
    )


def event_processing(ctx: BenchContext) -> Row:
    bus = EventBus()
    handled = 0

    def handler(event: _Ping) -> None:
        nonlocal handled
        handled += 1

    bus.subscribe(_Ping, handler)
    events = [_Ping(i) for i in range(1000)]
    rounds = ctx.n(1_000, 50)  # passes over the 1000 events
    publish = bus.publish
    rates = []
    for _ in range(ctx.n(5, 2)):
        started = time.perf_counter()
        for _ in range(rounds):
            for event in events:
                publish(event)
        rates.append(rounds * len(events) / (time.perf_counter() - started))
    assert handled == rounds * len(events) * len(rates)
    return figure_row(
        SUITE,
        "event processing, in-process",
        statistics.median(rates),
        "events/s",
        higher_is_better=True,
        seed=100_000,
        goal=1_000_000,
        samples=len(rates),
    )


def histogram_record(ctx: BenchContext, values: list[float]) -> Row:
    hist = Histogram()
    samples = _over_values(hist.record, values, ctx.n(20_000, 1_000))
    return latency_row(
        SUITE,
        "histogram record",
        samples,
        seed=(1, 10, 100),
        goal=(0.5, 2),
        note=f"Histogram.record of lognormal request durations; means of batches of {BATCH}",
    )


def registry_observe(ctx: BenchContext, values: list[float]) -> Row:
    metrics = MetricsRegistry()

    def observe(seconds: float) -> None:
        metrics.observe("fs/read", seconds, True)

    samples = _over_values(observe, values, ctx.n(10_000, 500))
    return latency_row(SUITE, "metrics observe (per request)", samples)


def health_record(ctx: BenchContext, values: list[float]) -> Row:
    # A target the durations stay under: the steady state, with no alert active (an active
    # alert makes every record re-check its conditions, about twice the cost).
    health = HealthMonitor(clock=SYSTEM_CLOCK, targets={"bench/op": 1000.0})

    def record(seconds: float) -> None:
        health.record_operation("bench/op", seconds, True)

    samples = _over_values(record, values, ctx.n(10_000, 500))
    if health.active_alerts():
        raise RuntimeError("the health row must measure the no-alert steady state")
    return latency_row(
        SUITE,
        "health record (per request)",
        samples,
        note="HealthMonitor.record_operation on the system clock, no alert active",
    )


async def retry_success(ctx: BenchContext) -> list[Row]:
    try:
        from lapce_bridge.core.retry import RetryPolicy
    except ImportError:  # pragma: no cover - the retry module is part of the kernel
        return []
    policy = RetryPolicy(clock=SYSTEM_CLOCK)

    async def succeed() -> int:
        return 1

    async def timed(call: Callable[[], Coroutine[Any, Any, int]], batches: int) -> list[float]:
        clock = time.perf_counter_ns
        samples = []
        for _ in range(batches):
            started = clock()
            for _ in repeat(None, BATCH):
                await call()
            samples.append((clock() - started) / BATCH / 1e9)
        return samples

    batches = ctx.n(5_000, 250)
    bare = await timed(succeed, batches)
    wrapped = await timed(lambda: policy.run_async(succeed), batches)
    overhead = statistics.median(wrapped) - statistics.median(bare)
    row = latency_row(
        SUITE,
        "retry success path",
        wrapped,
        goal=(2, 2),
        note=f"RetryPolicy.run_async of a coroutine that succeeds; means of batches of {BATCH}",
    )
    extra = {"bare_await_p50_us": statistics.median(bare) * 1e6, "overhead_us": overhead * 1e6}
    return [replace(row, extra=extra)]


async def run(ctx: BenchContext) -> list[Row]:
    values = latencies(100_000 if not ctx.quick else 10_000, random.Random(5))
    gc.collect()
    rows = [
        event_dispatch(ctx),
        event_processing(ctx),
        histogram_record(ctx, values),
        registry_observe(ctx, values),
        health_record(ctx, values),
    ]
    rows.extend(await retry_success(ctx))
    return rows
