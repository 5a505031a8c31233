"""The Prometheus collector: text output parsed back, and a real scrape over HTTP."""

from __future__ import annotations

import math
import random
import urllib.request

import pytest
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from lapce_bridge.core.errors import InvalidParams
from lapce_bridge.core.metrics import MetricsRegistry
from lapce_bridge.metrics_export import (
    BUCKET_BOUNDS,
    CONTENT_TYPE,
    GAUGES,
    MetricsCollector,
    cumulative_buckets,
    render,
)


def families(text: bytes) -> dict[str, Metric]:
    return {f.name: f for f in text_string_to_metric_families(text.decode())}


def sample_value(family: Metric, name: str, **labels: str) -> float:
    found = [s.value for s in family.samples if s.name == name and s.labels == labels]
    assert len(found) == 1, (name, labels, family.samples)
    return found[0]


def filled_registry() -> tuple[MetricsRegistry, list[float]]:
    rng = random.Random(3)
    reads = [rng.lognormvariate(math.log(40e-6), 0.8) for _ in range(5000)]
    metrics = MetricsRegistry()
    for i, seconds in enumerate(reads):
        metrics.observe("fs/read", seconds, i % 50 != 0)
    metrics.observe("terminal/execute", 2.5e-3, True)
    metrics.counter("ipc.reconnects").inc(3)
    metrics.counter("fs/cache_hits").inc(41)
    return metrics, reads


def test_text_output_parses_back_to_the_registry_figures() -> None:
    metrics, reads = filled_registry()
    parsed = families(render(metrics))
    assert {
        "lapce_bridge_operation_duration_seconds",
        "lapce_bridge_operation_calls",
        "lapce_bridge_counter",
    } <= set(parsed)
    assert "process_resident_memory_bytes" in parsed  # the process collector
    durations = parsed["lapce_bridge_operation_duration_seconds"]
    assert durations.type == "histogram"
    name = durations.name
    # Each bucket counts exactly the samples below its bound: the bounds are our own edges.
    buckets = [s for s in durations.samples if s.name == name + "_bucket"]
    fs_read = [s for s in buckets if s.labels["operation"] == "fs/read"]
    assert len(fs_read) == len(BUCKET_BOUNDS) + 1
    for sample in fs_read:
        le = math.inf if sample.labels["le"] == "+Inf" else float(sample.labels["le"])
        assert sample.value == sum(1 for r in reads if r < le)
    assert sample_value(durations, name + "_count", operation="fs/read") == 5000
    assert sample_value(durations, name + "_sum", operation="fs/read") == pytest.approx(
        math.fsum(reads)
    )
    assert sample_value(durations, name + "_count", operation="terminal/execute") == 1
    calls = parsed["lapce_bridge_operation_calls"]
    assert calls.type == "counter"
    total = calls.name + "_total"
    assert sample_value(calls, total, operation="fs/read", outcome="server_error") == 100
    assert sample_value(calls, total, operation="fs/read", outcome="ok") == 4900
    assert sample_value(calls, total, operation="terminal/execute", outcome="server_error") == 0
    counters = parsed["lapce_bridge_counter"]
    assert sample_value(counters, counters.name + "_total", counter="ipc.reconnects") == 3
    assert sample_value(counters, counters.name + "_total", counter="fs/cache_hits") == 41


def test_fleet_quantiles_from_the_buckets_are_within_a_half_octave() -> None:
    # What a fleet's histogram_quantile() sees: the bucket holding the rank.
    metrics, reads = filled_registry()
    buckets = cumulative_buckets(metrics.operation("fs/read").latency)
    exact = sorted(reads)[math.ceil(0.99 * len(reads)) - 1]
    rank = 0.99 * len(reads)
    upper = next(float(le) for le, count in buckets if count >= rank)
    assert exact <= upper < exact * 2**0.5 * 1.01
    assert 40 <= len(BUCKET_BOUNDS) <= 60  # coarse enough to scrape cheaply


