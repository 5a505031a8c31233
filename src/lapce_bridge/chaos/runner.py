"""Runs the chaos scenarios and prints their recovery figures as benchmark rows."""

from __future__ import annotations

import importlib
import sys
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path

import click
import orjson

from lapce_bridge.bench.report import Row
from lapce_bridge.bench.runner import ProgressBar, finish, new_loop, render
from lapce_bridge.chaos.scenario import ChaosContext, ChaosResult

SCENARIOS: dict[str, str] = {
    "shell-killed": "lapce_bridge.chaos.terminal:run_shell_killed",
    "integration-broken": "lapce_bridge.chaos.terminal:run_integration_broken",
    "user-exits": "lapce_bridge.chaos.terminal:run_user_exits",
    "deaf-shells": "lapce_bridge.chaos.terminal:run_deaf_shells",
    "server-restart": "lapce_bridge.chaos.server:run",
    "memory-pressure": "lapce_bridge.chaos.memory:run",
    "fs-transient": "lapce_bridge.chaos.fs:run_transient",
    "fs-permanent": "lapce_bridge.chaos.fs:run_permanent",
    "fs-watched-folder": "lapce_bridge.chaos.fs:run_watched_folder",
    "client-stops-reading": "lapce_bridge.chaos.clients:run_stalled_reader",
    "socket-severed": "lapce_bridge.chaos.clients:run_severed",
    "1000-clients": "lapce_bridge.chaos.clients:run_many_clients",
    "100-terminals": "lapce_bridge.chaos.scale:run",
    "parser-garbage": "lapce_bridge.chaos.parser:run",
}

Scenario = Callable[[ChaosContext], Awaitable[ChaosResult | list[ChaosResult]]]


def load(name: str) -> Scenario | None:
    module_name, _, attr = SCENARIOS[name].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        return None
    fn: Scenario = getattr(module, attr)
    return fn


def run_scenarios(
    names: list[str], ctx: ChaosContext, progress: Callable[[str], None] | None = None
) -> list[ChaosResult]:
    results: list[ChaosResult] = []
    for name in names:
        scenario = load(name)
        if scenario is None:
            click.echo(f"skipping {name}: not available in this build", err=True)
            continue
        loop = new_loop()
        try:
            outcome = loop.run_until_complete(scenario(ctx))
        finally:
            loop.close()
        results.extend(outcome if isinstance(outcome, list) else [outcome])
        if progress is not None:
            progress(name)
    return results


@click.command("chaos")
@click.option("--only", default="", help="Comma-separated scenarios: " + ", ".join(SCENARIOS))
@click.option("--quick", is_flag=True, help="Few rounds each: a smoke test, not figures to quote.")
@click.option("--shells", default="bash,zsh,fish", show_default=True)
@click.option("--seed", type=int, default=14, show_default=True, help="Seeds every random choice.")
@click.option("--json", "as_json", is_flag=True)
@click.option(
    "--report",
    "report_dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Write a self-contained HTML page to DIR/index.html.",
)
def chaos(
    only: str, quick: bool, shells: str, seed: int, as_json: bool, report_dir: Path | None
) -> None:
    """Inject real faults into a real server; measure recovery (RTO) and count loss (RPO).

    Exits with status 1 when a scenario misses its goal or loses anything.
    """
    names = [n.strip() for n in only.split(",") if n.strip()] or list(SCENARIOS)
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        raise click.BadParameter(f"unknown scenario(s): {', '.join(unknown)}", param_hint="--only")
    rounds = "quick smoke test: few rounds; not figures to quote" if quick else "full rounds"
    label = f"{rounds}; RTO is the median over a scenario's rounds; seed {seed}"
    # fish's first interactive start in a fresh HOME leaves a man-page parser running in the
    # background (disowned), still writing there when the rounds end: what it leaves behind
    # must not turn the figures into a traceback.
    with tempfile.TemporaryDirectory(prefix="lapce-chaos-", ignore_cleanup_errors=True) as tmp:
        ctx = ChaosContext(Path(tmp), quick, tuple(s for s in shells.split(",") if s), seed)
        with ProgressBar(len(names), "chaos") as bar:
            results = run_scenarios(names, ctx, bar)
    rows: list[Row] = [row for result in results for row in result.rows()]
    if as_json:
        for result in results:
            for row in result.rows():
                sys.stdout.write(orjson.dumps({**row.to_json(), "ok": result.ok}).decode() + "\n")
    else:
        render(rows, label, title="lapce-bridge chaos")
    finish(rows, "lapce-bridge chaos", label, check=None, report_dir=report_dir)
    failed = [r.scenario for r in results if not r.ok]
    if failed:
        click.echo(f"missed: {', '.join(failed)}", err=True)
        sys.exit(1)
