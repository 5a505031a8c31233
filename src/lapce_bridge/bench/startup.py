"""Start-up: a fresh `lapce-bridge serve` process to its first `ping` answered.

Measured against, in the same run, a bare `python3 -c "import asyncio"` on the same
interpreter (the floor any asyncio server pays). Both are timed from the moment the process
is spawned; the server's time ends when its `ping` answer is read from the socket, so it
includes the interpreter, our imports, the services starting and the socket bound. The goal
(BENCHMARKS.md) is at most 100 ms more than the bare interpreter. The two are run
alternately so that load on the machine falls on both alike.

The server answers `initialize` and `ping` before its services are open (they open behind
the listener); a second row times the same start to an `fs/stat` answered, which waits for
the file service, the last to open: what an editor's first file request waits for. Both are
measured with the package's bytecode
compiled first, as an install leaves it (the standard library's always is): otherwise, with
`PYTHONDONTWRITEBYTECODE` set, every start would compile our modules from source.

The restart rows say where a restart's time goes, step by step: a server with its terminals
in the host is killed (SIGKILL) and a new one spawned at once (what a supervisor does when it
sees the death), and, from the kill, the time to its socket accepting a connection, to
`initialize` answered, to `ping` answered, and to a terminal made before the kill answering
a command (same id). The same steps are timed again with the new server a warm standby
(`serve --standby`, loaded before the kill and told to serve after it, as `BridgeClient`'s
supervisor does): the two sets side by side say what the interpreter's start and the imports
cost a restart. The supervisor's own part (noticing the death) is in the `host` suite's
restart rows, which go through `BridgeClient`'s supervisor.
"""

from __future__ import annotations

import asyncio
import compileall
import os
import resource
import signal
import statistics
import sys
import time
from pathlib import Path

from lapce_bridge.bench.report import Row, figure_row
from lapce_bridge.bench.runner import BenchContext
from lapce_bridge.ipc.raw import RawClient
from lapce_bridge.ipc.standby import GO, READY

SUITE = "startup"
GOAL_MS = 100.0


def _children_cpu() -> float:
    """CPU seconds (user and system) of the children waited for so far."""
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    return used.ru_utime + used.ru_stime


async def _bare() -> float:
    started = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", "import asyncio")
    await proc.wait()
    return time.perf_counter() - started


async def _serve(workdir: Path, i: int) -> tuple[float, float]:
    """Seconds from the spawn to `ping` answered, and to `fs/stat` answered."""
    root = workdir / f"startup-{i}"
    (root / "ws").mkdir(parents=True, exist_ok=True)
    sock = root / "bridge.sock"
    env = dict(os.environ)
    started = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "lapce_bridge", "serve", "--socket", str(sock),
        "--state-dir", str(root / "state"), "--workspace", str(root / "ws"),
        stderr=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        ready = await asyncio.wait_for(proc.stderr.readline(), 60)
        if b"listening" not in ready:
            raise RuntimeError(f"the server did not start: {ready!r}")
        client = await RawClient.connect_unix(sock)
        try:
            answer = await client.request("ping")
            pinged = time.perf_counter() - started
            hello = await client.request("initialize", {"protocolVersion": 1})
            stat = await client.request("fs/stat", {"path": "."})
            opened = time.perf_counter() - started
        finally:
            await client.close()
        if answer.get("result") != {"pong": True}:
            raise RuntimeError(f"ping answered {answer!r}")
        if "terminal/execute" not in hello.get("result", {}).get("capabilities", {}).get(
            "methods", ()
        ):
            raise RuntimeError(f"initialize answered {hello!r}")
        if stat.get("result", {}).get("kind") != "directory":
            raise RuntimeError(f"fs/stat answered {stat!r}")
        return pinged, opened
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            await asyncio.wait_for(proc.wait(), 60)


RESTART_STEPS = ("socket accepting", "initialize answered", "ping answered", "old terminal usable")


async def _spawn(
    root: Path, sock: Path, *extra: str, standby: bool = False
) -> asyncio.subprocess.Process:
    # Awaited before the log's descriptor is closed: the child must get this one (a number
    # closed first was reused by the time the process was made, and its stderr went there).
    log = os.open(root / "server.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    pipe = asyncio.subprocess.PIPE if standby else asyncio.subprocess.DEVNULL
    try:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "lapce_bridge", "serve", "--socket", str(sock),
            "--state-dir", str(root / "state"), "--workspace", str(root / "ws"), *extra,
            *(("--standby",) if standby else ()),
            stdin=pipe, stdout=pipe, stderr=log,
        )  # fmt: skip
    finally:
        os.close(log)


async def _loaded_standby(root: Path, sock: Path, *extra: str) -> asyncio.subprocess.Process:
    """A `serve --standby`, once it has loaded (it said so)."""
    spare = await _spawn(root, sock, *extra, standby=True)
    assert spare.stdout is not None
    if await asyncio.wait_for(spare.stdout.readline(), 60) != READY:
        raise RuntimeError("the standby did not load (see server.log)")
    return spare


