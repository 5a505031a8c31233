"""The start-up bench rows time real processes: a server to its first ping and to its
services open (a file request answered), against a bare interpreter; and a restart after a
real SIGKILL, step by step."""

from __future__ import annotations

from pathlib import Path

from lapce_bridge.bench.runner import SUITES, BenchContext
from lapce_bridge.bench.startup import GOAL_MS, run


async def test_startup_row_times_a_real_server_against_a_bare_interpreter(tmp_path: Path) -> None:
    assert SUITES["startup"] == "lapce_bridge.bench.startup"
    row, opened, *restart = await run(BenchContext(workdir=tmp_path, quick=True))
    assert row.suite == "startup"
    assert row.unit == "ms"
    assert row.samples == 3
    assert row.goal == (GOAL_MS,)
    serve_ms, bare_ms = row.extra["serve_ms"], row.extra["bare_ms"]
    assert bare_ms > 0
    # A server does all an interpreter does, and more: in CPU time (its wall time may come
    # out below a bare interpreter's on a loaded machine, each sampled at its own moment).
    assert row.extra["serve_cpu_ms"] > row.extra["bare_cpu_ms"] > 0
    assert serve_ms > 0
    assert row.value == serve_ms - bare_ms
    # fs/stat waits for the file service, which opens behind the listener: never before ping.
    assert opened.extra["serve_ms"] >= serve_ms
    assert opened.extra["bare_ms"] == bare_ms
    assert opened.value == opened.extra["serve_ms"] - bare_ms
    assert "services open" in opened.name
    # A restart, step by step from the SIGKILL, each step after the one before; then the
    # same with a warm standby told to serve.
    cold, warm = restart[:4], restart[4:]
    steps = ["socket accepting", "initialize answered", "ping answered", "old terminal usable"]
    assert [r.name for r in cold] == [f"restart: SIGKILL to {s}" for s in steps]
    assert [r.name for r in warm] == [f"restart from a warm standby: SIGKILL to {s}" for s in steps]
    for rows in (cold, warm):
        values = [r.value for r in rows]
        assert all(v is not None and v > 0 for v in values)
        assert values == sorted(values)  # type: ignore[type-var]
        assert all(r.samples == 3 for r in rows)
