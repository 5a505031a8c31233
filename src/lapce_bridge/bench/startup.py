"""Start-up: a fresh `lapce-bridge serve` process to its first `ping` answered.

Measured against, in the same run, a bare `python3 -c "import asyncio"` on the same
interpreter (the floor any asyncio server pays). Both are timed from the moment the process
is spawned; the server's time ends when its `ping` answer is read from the socket, so it
includes the interpreter, our imports, the services starting and the socket bound. The goal
(BENCHMARKS.md) is at most 100 ms more than the bare interpreter. The two are run
alternately so that load on the machine falls on both alike.
"""

from __future__ import annotations

import asyncio
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


async def _serve(workdir: Path, i: int) -> float:
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
            elapsed = time.perf_counter() - started
        finally:
            await client.close()
        if answer.get("result") != {"pong": True}:
            raise RuntimeError(f"ping answered {answer!r}")
        return elapsed
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            await asyncio.wait_for(proc.wait(), 60)


async def run(ctx: BenchContext) -> list[Row]:
    n = ctx.n(9, 3)
    bare: list[float] = []
    served: list[float] = []
    for i in range(n):
        bare.append(await _bare())
        served.append(await _serve(ctx.workdir, i))
    bare_ms = statistics.median(bare) * 1e3
    serve_ms = statistics.median(served) * 1e3
    return [
        figure_row(
            SUITE,
            "server start to first ping, over bare python",
            serve_ms - bare_ms,
            "ms",
            higher_is_better=False,
            goal=GOAL_MS,
            samples=n,
            note=f"serve {serve_ms:.0f} ms, `python3 -c 'import asyncio'` {bare_ms:.0f} ms",
            extra={"serve_ms": serve_ms, "bare_ms": bare_ms},
        )
    ]


__all__ = ["run"]
