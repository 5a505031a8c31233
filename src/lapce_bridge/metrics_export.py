"""Prometheus exposition of a `MetricsRegistry`, as a custom collector.

Each scrape reads a fresh snapshot of the registry and yields:

- `lapce_bridge_operation_duration_seconds{operation, quantile}`: a *summary* with the 0.5,
  0.99 and 0.999 quantiles, plus `_count` and `_sum`. A summary rather than a Prometheus
  histogram because the in-house histogram already answers quantiles within 0.3 %, while
  exporting its 4064 buckets as `le` series would be absurd and a handful of fixed buckets
  would bring back the error it exists to avoid (Prometheus' default buckets were 33-42 % off
  at p99 here). What a summary gives up, aggregating quantiles across instances, does not
  apply: each bridge serves one user and reports its own quantiles.
- `lapce_bridge_operation_errors_total{operation}`: failed calls per operation.
- `lapce_bridge_counter_total{counter}`: every registry counter, its name kept verbatim in a
  label, because counter names are free-form ("ipc.reconnects", "fs/cache_hits") and turning
  them into metric names could make two of them collide.

The collector only reads snapshots, which the registry allows from another thread, so it is
safe under `prometheus_client.start_http_server`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, generate_latest, start_http_server
from prometheus_client.metrics_core import CounterMetricFamily, Metric, SummaryMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

from lapce_bridge.core.errors import InvalidParams
from lapce_bridge.core.metrics import MetricsRegistry

QUANTILES = (0.5, 0.99, 0.999)
# The classic text format, which every Prometheus accepts and `render` produces (the metric
# names here are all legacy-valid, so no newer escaping is needed).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_METRIC_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_:")


class MetricsCollector(Collector):
    """Yields the registry's operations and counters on every `collect()`."""

    def __init__(self, metrics: MetricsRegistry, *, prefix: str = "lapce_bridge") -> None:
        if not prefix or prefix[0].isdigit() or not set(prefix) <= _METRIC_NAME_CHARS:
            raise InvalidParams(f"{prefix!r} is not a valid Prometheus metric name prefix")
        self.metrics = metrics
        self.prefix = prefix

    def collect(self) -> Iterator[Metric]:
        operations = self.metrics.operations()
        durations = SummaryMetricFamily(
            f"{self.prefix}_operation_duration_seconds",
            "Time taken by each operation (quantiles within 0.3 % of the exact ones).",
            labels=["operation"],
        )
        errors = CounterMetricFamily(
            f"{self.prefix}_operation_errors",
            "Calls of each operation that failed.",
            labels=["operation"],
        )
        for op, stats in sorted(operations.items()):
            snap = stats.latency
            for q in QUANTILES:
                durations.samples.append(
                    Sample(durations.name, {"operation": op, "quantile": str(q)}, snap.quantile(q))
                )
            durations.add_metric([op], snap.count, snap.sum)
            errors.add_metric([op], stats.errors)
        yield durations
        yield errors
        counters = CounterMetricFamily(
            f"{self.prefix}_counter",
            "The bridge's named event counters.",
            labels=["counter"],
        )
        for name, value in sorted(self.metrics.counters().items()):
            counters.add_metric([name], value)
        yield counters


def render(metrics: MetricsRegistry, *, prefix: str = "lapce_bridge") -> bytes:
    """The registry in the Prometheus text format, served as `CONTENT_TYPE`."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(MetricsCollector(metrics, prefix=prefix))
    return generate_latest(registry)


def start_exporter(
    metrics: MetricsRegistry, port: int, *, addr: str = "127.0.0.1"
) -> tuple[int, Callable[[], None]]:
    """Serve `/metrics` for Prometheus on a thread; returns the bound port and a stop function.

    Loopback by default: the figures name the operations a local agent runs.
    """
    registry = CollectorRegistry(auto_describe=False)
    registry.register(MetricsCollector(metrics))
    server, thread = start_http_server(port, addr=addr, registry=registry)

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(5)

    return int(server.server_port), stop


__all__ = ["CONTENT_TYPE", "QUANTILES", "MetricsCollector", "render", "start_exporter"]
