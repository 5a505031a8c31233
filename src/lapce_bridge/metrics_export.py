"""Prometheus exposition for a fleet: histograms, outcome counters, gauges, the process.

Each scrape reads fresh snapshots and yields:

- `lapce_bridge_operation_duration_seconds{operation}`: a *histogram*, so quantiles can be
  aggregated across servers (an agent platform runs one bridge per sandbox and wants the
  fleet's p99). Its bucket bounds are edges of the in-house log-linear histogram taken every
  half octave (x1.41) from 16 us to about 18 minutes: 53 buckets, coarse enough to scrape
  cheaply, and exact, since each bound is an edge of our own buckets (no sample is counted
  on the wrong side of one).
- `lapce_bridge_operation_calls_total{operation, outcome}`: calls by outcome, `ok` or
  `server_error` (an error that was the server's fault; a caller's mistake counts as `ok`
  here, as it does for health and SLOs).
- `lapce_bridge_operation_errors_total{operation, category, fault}`: error answers by their
  classification (the caller's mistakes included), so a fleet sees which kind of failure rose.
- `lapce_bridge_counter_total{counter}`: every registry counter, its name kept verbatim in a
  label, because counter names are free-form ("ipc.reconnects") and turning them into metric
  names could make two of them collide.
- Gauges from the app, when it gives them (`gauges`): memory pressure and its parts, quality
  level, terminals, connections, breaker states, spool bytes (see `GAUGES`).
- The standard `process_*` metrics (CPU seconds, resident memory, open descriptors, start
  time) from prometheus_client's own process collector.

The collector only reads snapshots (the server scrapes on its own loop, `ipc.metrics_http`);
a gauge source that fails (the app closing under a scrape) leaves its gauges out of that
scrape rather than failing it.
"""

from __future__ import annotations

import logging
from bisect import bisect_left
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from lapce_bridge.core.errors import InvalidParams
from lapce_bridge.core.metrics import (
    SUB_BUCKETS,
    HistogramSnapshot,
    MetricsRegistry,
    bucket_lower_edge,
)

log = logging.getLogger("lapce_bridge.metrics")

# Every 64th bucket edge (a half octave) from 16 us (2**4 us) to 2**30 us.
_STEP = SUB_BUCKETS // 2
BUCKET_INDICES: tuple[int, ...] = tuple(range(4 * SUB_BUCKETS, 30 * SUB_BUCKETS + 1, _STEP))
BUCKET_BOUNDS: tuple[float, ...] = tuple(bucket_lower_edge(i) for i in BUCKET_INDICES)
# The classic text format, which every Prometheus accepts and `render` produces.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_METRIC_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_:")

Gauges = Callable[[], Mapping[str, Any]]
# What a gauge source may give: key -> (metric name suffix, help).
GAUGES: Mapping[str, tuple[str, str]] = {
    "pressure": ("memory_pressure_ratio", "Resource pressure, 0..1 (the bands: 0.3, 0.6, 0.8)."),
    "owned_bytes": ("owned_memory_bytes", "Memory of the server and its terminals (PSS)."),
    "budget_bytes": ("memory_budget_bytes", "The memory budget (serve --memory-budget)."),
    "cpu": ("cpu_ratio", "CPU of the server and its terminals, share of the usable cores."),
    "quality": ("quality_level", "Quality level, 0..3 (3: every feature on)."),
    "terminals": ("terminals", "Open terminals."),
    "busy_terminals": ("terminals_busy", "Terminals running a command."),
    "connections": ("connections", "Connected clients."),
    "spool_disk_bytes": ("spool_disk_bytes", "Command output kept on disk."),
    "spool_memory_bytes": ("spool_memory_bytes", "Command output kept in memory."),
    "open_incidents": (
        "incidents_open",
        "Incidents under way (a recovery not yet over; a file served from the cache while "
        "the disk fails).",
    ),
}
BREAKER_STATES = ("closed", "open", "half_open")