def test_gauges_pressure_quality_terminals_connections_breakers_spools() -> None:
    gauges = {
        "pressure": 0.42,
        "owned_bytes": 100 << 20,
        "budget_bytes": 512 << 20,
        "cpu": 0.1,
        "quality": 2,
        "terminals": 3,
        "busy_terminals": 1,
        "connections": 4,
        "spool_disk_bytes": 1234,
        "spool_memory_bytes": 99,
        "open_incidents": 2,
        "breakers": {"fs": "open", "terminal": "closed"},
    }
    parsed = families(render(MetricsRegistry(), gauges=lambda: gauges))
    for key, (suffix, _) in GAUGES.items():
        family = parsed[f"lapce_bridge_{suffix}"]
        assert family.type == "gauge"
        assert family.samples[0].value == float(gauges[key])  # type: ignore[arg-type]
    breaker = parsed["lapce_bridge_breaker_state"]
    assert sample_value(breaker, breaker.name, breaker="fs", state="open") == 1.0
    assert sample_value(breaker, breaker.name, breaker="fs", state="closed") == 0.0
    assert sample_value(breaker, breaker.name, breaker="terminal", state="closed") == 1.0

    def failing() -> dict[str, float]:
        raise RuntimeError("closing")

    parsed = families(render(MetricsRegistry(), gauges=failing))  # the scrape still answers
    assert "lapce_bridge_memory_pressure_ratio" not in parsed


def test_awkward_operation_names_survive_the_round_trip() -> None:
    metrics = MetricsRegistry()
    odd = 'weird "name"\\with\nnewline'
    metrics.observe(odd, 1e-3, False)
    metrics.counter("a counter, with spaces").inc()
    parsed = families(render(metrics))
    calls = parsed["lapce_bridge_operation_calls"]
    assert sample_value(calls, calls.name + "_total", operation=odd, outcome="server_error") == 1
    counters = parsed["lapce_bridge_counter"]
    assert sample_value(counters, counters.name + "_total", counter="a counter, with spaces") == 1


def test_an_empty_registry_exposes_empty_families() -> None:
    parsed = families(render(MetricsRegistry()))
    assert all(not f.samples for name, f in parsed.items() if name.startswith("lapce_bridge"))
    assert "lapce_bridge_operation_duration_seconds" in parsed


def test_each_scrape_reads_the_registry_anew_and_prefixes_are_checked() -> None:
    metrics = MetricsRegistry()
    registry = CollectorRegistry(auto_describe=False)
    registry.register(MetricsCollector(metrics, prefix="bridge_test"))
    assert registry.get_sample_value("bridge_test_counter_total", {"counter": "x"}) is None
    metrics.counter("x").inc(2)
    assert registry.get_sample_value("bridge_test_counter_total", {"counter": "x"}) == 2
    metrics.counter("x").inc()
    assert registry.get_sample_value("bridge_test_counter_total", {"counter": "x"}) == 3
    for bad in ("", "9lives", "has-dash", "has space"):
        with pytest.raises(InvalidParams):
            MetricsCollector(metrics, prefix=bad)


def test_a_real_http_scrape_returns_the_text_format() -> None:
    metrics, _ = filled_registry()
    registry = CollectorRegistry(auto_describe=False)
    registry.register(MetricsCollector(metrics))
    server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    try:
        port = server.server_address[1]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
            body = reply.read()
            content_type = reply.headers["Content-Type"]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
    assert content_type == CONTENT_TYPE
    parsed = families(body)
    durations = parsed["lapce_bridge_operation_duration_seconds"]
    assert sample_value(durations, durations.name + "_count", operation="fs/read") == 5000


def test_error_answers_are_exported_by_classification() -> None:
    metrics = MetricsRegistry()
    metrics.observe("fs/read", 1e-4, True)
    for _ in range(3):
        metrics.record_error("fs/read", "filesystem", "caller")
    metrics.record_error("fs/read", "timeout", "server")
    metrics.record_error("terminal/execute", "terminal", "server")
    parsed = families(render(metrics))
    errors = parsed["lapce_bridge_operation_errors"]
    assert errors.type == "counter"
    total = errors.name + "_total"
    assert (
        sample_value(errors, total, operation="fs/read", category="filesystem", fault="caller") == 3
    )
    assert sample_value(errors, total, operation="fs/read", category="timeout", fault="server") == 1
    assert (
        sample_value(
            errors, total, operation="terminal/execute", category="terminal", fault="server"
        )
        == 1
    )
    assert len([s for s in errors.samples if s.name == total]) == 3


def test_error_classes_stay_bounded_like_the_operations() -> None:
    metrics = MetricsRegistry(max_operations=2)
    metrics.observe("a", 1e-4, True)
    metrics.observe("b", 1e-4, True)
    for i in range(50):  # a flood of names: folded into "other", memory stays bounded
        metrics.record_error(f"x{i}", "network", "caller")
    metrics.record_error("a", "network", "caller")
    assert metrics.errors() == {("other", "network", "caller"): 50, ("a", "network", "caller"): 1}
    assert {"operation": "a", "category": "network", "fault": "caller", "count": 1} in (
        metrics.snapshot()["errors"]
    )
