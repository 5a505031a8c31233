"""`lapce-bridge health [--socket PATH] [--watch] [--json]`: a running server, seen from a shell.

It connects to the server's socket (the default one, or `--socket`), asks `health/get` once,
and prints a rich view: the status, pressure and its parts, quality and features, breakers,
each operation against its target (p50/p99, failure rate), the specification's SLOs with
their budgets and burn rates, active alerts and recent incidents. `--json` prints the report
as it came (one JSON object; with `--watch`, one a line). `--watch` redraws every `--interval`
seconds until interrupted. Exit status: 0 healthy, 1 degraded, 2 unhealthy, 3 when no server
answers.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import click
import orjson
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from lapce_bridge.ipc.paths import default_socket_path
from lapce_bridge.ipc.raw import RawClient

STATUS_EXIT = {"healthy": 0, "degraded": 1, "unhealthy": 2}
NO_SERVER = 3
_COLOURS = {"healthy": "green", "degraded": "yellow", "unhealthy": "red"}


async def fetch(socket: Path, within: float = 5.0) -> dict[str, Any]:
    """One `health/get` answer from the server on `socket`."""
    async with asyncio.timeout(within):
        client = await RawClient.connect_unix(socket)
        try:
            answer = await client.request("health/get")
        finally:
            await client.close()
    if "error" in answer:
        raise click.ClickException(f"health/get failed: {answer['error'].get('message')}")
    report: dict[str, Any] = answer["result"]
    return report


def _us(value: float | None) -> str:
    if value is None:
        return "-"
    if value >= 1e6:
        return f"{value / 1e6:.2f} s"
    if value >= 1e3:
        return f"{value / 1e3:.2f} ms"
    return f"{value:.0f} us"


def _mib(value: float | None) -> str:
    return "-" if value is None else f"{value / (1 << 20):.1f} MiB"


def _yes(ok: bool) -> Text:
    return Text("met", style="green") if ok else Text("MISSED", style="bold red")


def view(report: dict[str, Any]) -> Group:
    """The report as rich tables (pure: the tests render it to text)."""
    status = report.get("status", "?")
    res = report.get("resources") or {}
    head = Text.assemble(
        ("status ", "bold"),
        (status, f"bold {_COLOURS.get(status, 'white')}"),
        f"   quality {report.get('qualityLevel')}/3",
        f"   pressure {report.get('pressure', 0):.0f}/100",
        f" ({res.get('band', '-')}, admission {res.get('admission', '-')})" if res else "",
    )
    parts = []
    if res:
        parts.append(
            Text(
                f"memory {_mib(res.get('ownedBytes'))} of {_mib(res.get('budgetBytes'))} budget"
                f"; container {_mib(res.get('cgroupBytes'))} of {_mib(res.get('cgroupLimitBytes'))}"
                f"; machine {res.get('machineAvailablePercent', 0):.0f} % available"
                f"; CPU {res.get('cpuPercent', 0):.0f} %"
                + (" (overloaded)" if res.get("cpuOverloaded") else "")
                + f"; refused {res.get('refused', 0)}"
            )
        )
    features = report.get("features") or {}
    if features:
        on = ", ".join(f"{k} {'on' if v else 'OFF'}" for k, v in sorted(features.items()))
        parts.append(Text(f"features: {on}"))
    breakers = report.get("breakers") or {}
    if breakers:
        parts.append(Text("breakers: " + ", ".join(f"{k} {v}" for k, v in breakers.items())))

    ops = Table(title="operations (last minute)", title_justify="left")
    for column in ("operation", "calls", "p50", "p99", "target p99", "failure rate"):
        ops.add_column(column, justify="left" if column == "operation" else "right")
    for name, op in sorted((report.get("operations") or {}).items()):
        target = op.get("targetP99Us")
        p99 = op.get("p99Us", 0.0)
        style = "red" if target is not None and p99 > 2 * target else ""
        ops.add_row(
            name,
            str(op.get("calls", "-")),
            _us(op.get("p50Us")),
            Text(_us(p99), style=style),
            _us(target),
            f"{op.get('failureRate', 0.0):.1%}",
        )

    slo_table = Table(title="SLOs", title_justify="left")
    for column in ("objective", "window", "value", "target", "budget / burn", ""):
        slo_table.add_column(column)
    slos = report.get("slos") or {}
    if slos:
        a, e = slos["availability"], slos["errorRate"]
        lat, rec, loss = slos["latencyP99"], slos["recoveryTime"], slos["dataLoss"]
        slo_table.add_row(
            "availability", a["window"], f"{a['value']:.4%}", f">= {a['target']:.1%}",
            f"{a['budgetRemaining']:.0%} left; burn 1h {a['burnRate1h']:.1f}x, "
            f"6h {a['burnRate6h']:.1f}x, 24h {a['burnRate24h']:.1f}x",
            _yes(a["met"]),
        )  # fmt: skip
        slo_table.add_row(
            "error rate", e["window"], f"{e['value']:.3%}", f"<= {e['target']:.1%}",
            f"{e['failures']} of {e['calls']} calls", _yes(e["met"]),
        )  # fmt: skip
        slo_table.add_row(
            "p99 latency", lat["window"], f"{lat['slower']} of {lat['calls']} over",
            f"< {lat['targetMs']:.0f} ms", "", _yes(lat["met"]),
        )  # fmt: skip
        slo_table.add_row(
            "recovery time", rec["window"], f"worst {rec['worstMs']:.0f} ms",
            f"< {rec['targetMs'] / 1000:.0f} s", f"{rec['slower']} of {rec['incidents']} slower",
            _yes(rec["met"]),
        )  # fmt: skip
        slo_table.add_row(
            "data loss", loss["window"], f"{loss['items']} items", "0", "", _yes(loss["met"])
        )

    alerts = report.get("alerts") or []
    alert_lines = [
        Text(f"ALERT {a.get('kind')} {a.get('operation')}: {a.get('detail')}", style="red")
        for a in alerts
    ] or [Text("no active alerts", style="green")]
    incidents = report.get("incidents") or {}
    incident_table = Table(title="recent incidents", title_justify="left")
    for column in ("kind", "subject", "ended", "duration", "outcome", "detail"):
        incident_table.add_column(column)
    for i in reversed(incidents.get("recent") or []):
        incident_table.add_row(
            i["kind"],
            i["subject"],
            f"{i['ended']:.1f}",
            f"{i['durationMs']:.0f} ms",
            "recovered" if i["recovered"] else "not recovered",
            i.get("detail") or "",
        )
    for i in incidents.get("open") or []:
        incident_table.add_row(i["kind"], i["subject"], "open", "-", "ongoing", i["detail"])
    return Group(head, *parts, ops, slo_table, *alert_lines, incident_table)


@click.command("health")
@click.option(
    "--socket",
    "socket_path",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="The server's socket (default: $XDG_RUNTIME_DIR/lapce-bridge/bridge.sock).",
)
@click.option("--watch", is_flag=True, help="Redraw until interrupted.")
@click.option("--json", "as_json", is_flag=True, help="Print the health/get report as JSON.")
@click.option(
    "--interval", type=click.FloatRange(min=0.1), default=2.0, show_default=True,
    help="Seconds between redraws with --watch.",
)  # fmt: skip
def health_command(socket_path: Path | None, watch: bool, as_json: bool, interval: float) -> None:
    """Show a running server's health: operations, SLOs, pressure, alerts, incidents."""
    socket = socket_path or default_socket_path()
    console = Console()

    def get() -> dict[str, Any]:
        try:
            return asyncio.run(fetch(socket))
        except (OSError, TimeoutError) as exc:
            click.echo(f"lapce-bridge health: no server answers on {socket}: {exc}", err=True)
            raise SystemExit(NO_SERVER) from exc

    report = get()
    if not watch:
        if as_json:
            click.echo(orjson.dumps(report).decode())
        else:
            console.print(view(report))
        raise SystemExit(STATUS_EXIT.get(report.get("status", ""), 1))
    try:
        if as_json:
            while True:
                click.echo(orjson.dumps(report).decode())
                time.sleep(interval)
                report = get()
        with Live(view(report), console=console, auto_refresh=False) as live:
            while True:
                time.sleep(interval)
                report = get()
                live.update(view(report), refresh=True)
    except KeyboardInterrupt:
        raise SystemExit(STATUS_EXIT.get(report.get("status", ""), 1)) from None


__all__ = ["health_command", "view"]
