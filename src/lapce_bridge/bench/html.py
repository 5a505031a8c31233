"""`bench --report DIR`: one self-contained HTML page of a bench (or chaos) run.

The page needs nothing from the network: its plots are SVG written here, its style and the
small script are inline. For each suite it shows every latency row's distribution (a
histogram of the samples on a logarithmic axis, built from the row's percentile curve: each
percentile step holds 1 % of the samples), the suite's latency rows and baselines side by side
as cumulative curves in one plot, and the single-figure rows as bars against their seed and
goal. A table describes the machine. The inline script checks, in the browser that opens the
page, that every plot was laid out with a visible curve, and records the count on the root
element (`data-plots-expected`, `data-plots-rendered`): the browser test reads it back.
"""

from __future__ import annotations

import html
import itertools
import math
import os
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from lapce_bridge.bench.report import Row

W, H = 520, 200  # plot size in SVG units
PAD_L, PAD_R, PAD_T, PAD_B = 56, 40, 10, 34
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")
VERDICT_COLOUR = {"goal": "#1a7f37", "seed": "#9a6700", "miss": "#cf222e", "info": "#6e7781"}


def machine_description() -> dict[str, str]:
    """What a reader needs to weigh the figures: CPU, cores, memory, OS, Python, load."""
    import psutil

    from lapce_bridge import __version__

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        import uvloop

        loop = f"uvloop {getattr(uvloop, '__version__', '?')}"
    except ImportError:  # pragma: no cover - uvloop is a dependency on POSIX
        loop = "asyncio"
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return {
        "CPU": cpu,
        "cores": f"{psutil.cpu_count()} logical, {psutil.cpu_count(logical=False)} physical",
        "memory": f"{psutil.virtual_memory().total / 2**30:.1f} GiB",
        "system": platform.platform(),
        "Python": f"{platform.python_implementation()} {sys.version.split()[0]}, {loop}",
        "lapce-bridge": __version__,
        "load average (1, 5, 15 min)": load,
        "date (UTC)": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
    }


def _fmt(v: float) -> str:
    if v >= 100:
        return f"{v:,.0f}"
    return f"{v:.2f}" if v < 10 else f"{v:.1f}"


def _log_axis(lo: float, hi: float) -> tuple[float, float]:
    lo = max(lo, 1e-3)
    hi = max(hi, lo * 1.01)
    return math.floor(math.log10(lo)), math.ceil(math.log10(hi))


def _x_scale(d0: float, d1: float) -> tuple[float, float]:
    """Decades d0..d1 onto the plot's x range: returns (offset, width per decade)."""
    return PAD_L, (W - PAD_L - PAD_R) / max(d1 - d0, 1)


def _x(value: float, d0: float, off: float, per: float) -> float:
    return off + (math.log10(max(value, 1e-3)) - d0) * per


def _decade_ticks(d0: float, d1: float, off: float, per: float, unit: str) -> list[str]:
    parts = []
    for d in range(int(d0), int(d1) + 1):
        x = off + (d - d0) * per
        parts.append(
            f'<line x1="{x:.1f}" y1="{PAD_T}" x2="{x:.1f}" y2="{H - PAD_B}" class="grid"/>'
            f'<text x="{x:.1f}" y="{H - PAD_B + 14}" class="tick" text-anchor="middle">'
            f"{_fmt(10.0**d)}</text>"
        )
    parts.append(
        f'<text x="{(W + PAD_L) / 2:.0f}" y="{H - 4}" class="axis" text-anchor="middle">'
        f"{html.escape(unit)} (log scale)</text>"
    )
    return parts


def histogram_svg(row: Row) -> str:
    """A histogram of a latency row: 1 % of the samples between successive percentiles."""
    dist = row.dist
    d0, d1 = _log_axis(min(dist), max(dist))
    off, per = _x_scale(d0, d1)
    bins = 40
    width = (d1 - d0) / bins
    mass = [0.0] * bins
    for a, b in itertools.pairwise(dist):  # each step holds 1 % of the samples
        la, lb = math.log10(max(a, 1e-3)), math.log10(max(b, 1e-3))
        if lb - la < 1e-12:
            mass[min(int((la - d0) / width), bins - 1)] += 1.0
            continue
        for i in range(bins):
            lo, hi = d0 + i * width, d0 + (i + 1) * width
            overlap = min(hi, lb) - max(lo, la)
            if overlap > 0:
                mass[i] += overlap / (lb - la)
    top = max(mass) or 1.0
    inner_h = H - PAD_T - PAD_B
    bars = []
    for i, m in enumerate(mass):
        if m <= 0:
            continue
        h = inner_h * m / top
        x = off + i * width * per
        bars.append(
            f'<rect class="data" x="{x:.1f}" y="{H - PAD_B - h:.1f}" '
            f'width="{max(width * per - 1, 1):.1f}" height="{h:.1f}"/>'
        )
    marks = []
    for label, value, cls in (("p50", row.p50, "p50"), ("p99", row.p99, "p99")):
        if value is not None and not math.isnan(value):
            x = _x(value, d0, off, per)
            marks.append(
                f'<line x1="{x:.1f}" y1="{PAD_T}" x2="{x:.1f}" y2="{H - PAD_B}" class="{cls}"/>'
                f'<text x="{x + 3:.1f}" y="{PAD_T + 10}" class="mark">{label}</text>'
            )
    for label, targets, cls in (("goal p99", row.goal, "goal"), ("seed p99", row.seed, "seed")):
        if len(targets) >= 2:
            x = _x(targets[1], d0, off, per)
            if PAD_L <= x <= W - PAD_R:
                marks.append(
                    f'<line x1="{x:.1f}" y1="{PAD_T}" x2="{x:.1f}" y2="{H - PAD_B}" '
                    f'class="{cls}"/><text x="{x + 3:.1f}" y="{PAD_T + 22}" class="mark">'
                    f"{label}</text>"
                )
    title = f"{row.name}: distribution of {row.samples} samples"
    return _svg(title, [*_decade_ticks(d0, d1, off, per, row.unit), *bars, *marks])


