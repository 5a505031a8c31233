"""Start-up: a fresh `lapce-bridge serve` process to its first `ping` answered.

Measured against, in the same run, a bare `python3 -c "import asyncio"` on the same
interpreter (the floor any asyncio server pays). Both are timed from the moment the process
is spawned; the server's time ends when its `ping` answer is read from the socket, so it
includes the interpreter, our imports, the services starting and the socket bound. The goal
(BENCHMARKS.md) is at most 100 ms more than the bare interpreter. The two are run
alternately so that load on the machine falls on both alike.

The server answers `ping` before its services are open (they open behind the listener); a
second row times the same start to its `initialize` answer, which waits for them: what an
editor waits for before its first command. Both are measured with the package's bytecode
compiled first, as an install leaves it (the standard library's always is): otherwise, with
`PYTHONDONTWRITEBYTECODE` set, every start would compile our modules from source.
"""

from __future__ import annotations

import asyncio
import compileall
import os
import signal
import statistics
import sys
import time
from pathlib import Path

from lapce_bridge.bench.report import Row, figure_row
from lapce_bridge.bench.runner import BenchContext
from lapce_bridge.ipc.raw import RawClient

SUITE = "startup"
GOAL_MS = 100.0


async def _bare() -> float:
    started = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", "import asyncio")
    await proc.wait()
    return time.perf_counter() - started


async def _serve(workdir: Path, i: int) -> tuple[float, float]:
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
            initialized = time.perf_counter() - started
        finally:
            await client.close()
        if answer.get("result") != {"pong": True}:
            raise RuntimeError(f"ping answered {answer!r}")
        if "terminal/execute" not in hello.get("result", {}).get("capabilities", {}).get(
            "methods", ()
        ):
            raise RuntimeError(f"initialize answered {hello!r}")
        return pinged, initialized
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            await asyncio.wait_for(proc.wait(), 60)


async def run(ctx: BenchContext) -> list[Row]:
    import lapce_bridge

    package = Path(lapce_bridge.__file__).parent
    await asyncio.to_thread(compileall.compile_dir, package, quiet=2)
    n = ctx.n(9, 3)
    bare: list[float] = []
    pinged: list[float] = []
    initialized: list[float] = []
    for i in range(n):
        bare.append(await _bare())
        ping_s, init_s = await _serve(ctx.workdir, i)
        pinged.append(ping_s)
        initialized.append(init_s)
    bare_ms = statistics.median(bare) * 1e3
    ping_ms = statistics.median(pinged) * 1e3
    init_ms = statistics.median(initialized) * 1e3
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
            extra={"serve_ms": ping_ms, "bare_ms": bare_ms},
        ),
        figure_row(
            SUITE,
            "server start to initialize answered (services open), over bare python",
            init_ms - bare_ms,
            "ms",
            higher_is_better=False,
            samples=n,
            note=f"serve {init_ms:.0f} ms to the answer listing every method",
            extra={"serve_ms": init_ms, "bare_ms": bare_ms},
        ),
    ]


__all__ = ["run"]
