"""The bench report opened in a real headless Chromium: every plot is laid out and drawn.

The page's own script checks each SVG plot in the browser that opens it (a box on screen, a
curve or bars with a non-empty bounding box) and writes the count on the root element; the
test reads the DOM Chromium dumps after running it, and takes a screenshot too.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from lapce_bridge.bench.html import write_report
from lapce_bridge.bench.report import Row, figure_row, latency_row
from lapce_bridge.bench.runner import TARGETS_EXPLAINED

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None and not os.environ.get("CI"):  # CI installs it (.ci/run): there, fail
    pytest.skip("no chromium on this machine", allow_module_level=True)


def _browser(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None, "chromium is not installed (.ci/run installs it)"
    profile = tmp_path / "profile"
    return subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={profile}",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )


def _rows() -> list[Row]:
    rng = random.Random(5)
    ours = [rng.lognormvariate(-7.5, 0.4) for _ in range(2000)]
    floor = [rng.lognormvariate(-9.0, 0.3) for _ in range(2000)]
    terminal = ("terminal", "echo test (bash)")
    return [
        latency_row(*terminal, ours, seed=(1000, 10000, 100000), goal=(800, 3000)),
        latency_row("terminal", "baseline: echo test, marker-prompt bash (floor)", floor),
        latency_row("kernel", "event dispatch", [rng.expovariate(1e6) for _ in range(500)]),
        figure_row(
            "terminal", "output streamed", 120.0, "MB/s", higher_is_better=True, seed=10, goal=50
        ),
        figure_row(
            "terminal", "allocations left", 12_000, "blocks", higher_is_better=False, seed=10_000
        ),
    ]


def test_report_plots_render_in_headless_chromium(tmp_path: Path) -> None:
    page = write_report(
        tmp_path / "report",
        _rows(),
        title="bench",
        label="median of 1 run",
        explain=TARGETS_EXPLAINED,
    )
    text = page.read_text()
    assert "<script src" not in text
    assert "http" not in text.replace("http-equiv", "")
    dom = _browser(tmp_path, "--virtual-time-budget=2000", "--dump-dom", page.as_uri()).stdout
    expected = re.search(r'data-plots-expected="(\d+)"', dom)
    rendered = re.search(r'data-plots-rendered="(\d+)"', dom)
    assert expected is not None, dom[:500]
    assert rendered is not None
    # terminal: side-by-side curves + 2 histograms + figures; kernel: 1 histogram.
    assert int(expected.group(1)) == 5
    assert rendered.group(1) == expected.group(1)
    assert "5 of 5 plots rendered in this browser" in dom
    shot = tmp_path / "report.png"
    _browser(tmp_path, "--window-size=1280,2400", f"--screenshot={shot}", page.as_uri())
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 20_000


def test_a_plot_with_nothing_drawn_is_not_counted(tmp_path: Path) -> None:
    # The check must be able to fail: a histogram whose bars were removed is not rendered.
    page = write_report(
        tmp_path / "report", _rows()[2:3], title="bench", label="x", explain="", machine={}
    )
    page.write_text(re.sub(r'<rect class="data"[^>]*/>', "", page.read_text()))
    dom = _browser(tmp_path, "--virtual-time-budget=2000", "--dump-dom", page.as_uri()).stdout
    assert 'data-plots-expected="1"' in dom
    assert 'data-plots-rendered="0"' in dom