def cdf_svg(rows: Sequence[Row]) -> str:
    """Cumulative curves of several latency rows (ours and the baselines) on one axis."""
    lo = min(min(r.dist) for r in rows)
    hi = max(max(r.dist) for r in rows)
    d0, d1 = _log_axis(lo, hi)
    off, per = _x_scale(d0, d1)
    inner_h = H - PAD_T - PAD_B
    parts = _decade_ticks(d0, d1, off, per, rows[0].unit)
    for pct in (0, 50, 100):
        y = H - PAD_B - inner_h * pct / 100
        parts.append(
            f'<line x1="{PAD_L}" y1="{y:.1f}" x2="{W - PAD_R}" y2="{y:.1f}" class="grid"/>'
            f'<text x="{PAD_L - 4}" y="{y + 3:.1f}" class="tick" text-anchor="end">{pct} %</text>'
        )
    legend = []
    for i, row in enumerate(rows):
        colour = PALETTE[i % len(PALETTE)]
        points = " ".join(
            f"{_x(v, d0, off, per):.1f},{H - PAD_B - inner_h * q / 100:.1f}"
            for q, v in enumerate(row.dist)
        )
        dash = ' stroke-dasharray="5 3"' if row.name.startswith("baseline") else ""
        parts.append(
            f'<polyline class="data" fill="none" stroke="{colour}" stroke-width="1.8"{dash} '
            f'points="{points}"/>'
        )
        legend.append(
            f'<li><span class="swatch" style="background:{colour}"></span>'
            f"{html.escape(row.name)}: p50 {_fmt(row.p50 or 0)} {html.escape(row.unit)}</li>"
        )
    title = "cumulative distribution, ours and baselines"
    return _svg(title, parts) + f'<ul class="legend">{"".join(legend)}</ul>'


def figures_svg(rows: Sequence[Row]) -> str:
    """Single-figure rows as bars, each against its own seed (|) and goal (dashed |)."""
    row_h = 30
    height = PAD_T + row_h * len(rows) + 6
    label_w = 250
    bar_w = W + 200 - label_w - 90
    parts = []
    for i, row in enumerate(rows):
        value = row.value if row.value is not None and math.isfinite(row.value) else 0.0
        top = max(value, *row.seed, *row.goal, 1e-9) * 1.15
        y = PAD_T + i * row_h
        w = bar_w * value / top
        colour = VERDICT_COLOUR[row.verdict()]
        parts.append(
            f'<text x="{label_w - 6}" y="{y + 15}" class="tick" text-anchor="end">'
            f"{html.escape(row.name[:44])}</text>"
            f'<rect class="data" x="{label_w}" y="{y + 4}" width="{max(w, 1):.1f}" height="16" '
            f'style="fill:{colour}"/>'
            f'<text x="{label_w + max(w, 1) + 4:.1f}" y="{y + 16}" class="mark">'
            f"{html.escape(_fmt(row.value) if row.value is not None else '-')} "
            f"{html.escape(row.unit)}</text>"
        )
        for targets, cls in ((row.seed, "seed"), (row.goal, "goal")):
            if targets:
                x = label_w + bar_w * targets[0] / top
                parts.append(
                    f'<line x1="{x:.1f}" y1="{y + 1}" x2="{x:.1f}" y2="{y + 23}" class="{cls}"/>'
                )
    legend = (
        "<p class='note'>bar colour: the verdict; solid mark: the seed; dashed mark: the goal</p>"
    )
    return _svg("figures against seed and goal", parts, width=W + 200, height=height) + legend


def _svg(title: str, parts: Sequence[str], *, width: int = W, height: int = H) -> str:
    return (
        f'<svg class="plot" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        f'role="img" aria-label="{html.escape(title)}"><title>{html.escape(title)}</title>'
        + "".join(parts)
        + "</svg>"
    )