def cumulative_buckets(snap: HistogramSnapshot) -> list[tuple[str, float]]:
    """`(le, count of samples below it)` for each bound, then +Inf: exact on our edges."""
    out: list[tuple[str, float]] = []
    for index, bound in zip(BUCKET_INDICES, BUCKET_BOUNDS, strict=True):
        position = bisect_left(snap.indices, index)  # our buckets wholly below the bound
        out.append((repr(bound), float(snap.cumulative[position - 1]) if position else 0.0))
    out.append(("+Inf", float(snap.count)))
    return out


class MetricsCollector(Collector):
    """Yields the registry's operations and counters, and the app's gauges, on `collect()`."""

    def __init__(
        self,
        metrics: MetricsRegistry,
        *,
        prefix: str = "lapce_bridge",
        gauges: Gauges | None = None,
    ) -> None:
        if not prefix or prefix[0].isdigit() or not set(prefix) <= _METRIC_NAME_CHARS:
            raise InvalidParams(f"{prefix!r} is not a valid Prometheus metric name prefix")
        self.metrics = metrics
        self.prefix = prefix
        self.gauges = gauges

    def collect(self) -> Iterator[Metric]:
        p = self.prefix
        durations = HistogramMetricFamily(
            f"{p}_operation_duration_seconds",
            "Time taken by each operation.",
            labels=["operation"],
        )
        calls = CounterMetricFamily(
            f"{p}_operation_calls",
            "Calls of each operation by outcome (server_error: the server's fault).",
            labels=["operation", "outcome"],
        )
        for op, stats in sorted(self.metrics.operations().items()):
            snap = stats.latency
            durations.add_metric([op], cumulative_buckets(snap), snap.sum)
            calls.add_metric([op, "ok"], stats.count - stats.errors)
            calls.add_metric([op, "server_error"], stats.errors)
        yield durations
        yield calls
        errors = CounterMetricFamily(
            f"{p}_operation_errors",
            "Error answers of each operation by classification: category, and whose fault "
            "(caller: a bad request; server: the bridge failed).",
            labels=["operation", "category", "fault"],
        )
        for (op, category, fault), count in sorted(self.metrics.errors().items()):
            errors.add_metric([op, category, fault], count)
        yield errors
        counters = CounterMetricFamily(
            f"{p}_counter", "The bridge's named event counters.", labels=["counter"]
        )
        for name, value in sorted(self.metrics.counters().items()):
            counters.add_metric([name], value)
        yield counters
        if self.gauges is not None:
            yield from self._gauges()

    def _gauges(self) -> Iterator[Metric]:
        try:
            values = dict(self.gauges()) if self.gauges is not None else {}
        except Exception:  # the app closing under a scrape: leave its gauges out
            log.debug("gauge source failed", exc_info=True)
            return
        for key, (suffix, text) in GAUGES.items():
            value = values.get(key)
            if value is not None:
                yield GaugeMetricFamily(f"{self.prefix}_{suffix}", text, value=float(value))
        breakers = values.get("breakers")
        if breakers:
            family = GaugeMetricFamily(
                f"{self.prefix}_breaker_state",
                "Circuit breakers: 1 for the state each is in, 0 for the others.",
                labels=["breaker", "state"],
            )
            for name, state in sorted(breakers.items()):
                for candidate in BREAKER_STATES:
                    family.add_metric([name, candidate], float(candidate == state))
            yield family


def registry_for(
    metrics: MetricsRegistry, *, prefix: str = "lapce_bridge", gauges: Gauges | None = None
) -> CollectorRegistry:
    """A registry with our collector and the process collector."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(MetricsCollector(metrics, prefix=prefix, gauges=gauges))
    registry.register(ProcessCollector(registry=None))
    return registry


def render(
    metrics: MetricsRegistry, *, prefix: str = "lapce_bridge", gauges: Gauges | None = None
) -> bytes:
    """The registry in the Prometheus text format, served as `CONTENT_TYPE`."""
    return generate_latest(registry_for(metrics, prefix=prefix, gauges=gauges))


__all__ = [
    "BUCKET_BOUNDS",
    "CONTENT_TYPE",
    "GAUGES",
    "MetricsCollector",
    "cumulative_buckets",
    "registry_for",
    "render",
]