async def _told_to_serve(spare: asyncio.subprocess.Process) -> asyncio.subprocess.Process:
    assert spare.stdin is not None
    spare.stdin.write(GO)
    await spare.stdin.drain()
    spare.stdin.close()
    return spare


async def _connect(sock: Path, within: float) -> RawClient:
    """A connection once the server accepts one (refused, or no socket yet, meanwhile)."""
    async with asyncio.timeout(within):
        while True:
            try:
                return await RawClient.connect_unix(sock)
            except OSError:
                await asyncio.sleep(0.001)


async def _restart_steps(
    workdir: Path, rounds: int, *, standby: bool = False
) -> dict[str, list[float]]:
    """Seconds from each SIGKILL to each of `RESTART_STEPS`, one sample a round; the new
    server spawned after the kill, or (`standby`) a standby loaded before it, told to serve."""
    from lapce_bridge.bench.host import stop_host

    root = workdir / ("restart-standby" if standby else "restart")
    (root / "ws").mkdir(parents=True, exist_ok=True)
    sock = root / "bridge.sock"
    host = ("--terminal-host", "on", "--shell", "bash")
    steps: dict[str, list[float]] = {step: [] for step in RESTART_STEPS}
    proc = await _spawn(root, sock, *host)
    try:
        first = await _connect(sock, 60)
        await first.request("initialize", {"protocolVersion": 1})
        made = await first.request("terminal/create", {})
        tid = made["result"]["terminalId"]
        for i in range(rounds):
            spare = await _loaded_standby(root, sock, *host) if standby else None
            proc.kill()
            await proc.wait()
            killed = time.perf_counter()
            proc = await (_spawn(root, sock, *host) if spare is None else _told_to_serve(spare))
            client = await _connect(sock, 60)
            times = [time.perf_counter()]
            try:
                await client.request("initialize", {"protocolVersion": 1})
                times.append(time.perf_counter())
                await client.request("ping")
                times.append(time.perf_counter())
                answer = await client.request(
                    "terminal/execute", {"terminalId": tid, "command": f"echo round-{i}"}
                )
                times.append(time.perf_counter())
            finally:
                await client.close()
            if answer.get("result", {}).get("output") != f"round-{i}\n":
                raise RuntimeError(f"the old terminal answered {answer!r}")
            for step, at in zip(RESTART_STEPS, times, strict=True):
                steps[step].append(at - killed)
        await first.close()
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            await asyncio.wait_for(proc.wait(), 60)
        await stop_host(root)
    return steps


async def run(ctx: BenchContext) -> list[Row]:
    import lapce_bridge

    package = Path(lapce_bridge.__file__).parent
    await asyncio.to_thread(compileall.compile_dir, package, quiet=2)
    n = ctx.n(9, 3)
    bare: list[float] = []
    pinged: list[float] = []
    opened: list[float] = []
    # The CPU each process used, beside its wall time (which load on the machine stretches).
    bare_cpu: list[float] = []
    serve_cpu: list[float] = []
    for i in range(n):
        before = _children_cpu()
        bare.append(await _bare())
        between = _children_cpu()
        ping_s, open_s = await _serve(ctx.workdir, i)
        pinged.append(ping_s)
        opened.append(open_s)
        bare_cpu.append(between - before)
        serve_cpu.append(_children_cpu() - between)
    bare_ms = statistics.median(bare) * 1e3
    ping_ms = statistics.median(pinged) * 1e3
    open_ms = statistics.median(opened) * 1e3
    restart = []
    for standby in (False, True):
        steps = await _restart_steps(ctx.workdir, n, standby=standby)
        restart += [
            figure_row(
                SUITE,
                f"restart{' from a warm standby' if standby else ''}: SIGKILL to {step}",
                statistics.median(seconds) * 1e3,
                "ms",
                higher_is_better=False,
                samples=len(seconds),
                note="terminals in the host; "
                + (
                    "a standby loaded before the kill told to serve after it"
                    if standby
                    else "a new serve spawned at once after the kill"
                ),
                extra={"max_ms": max(seconds) * 1e3},
            )
            for step, seconds in steps.items()
        ]
    return [
        figure_row(
            SUITE,
            "server start to first ping, over bare python",
            ping_ms - bare_ms,
            "ms",
            higher_is_better=False,
            goal=GOAL_MS,
            samples=n,
            note=f"serve {ping_ms:.0f} ms, `python3 -c 'import asyncio'` {bare_ms:.0f} ms",
            extra={
                "serve_ms": ping_ms,
                "bare_ms": bare_ms,
                # the server's whole life here (start, three answers, SIGTERM), and bare's
                "serve_cpu_ms": statistics.median(serve_cpu) * 1e3,
                "bare_cpu_ms": statistics.median(bare_cpu) * 1e3,
            },
        ),
        figure_row(
            SUITE,
            "server start to its services open (fs/stat answered), over bare python",
            open_ms - bare_ms,
            "ms",
            higher_is_better=False,
            samples=n,
            note=f"serve {open_ms:.0f} ms to a file request answered (the last service to open)",
            extra={"serve_ms": open_ms, "bare_ms": bare_ms},
        ),
        *restart,
    ]


__all__ = ["run"]
