"""What the terminal host costs and what it buys: `echo test` with and without it, and the
recovery time of a killed server when terminals live in the host.

Two real servers run side by side, one with `--terminal-host on` and one with `off`; the
same client sends `echo test` to each in alternating blocks (so load on the shared machine
falls on both alike), and the rows give both distributions and the difference of their
medians (the goal: at most 100 us). `terminal/list` is timed the same way, in the same
blocks: it involves no shell, so its difference is the link's own round trip (two socket
hops, the host's dispatch), the part of the echo cost that is not the host doing the same
work as the server. Latency on a shared machine swings with its load; the CPU time the
bridge's processes spend per echo (all their threads, from `/proc/<pid>/task/*/schedstat`,
read around each block) does much less, so the host's extra CPU per echo is a row too: the
server and its host against the server alone. The restart rows SIGKILL a supervised server whose
terminals live in the host and time, from the kill, the first `ping` answered and the first
command answered correctly by a terminal created before the kill.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import statistics
import struct
import time
from pathlib import Path

from lapce_bridge.bench.ipc import server_process
from lapce_bridge.bench.report import Row, figure_row, latency_row
from lapce_bridge.bench.runner import BenchContext
from lapce_bridge.host.places import host_places
from lapce_bridge.host.places import stop_host as stop_host_of
from lapce_bridge.host.process import host_pid
from lapce_bridge.ipc.client import BridgeClient

SUITE = "host"
BLOCK = 50


class EchoRuns:
    """What `echo_both` measured: round trips (seconds) and CPU seconds per echo."""

    def __init__(self) -> None:
        self.hosted: list[float] = []
        self.local: list[float] = []
        self.listed_hosted: list[float] = []
        self.listed_local: list[float] = []
        self.cpu_server_on = 0.0  # the server with the host, over all its echo blocks
        self.cpu_host = 0.0
        self.cpu_server_off = 0.0

    def per_echo_us(self, seconds: float) -> float:
        return seconds / len(self.hosted) * 1e6


def cpu_seconds(pid: int) -> float:
    """CPU time of all of `pid`'s threads so far (ns resolution, unlike /proc/pid/stat's
    ticks); 0 once it is gone."""
    total = 0
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{task}/schedstat") as f:
                total += int(f.read().split()[0])
    return total / 1e9


def peer_pid(sock: Path) -> int:
    """The pid of the process serving the Unix socket `sock` (SO_PEERCRED)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(str(sock))
        pid, _, _ = struct.unpack("3i", s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
    return int(pid)


async def echo_both(ctx: BenchContext) -> EchoRuns:
    """`echo test` round trips through a server with the host, and one without, with the
    CPU time the bridge's processes spent on them; then the same round trips for
    `terminal/list` (no shell involved: what is left is the link's own cost)."""
    runs = EchoRuns()
    on = ("--terminal-host", "on", "--shell", "bash")
    off = ("--terminal-host", "off", "--shell", "bash")
    async with (
        server_process(ctx.workdir, "host-on", *on) as sock_on,
        server_process(ctx.workdir, "host-off", *off) as sock_off,
        BridgeClient(sock_on, request_timeout=120) as with_host,
        BridgeClient(sock_off, request_timeout=120) as without,
    ):
        for client in (with_host, without):
            for _ in range(20):  # the default terminal, and a warm path
                await client.request("terminal/execute", {"command": "echo test"})
        base = ctx.workdir / "host-on"
        host = host_pid(host_places(base / "state", base / "workspace"))
        if host is None:
            raise RuntimeError("the server with --terminal-host on runs no terminal host")
        server_on, server_off = peer_pid(sock_on), peer_pid(sock_off)
        total = ctx.n(1000, 60)
        echo: tuple[str, dict[str, object]] = ("terminal/execute", {"command": "echo test"})
        listing: tuple[str, dict[str, object]] = ("terminal/list", {})
        while len(runs.hosted) < total:
            for client, samples, listed, pids in (
                (with_host, runs.hosted, runs.listed_hosted, (server_on, host)),
                (without, runs.local, runs.listed_local, (server_off,)),
            ):
                before = [cpu_seconds(pid) for pid in pids]
                await _block(client, echo, samples)
                spent = [cpu_seconds(pid) - b for pid, b in zip(pids, before, strict=True)]
                await _block(client, listing, listed)
                if len(spent) == 2:
                    runs.cpu_server_on += spent[0]
                    runs.cpu_host += spent[1]
                else:
                    runs.cpu_server_off += spent[0]
    await stop_host(ctx.workdir / "host-on")
    return runs


async def _block(
    client: BridgeClient, request: tuple[str, dict[str, object]], into: list[float]
) -> None:
    method, params = request
    for _ in range(BLOCK):
        started = time.perf_counter()
        await client.request(method, params)
        into.append(time.perf_counter() - started)


async def stop_host(base: Path) -> None:
    """The host outlives its server on purpose; the bench leaves none behind."""
    await stop_host_of(base / "state", base / "workspace")


async def restart_rto(workdir: Path, rounds: int) -> tuple[list[float], list[float]]:
    """Seconds from a server's SIGKILL to a ping answered, and to a terminal made before
    the kill answering a command. Each kill comes once the supervisor's warm standby has
    loaded (its steady state: a server that has run for a second)."""
    base = workdir / "host-rto"
    workspace = base / "workspace"
    workspace.mkdir(parents=True, exist_ok=True)
    args: tuple[str, ...] = ("--state-dir", str(base / "state"), "--workspace", str(workspace))
    args = (*args, "--terminal-host", "on", "--shell", "bash")
    client = await BridgeClient.spawn(
        base / "bridge.sock", server_args=args, max_crashes=rounds + 2
    )
    answering: list[float] = []
    usable: list[float] = []
    try:
        made = await client.send_with_recovery("terminal/create", {})
        tid = made["terminalId"]
        for i in range(rounds):
            await client.send_with_recovery(
                "terminal/execute", {"terminalId": tid, "command": "true"}
            )
            sup = client.supervisor
            assert sup is not None
            assert sup.process is not None
            if not await sup.standby_ready():
                raise RuntimeError("the supervisor's standby did not load")
            killed = time.perf_counter()
            os.kill(sup.process.pid, signal.SIGKILL)

            async def pinged(killed: float = killed) -> float:
                await client.send_with_recovery("ping")
                return time.perf_counter() - killed

            async def commanded(n: int = i, killed: float = killed) -> float:
                answer = await client.send_with_recovery(
                    "terminal/execute", {"terminalId": tid, "command": f"echo round-{n}"}
                )
                if answer.get("output") != f"round-{n}\n":
                    raise RuntimeError(f"the terminal answered {answer.get('output')!r}")
                return time.perf_counter() - killed

            first, second = await asyncio.gather(pinged(), commanded())
            answering.append(first)
            usable.append(second)
    finally:
        await client.close()
        await stop_host(base)
    return answering, usable


async def run(ctx: BenchContext) -> list[Row]:
    runs = await echo_both(ctx)
    hosted, local = runs.hosted, runs.local
    listed_on = statistics.median(runs.listed_hosted)
    listed_off = statistics.median(runs.listed_local)
    server_on = runs.per_echo_us(runs.cpu_server_on)
    host_cpu = runs.per_echo_us(runs.cpu_host)
    server_off = runs.per_echo_us(runs.cpu_server_off)
    with_host = latency_row(
        SUITE,
        "echo test through IPC, terminals in the host process",
        hosted,
        seed=(1000, 10000, 100000),
        note="server --terminal-host on; alternating blocks with the next row",
    )
    without = latency_row(
        SUITE,
        "echo test through IPC, terminals in the server process",
        local,
        seed=(1000, 10000, 100000),
        note="server --terminal-host off, in the same run",
    )
    assert with_host.p50 is not None
    assert without.p50 is not None
    rows = [
        with_host,
        without,
        figure_row(
            SUITE,
            "terminal host's cost, echo test p50",
            with_host.p50 - without.p50,  # the two rows' own p50s (nearest rank)
            "us",
            higher_is_better=False,
            goal=100,
            samples=len(hosted),
            note="p50 with the host minus p50 without, measured in the same run",
        ),
        figure_row(
            SUITE,
            "terminal host's link, terminal/list p50",
            (listed_on - listed_off) * 1e6,
            "us",
            higher_is_better=False,
            samples=len(runs.listed_hosted),
            extra={"host_us": listed_on * 1e6, "server_us": listed_off * 1e6},
            note=f"{listed_on * 1e6:,.0f} us with the host, {listed_off * 1e6:,.0f} us without "
            "(same run): one round trip to the host, no shell",
        ),
        figure_row(
            SUITE,
            "terminal host's CPU per echo test",
            server_on + host_cpu - server_off,
            "us",
            higher_is_better=False,
            samples=len(hosted),
            extra={"server_us": server_on, "host_us": host_cpu, "alone_us": server_off},
            note=f"server {server_on:,.0f} + host {host_cpu:,.0f} us of CPU per echo, against "
            f"{server_off:,.0f} us for the server alone (same blocks; the shell's aside)",
        ),
    ]
    answering, usable = await restart_rto(ctx.workdir, 3 if ctx.quick else 5)
    rows.append(
        figure_row(
            SUITE,
            "server SIGKILL to answering again (terminals in the host)",
            statistics.median(answering) * 1e3,
            "ms",
            higher_is_better=False,
            seed=5000,
            goal=200,
            samples=len(answering),
            extra={"max_ms": max(answering) * 1e3},
            note="kill to the first ping answered; includes the supervisor noticing the death "
            "and its warm standby taking over",
        )
    )
    rows.append(
        figure_row(
            SUITE,
            "server SIGKILL to its terminals usable (terminals in the host)",
            statistics.median(usable) * 1e3,
            "ms",
            higher_is_better=False,
            seed=5000,
            goal=200,
            samples=len(usable),
            extra={"max_ms": max(usable) * 1e3},
            note="kill to a command answered by a terminal made before the kill (same id)",
        )
    )
    return rows


__all__ = ["run"]
