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
from lapce_bridge.bench.runner import new_loop, render, run_label
from lapce_bridge.chaos.scenario import ChaosContext, ChaosResult

SCENARIOS: dict[str, str] = {
    "shell-killed": "lapce_bridge.chaos.terminal",
    "ipc-restart": "lapce_bridge.chaos.ipc",
    "parser-garbage": "lapce_bridge.chaos.parser",
    "memory-pressure": "lapce_bridge.chaos.memory",
    "fs-transient": "lapce_bridge.chaos.fs",
}

Scenario = Callable[[ChaosContext], Awaitable[ChaosResult]]


def load(name: str) -> Scenario | None:
    try:
        module = importlib.import_module(SCENARIOS[name])
    except ImportError:
        return None
    fn: Scenario = module.run
    return fn


def run_scenarios(names: list[str], ctx: ChaosContext) -> list[ChaosResult]:
    results: list[ChaosResult] = []
    for name in names:
        scenario = load(name)
        if scenario is None:
            click.echo(f"skipping {name}: not available in this build", err=True)
            continue
        loop = new_loop()
        try:
            results.append(loop.run_until_complete(scenario(ctx)))
        finally:
            loop.close()
    return results


@click.command("chaos")
@click.option("--only", default="", help="Comma-separated scenarios: " + ", ".join(SCENARIOS))
@click.option("--quick", is_flag=True, help="One round each: a smoke test.")
@click.option("--shells", default="bash", show_default=True)
@click.option("--json", "as_json", is_flag=True)
def chaos(only: str, quick: bool, shells: str, as_json: bool) -> None:
    """Inject real faults and measure recovery time (RTO) and loss (RPO)."""
    names = [n.strip() for n in only.split(",") if n.strip()] or list(SCENARIOS)
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        raise click.BadParameter(f"unknown scenario(s): {', '.join(unknown)}", param_hint="--only")
    with tempfile.TemporaryDirectory(prefix="lapce-chaos-") as tmp:
        ctx = ChaosContext(Path(tmp), quick, tuple(s for s in shells.split(",") if s))
        results = run_scenarios(names, ctx)
    rows: list[Row] = [row for result in results for row in result.rows()]
    if as_json:
        for result, pair in zip(results, (r.rows() for r in results), strict=True):
            for row in pair:
                sys.stdout.write(orjson.dumps({**row.to_json(), "ok": result.ok}).decode() + "\n")
    else:
        render(rows, run_label(1, quick), title="lapce-bridge chaos")
    if not all(r.ok for r in results):
        sys.exit(1)
