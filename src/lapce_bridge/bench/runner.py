"""Runs the benchmark suites, repeats them, and prints medians against BENCHMARKS.md.

A suite is a module with `async def run(ctx: BenchContext) -> list[Row]`. Each repetition
runs every selected suite once on a fresh event loop (uvloop when installed, as the server
uses); the report holds the median of each figure across repetitions, since a 2-core shared
machine is noisy and one run proves little.
"""

from __future__ import annotations

import asyncio
import importlib
import math
import sys
import tempfile
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import orjson

from lapce_bridge.bench.report import Row, median_rows

SUITES: dict[str, str] = {
    "kernel": "lapce_bridge.bench.kernel",
    "parser": "lapce_bridge.bench.parser",
    "terminal": "lapce_bridge.bench.terminal",
    "fs": "lapce_bridge.bench.fs",
    "ipc": "lapce_bridge.bench.ipc",
    "host": "lapce_bridge.bench.host",
    "startup": "lapce_bridge.bench.startup",
    "mcp": "lapce_bridge.bench.mcp",
}


@dataclass(frozen=True, slots=True)
class BenchContext:
    workdir: Path
    quick: bool = False  # fewer samples: for smoke tests, not for quoting figures
    baselines: bool = False
    shells: tuple[str, ...] = ("bash", "zsh", "fish")

    def n(self, full: int, quick: int | None = None) -> int:
        """How many samples to take: `full`, or far fewer in quick mode."""
        return (quick if quick is not None else max(1, full // 20)) if self.quick else full


SuiteFn = Callable[[BenchContext], Awaitable[list[Row]]]


def load_suite(name: str) -> SuiteFn:
    module = importlib.import_module(SUITES[name])
    fn: SuiteFn = module.run
    return fn


def new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop

        loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    except ImportError:  # pragma: no cover - uvloop is a dependency on POSIX
        loop = asyncio.new_event_loop()
    return loop


def failed_suite_row(name: str, exc: BaseException) -> Row:
    """A row that misses whatever is asked of it: the suite raised before giving its rows."""
    return Row(
        name,
        f"suite failed: {type(exc).__name__}: {exc}"[:120],
        "",
        value=math.nan,
        seed=(0.0,),
        note="the suite raised; its rows are missing from this run",
    )


def run_suites(
    names: Sequence[str], ctx: BenchContext, repeat: int, progress: Callable[[str], None]
) -> list[Row]:
    runs: list[list[Row]] = []
    for i in range(repeat):
        rows: list[Row] = []
        for name in names:
            progress(f"run {i + 1}/{repeat}: {name}")
            suite = load_suite(name)
            loop = new_loop()
            try:
                rows.extend(loop.run_until_complete(suite(ctx)))
            except Exception as exc:  # one broken suite is a miss, not the end of the run
                rows.append(failed_suite_row(name, exc))
            finally:
                loop.close()
        runs.append(rows)
    return median_rows(runs)


def _fmt(v: float | None) -> str:
    if v is None:
        return "-"
    if v >= 100:
        return f"{v:,.0f}"
    return f"{v:.2f}" if v < 10 else f"{v:.1f}"


# What the target columns mean, printed under every table and on the report page.
TARGETS_EXPLAINED = (
    "seed: the specification's target, the minimum a row must reach; goal: ours, set ahead of "
    "it (BENCHMARKS.md). Latency targets are p50 / p99 / p99.9 (the goal names no p99.9). "
    "verdict: goal (goal and seed met), seed (seed met), miss (seed missed), info (no target). "
    "--check fails on a row that misses its goal (--check=seed: its seed)."
)


def run_label(repeat: int, quick: bool) -> str:
    """What the figures are: quick runs are smoke tests, not figures to quote."""
    runs = f"{repeat} run{'s' if repeat > 1 else ''}"
    if quick:
        return f"quick smoke test: few samples, median of {runs}; not figures to quote"
    return f"median of {runs}"


def render(rows: Sequence[Row], label: str, title: str = "lapce-bridge bench") -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(Console().width, 132))
    table = Table(title=f"{title} ({label})", caption=TARGETS_EXPLAINED, caption_justify="left")
    for col in ("suite", "operation", "p50 / value", "p99", "p99.9", "unit", "seed", "goal"):
        table.add_column(col, justify="left" if col in ("suite", "operation") else "right")
    table.add_column("verdict")
    colours = {"goal": "green", "seed": "yellow", "miss": "red", "info": "dim"}
    notes: list[str] = []
    for row in rows:
        verdict = row.verdict()
        first = row.p50 if row.is_latency else row.value
        name = row.name
        if row.note:
            notes.append(row.note)
            name += f" [{len(notes)}]"
        table.add_row(
            row.suite,
            name,
            _fmt(first),
            _fmt(row.p99),
            _fmt(row.p999),
            row.unit,
            " / ".join(_fmt(v) for v in row.seed) or "-",
            " / ".join(_fmt(v) for v in row.goal) or "-",
            f"[{colours[verdict]}]{verdict}[/]",
        )
    console.print(table)
    for i, note in enumerate(notes, 1):
        console.print(f"[dim][{i}] {note}[/dim]", highlight=False)


def misses(rows: Sequence[Row], against: str = "goal") -> list[Row]:
    """Rows that miss their seed, or (against "goal") a goal they have."""
    out = []
    for row in rows:
        verdict = row.verdict()
        if verdict == "miss" or (against == "goal" and verdict == "seed" and row.goal):
            out.append(row)
    return out


class ProgressBar:
    """A rich progress bar on stderr, advanced once per suite run (the callback of run_suites)."""

    def __init__(self, total: int, description: str) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=Console(stderr=True),
            transient=True,
        )
        self._task = self._progress.add_task(description, total=total)
        self._started = 0

    def __enter__(self) -> ProgressBar:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def __call__(self, message: str) -> None:
        # Called as each step starts: the steps before it are done.
        self._progress.update(self._task, completed=self._started, description=message)
        self._started += 1