_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#1f2328;max-width:1200px}
h1{font-size:22px;margin:0 0 4px}
h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #d0d7de}
table{border-collapse:collapse;margin:8px 0}td,th{padding:3px 8px;border-bottom:1px solid #eaeef2;
text-align:right}td:first-child,th:first-child,th:nth-child(2),td.name{text-align:left}
.cards{display:flex;flex-wrap:wrap;gap:16px}.card{border:1px solid #d0d7de;border-radius:6px;
padding:8px}.card h3{font-size:13px;margin:0 0 4px;font-weight:600}
svg .grid{stroke:#eaeef2}
svg .tick{font-size:10px;fill:#57606a}svg .axis{font-size:11px;fill:#57606a}
svg rect.data{fill:#1f77b4}svg .p50{stroke:#0550ae;stroke-width:1.5}
svg .p99{stroke:#8250df;stroke-width:1.5}
svg .goal{stroke:#1a7f37;stroke-dasharray:4 2;stroke-width:2}
svg .seed{stroke:#9a6700;stroke-width:2}svg .mark{font-size:10px;fill:#1f2328}
.legend{list-style:none;padding:0;margin:4px 0;font-size:12px}
.swatch{display:inline-block;width:12px;height:3px;margin-right:6px;vertical-align:middle}
.verdict{font-weight:600}.note{color:#57606a;font-size:12px}#render-check{color:#57606a;font-size:12px}
"""

_CHECK_SCRIPT = """
(function(){
  var plots=document.querySelectorAll('svg.plot'),ok=0;
  plots.forEach(function(svg){
    var box=svg.getBoundingClientRect(),drawn=0;
    svg.querySelectorAll('.data').forEach(function(el){
      var b=el.getBBox(); if(b.width>0&&b.height>0){drawn++;}
    });
    if(box.width>0&&box.height>0&&drawn>0){ok++;}
  });
  var root=document.documentElement;
  root.setAttribute('data-plots-expected',String(plots.length));
  root.setAttribute('data-plots-rendered',String(ok));
  document.getElementById('render-check').textContent=
    ok+' of '+plots.length+' plots rendered in this browser';
})();
"""


def render_page(
    rows: Sequence[Row], *, title: str, label: str, machine: dict[str, str], explain: str
) -> str:
    out = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1><p>{html.escape(label)}</p>",
        f"<p class='note'>{html.escape(explain)}</p><p id='render-check'></p>",
        "<h2>Machine</h2><table>",
        *(f"<tr><td>{html.escape(k)}</td><td class='name'>{html.escape(v)}</td></tr>"
          for k, v in machine.items()),
        "</table><h2>All rows</h2>",
        _summary_table(rows),
    ]  # fmt: skip
    suites = list(dict.fromkeys(r.suite for r in rows))
    for suite in suites:
        in_suite = [r for r in rows if r.suite == suite]
        latency = [r for r in in_suite if r.is_latency and r.dist]
        figures = [r for r in in_suite if not r.is_latency]
        out.append(f"<h2>{html.escape(suite)}</h2>")
        if latency:
            out.append("<div class='cards'>")
            if any(r.name.startswith("baseline") for r in latency) or len(latency) > 1:
                out.append(f"<div class='card'><h3>side by side</h3>{cdf_svg(latency)}</div>")
            out.extend(
                f"<div class='card'><h3>{html.escape(row.name)}</h3>{histogram_svg(row)}</div>"
                for row in latency
            )
            out.append("</div>")
        if figures:
            out.append(f"<div class='card'>{figures_svg(figures)}</div>")
    out.append(f"<script>{_CHECK_SCRIPT}</script></body></html>")
    return "\n".join(out)


def _summary_table(rows: Sequence[Row]) -> str:
    head = "".join(
        f"<th>{c}</th>"
        for c in ("suite", "operation", "p50 / value", "p99", "p99.9", "unit", "seed", "goal",
                  "verdict")
    )  # fmt: skip
    body = []
    for row in rows:
        first = row.p50 if row.is_latency else row.value
        cells = [
            row.suite,
            row.name,
            _fmt(first) if first is not None else "-",
            _fmt(row.p99) if row.p99 is not None else "-",
            _fmt(row.p999) if row.p999 is not None else "-",
            row.unit,
            " / ".join(_fmt(v) for v in row.seed) or "-",
            " / ".join(_fmt(v) for v in row.goal) or "-",
        ]
        verdict = row.verdict()
        tds = "".join(
            f"<td{' class=name' if i == 1 else ''}>{html.escape(c)}</td>"
            for i, c in enumerate(cells)
        )
        body.append(
            f"<tr>{tds}<td class='verdict' style='color:{VERDICT_COLOUR[verdict]}'>"
            f"{verdict}</td></tr>"
        )
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def write_report(
    directory: Path,
    rows: Sequence[Row],
    *,
    title: str,
    label: str,
    explain: str,
    machine: dict[str, str] | None = None,
) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    page = directory / "index.html"
    page.write_text(
        render_page(
            rows,
            title=title,
            label=label,
            machine=machine if machine is not None else machine_description(),
            explain=explain,
        ),
        encoding="utf-8",
    )
    return page


__all__ = ["machine_description", "render_page", "write_report"]
