"""The Prometheus collector: text output parsed back, and a real scrape over HTTP."""

from __future__ import annotations

import math
import random
import urllib.request
from fractions import Fraction

import pytest
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from lapce_bridge.core.errors import InvalidParams
from lapce_bridge.core.metrics import MetricsRegistry
from lapce_bridge.metrics_export import CONTENT_TYPE, MetricsCollector, render


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
    assert set(parsed) == {
        "lapce_bridge_operation_duration_seconds",
        "lapce_bridge_operation_errors",
        "lapce_bridge_counter",
    }
    durations = parsed["lapce_bridge_operation_duration_seconds"]
    assert durations.type == "summary"
    name = durations.name
    ordered = sorted(reads)
    for q in ("0.5", "0.99", "0.999"):
        exact = ordered[math.ceil(Fraction(q) * len(ordered)) - 1]
        got = sample_value(durations, name, operation="fs/read", quantile=q)
        assert abs(got - exact) / exact < 0.003
    assert sample_value(durations, name + "_count", operation="fs/read") == 5000
    assert sample_value(durations, name + "_sum", operation="fs/read") == pytest.approx(
        math.fsum(reads)
    )
    assert sample_value(durations, name + "_count", operation="terminal/execute") == 1
    assert sample_value(
        durations, name, operation="terminal/execute", quantile="0.99"
    ) == pytest.approx(2.5e-3)
    errors = parsed["lapce_bridge_operation_errors"]
    assert errors.type == "counter"
    assert sample_value(errors, errors.name + "_total", operation="fs/read") == 100
    assert sample_value(errors, errors.name + "_total", operation="terminal/execute") == 0
    counters = parsed["lapce_bridge_counter"]
    assert sample_value(counters, counters.name + "_total", counter="ipc.reconnects") == 3
    assert sample_value(counters, counters.name + "_total", counter="fs/cache_hits") == 41


def test_awkward_operation_names_survive_the_round_trip() -> None:
    metrics = MetricsRegistry()
    odd = 'weird "name"\\with\nnewline'
    metrics.observe(odd, 1e-3, False)
    metrics.counter("a counter, with spaces").inc()
    parsed = families(render(metrics))
    errors = parsed["lapce_bridge_operation_errors"]
    assert sample_value(errors, errors.name + "_total", operation=odd) == 1
    counters = parsed["lapce_bridge_counter"]
    assert sample_value(counters, counters.name + "_total", counter="a counter, with spaces") == 1


def test_an_empty_registry_exposes_empty_families() -> None:
    parsed = families(render(MetricsRegistry()))
    assert all(not family.samples for family in parsed.values())
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
