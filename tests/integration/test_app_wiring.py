"""The composition root: services' reliefs reach the resource manager; health re-checks run."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from lapce_bridge.app import App
from lapce_bridge.core.errors import (
    BridgeTimeout,
    ErrorCategory,
    ErrorSeverity,
    PermissionDenied,
)
from lapce_bridge.core.health import AlertCleared, HighFailureRate
from lapce_bridge.core.matrix import DEFAULT_MATRIX, Strategy
from lapce_bridge.fs.service import FileService
from lapce_bridge.testing import FakeClock


async def test_terminal_and_file_reliefs_are_registered(tmp_path: Path) -> None:
    async with App(workspace=tmp_path, state_dir=tmp_path / "state") as app:
        assert app.resources is not None
        names = {relief.name for relief in app.resources._reliefs}
        assert "terminals" in names
        assert any("cache" in name for name in names)
        terminals = next(r for r in app.resources._reliefs if r.name == "terminals")
        assert terminals.reap_idle is not None
        assert await terminals.reap_idle() == 0  # nothing idle yet, and no error
        assert terminals.spill_spools is not None
        spilled = terminals.spill_spools()  # in-process: at once
        assert isinstance(spilled, int)
        assert spilled >= 0


async def test_alert_clears_on_the_clock_without_traffic(tmp_path: Path) -> None:
    clock = FakeClock()
    seen: list[object] = []
    async with App(workspace=tmp_path, clock=clock, services=False) as app:
        app.bus.subscribe(HighFailureRate, seen.append)
        app.bus.subscribe(AlertCleared, seen.append)
        for _ in range(20):
            app.health.record_operation("fs/read", 0.001, False)
        assert any(isinstance(e, HighFailureRate) for e in seen)
        assert not any(isinstance(e, AlertCleared) for e in seen)
        # No further calls: only the periodic evaluation can notice the window slid past.
        await clock.advance(app.health_interval * 20)
        assert any(isinstance(e, AlertCleared) for e in seen)


@pytest.mark.parametrize("alerts", [True, False])
async def test_watch_fallback_to_polling_is_counted_and_broadcast_as_its_row_says(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, alerts: bool
) -> None:
    critical = DEFAULT_MATRIX.lookup(ErrorCategory.FILESYSTEM, ErrorSeverity.CRITICAL)
    matrix = (
        DEFAULT_MATRIX
        if alerts
        else DEFAULT_MATRIX.with_row(replace(critical, primary=Strategy.NONE))
    )
    sent: list[tuple[str, object]] = []
    async with App(workspace=tmp_path, services=False, matrix=matrix) as app:
        monkeypatch.setattr(app, "broadcast", lambda method, params: sent.append((method, params)))
        app.watch_degraded("inotify watch limit reached; polling")
        counters = app.metrics.snapshot()["counters"]
    assert counters["fs.watch.polling_fallbacks"] == 1
    expected = (
        "health/alert",
        {
            "kind": "WatcherDegraded",
            "operation": "fs/watch",
            "detail": "inotify watch limit reached; polling",
        },
    )
    assert sent == ([expected] if alerts else [])


@pytest.mark.parametrize("retries", [0, 5])
async def test_a_failing_watch_is_restarted_as_often_as_the_filesystem_row_says(
    tmp_path: Path, retries: int
) -> None:
    row = DEFAULT_MATRIX.lookup(ErrorCategory.FILESYSTEM, ErrorSeverity.RECOVERABLE)
    matrix = DEFAULT_MATRIX.with_row(replace(row, max_retries=retries))
    async with App(workspace=tmp_path, state_dir=tmp_path / "state", matrix=matrix) as app:
        files = next(s for s in app.services if isinstance(s, FileService))
        assert files.watcher.max_failures == retries  # then it polls (fs/watch's own tests)


async def test_error_answers_are_counted_by_class_and_server_timeouts_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    refused = PermissionDenied("../x is outside the workspace")
    timed_out = BridgeTimeout("terminal/execute timed out after 30 s")
    async with App(workspace=tmp_path, services=False, clock=FakeClock()) as app:
        with caplog.at_level("WARNING", logger="lapce_bridge.app"):
            app.record_error("fs/read", refused)
            app.record_error("fs/read", refused)
            app.record_error("terminal/execute", timed_out)
        assert app.metrics.errors() == {
            ("fs/read", refused.classification.category.value, "caller"): 2,
            ("terminal/execute", "timeout", "server"): 1,
        }
        # The server's own timeout is logged; the caller's mistakes are not.
        assert [r.getMessage() for r in caplog.records] == [
            "terminal/execute timed out: terminal/execute timed out after 30 s"
        ]