@click.command("bench")
@click.option("--only", default="", help="Comma-separated suites: " + ", ".join(SUITES))
@click.option("--repeat", type=click.IntRange(1, 50), default=3, show_default=True)
@click.option("--quick", is_flag=True, help="Few samples; a smoke test, not figures to quote.")
@click.option("--baselines", is_flag=True, help="Also time subprocess.run and a bare PTY shell.")
@click.option("--shells", default="bash,zsh,fish", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print rows as JSON lines.")
@click.option(
    "--check",
    type=click.Choice(["goal", "seed"]),
    is_flag=False,
    flag_value="goal",
    default=None,
    help="Exit with status 1 when a row misses its goal (--check=seed: its seed).",
)
@click.option(
    "--report",
    "report_dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Write a self-contained HTML page with distribution plots to DIR/index.html.",
)
def bench(
    only: str,
    repeat: int,
    quick: bool,
    baselines: bool,
    shells: str,
    as_json: bool,
    check: str | None,
    report_dir: Path | None,
) -> None:
    """Measure the figures of BENCHMARKS.md on this machine, with verdicts."""
    names = [n.strip() for n in only.split(",") if n.strip()] or list(SUITES)
    unknown = [n for n in names if n not in SUITES]
    if unknown:
        raise click.BadParameter(f"unknown suite(s): {', '.join(unknown)}", param_hint="--only")
    available = [n for n in names if _importable(n)]
    missing = sorted(set(names) - set(available))
    if missing:
        click.echo(f"skipping suites not built yet: {', '.join(missing)}", err=True)
    label = run_label(repeat, quick)
    with tempfile.TemporaryDirectory(prefix="lapce-bench-") as tmp:
        ctx = BenchContext(Path(tmp), quick, baselines, tuple(s for s in shells.split(",") if s))
        with ProgressBar(repeat * len(available), "bench") as bar:
            rows = run_suites(available, ctx, repeat, bar)
    if as_json:
        for row in rows:
            sys.stdout.write(orjson.dumps(row.to_json()).decode() + "\n")
    else:
        render(rows, label)
    finish(rows, "lapce-bridge bench", label, check=check, report_dir=report_dir)


def finish(
    rows: Sequence[Row], title: str, label: str, *, check: str | None, report_dir: Path | None
) -> None:
    """Write the HTML report if asked; with `check` ("goal" or "seed"), exit 1 naming each
    row that missed that target."""
    if report_dir is not None:
        from lapce_bridge.bench.html import write_report

        page = write_report(report_dir, rows, title=title, label=label, explain=TARGETS_EXPLAINED)
        click.echo(f"report: {page}", err=True)
    missed = misses(rows, check or "goal")
    if check and missed:
        for row in missed:
            target = "seed" if row.verdict() == "miss" else "goal"
            click.echo(f"missed: {row.suite}: {row.name} (its {target})", err=True)
        sys.exit(1)


def _importable(name: str) -> bool:
    try:
        load_suite(name)
    except (ImportError, AttributeError):
        return False
    return True


def rows_as_dicts(rows: Sequence[Row]) -> list[dict[str, Any]]:
    return [r.to_json() for r in rows]


__all__ = [
    "SUITES",
    "TARGETS_EXPLAINED",
    "BenchContext",
    "bench",
    "finish",
    "run_label",
    "run_suites",
]
