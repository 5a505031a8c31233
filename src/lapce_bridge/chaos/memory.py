"""Memory pressure inside a real server: its own allocations past its budget.

The server is started with a low `--memory-budget` (256 MiB: an idle server with its terminal
host and a terminal owns about a fifth of it, so it starts in the normal band at quality 3) and
the default policies. It first runs commands whose output overflows `maxOutputBytes`, so each
leaves a spool to be read through `terminal/readOutput`. Then it allocates real, touched memory
past its budget (`test/memory/allocate` of `lapce_bridge.testing.server_faults`), as a leak or
a huge output would. Checked item by item: the server starts under its budget at full quality,
pressure is seen (`health/get`), every request sent under pressure is answered (served, or
refused with a retryable error: never dropped), quality returns to what it was within 5 s of
the memory being released (RTO, BENCHMARKS.md; seed 30 s), and every spool still reads back
whole. With `break_recovery` the memory is never released.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from lapce_bridge.chaos.harness import ServerUnderTest, Tally
from lapce_bridge.chaos.scenario import ChaosContext, ChaosResult
from lapce_bridge.chaos.terminal import execute, new_terminal
from lapce_bridge.core.errors import BridgeError
from lapce_bridge.ipc.client import BridgeClient


async def _health(client: BridgeClient) -> dict[str, Any]:
    report: dict[str, Any] = await client.request("health/get", timeout=10)
    return report


async def _read_spool(client: BridgeClient, execution: str) -> int:
    """Bytes of a spool read back to its end through `terminal/readOutput`."""
    offset, total = 0, 0
    while True:
        page = await client.request(
            "terminal/readOutput", {"executionId": execution, "offset": offset}, timeout=10
        )
        data = str(page.get("data", ""))
        total += len(data.encode())
        offset = int(page.get("offset", offset + len(data)))
        if page.get("eof") or not data:
            return total


async def run(ctx: ChaosContext) -> ChaosResult:
    spools = ctx.n(5, 2)
    budget_mib, load_mib = 256, 240
    tally = Tally()
    rto = float("inf")
    sut = ServerUnderTest(ctx.workdir, "memory", "--memory-budget", f"{budget_mib}M")
    async with sut as client:
        tid = await new_terminal(client, "bash", sut.workspace)
        outputs: dict[str, int] = {}
        for i in range(spools):
            answer = await execute(client, tid, f"seq 1 {60_000 + i}")
            outputs[str(answer["executionId"])] = int(answer["outputBytes"])
            tally.check(bool(answer.get("truncated")), "output not spooled")
        before = await _health(client)
        tally.check(
            before.get("qualityLevel") == 3 and float(before.get("pressure", 100)) < 30,
            "server not idle under its budget",
        )
        await client.request("test/memory/allocate", {"mib": load_mib}, timeout=30)
        peak = 0.0
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and peak < 85:
            peak = max(peak, float((await _health(client)).get("pressure", 0)))
            await asyncio.sleep(0.1)
        tally.check(peak >= 85, "pressure not seen")
        for i in range(ctx.n(10, 4)):  # under pressure: answered or refused, never dropped
            try:
                await execute(client, tid, f"echo under-pressure-{i}")
                tally.check(True, "answered")
            except BridgeError as exc:
                tally.check(
                    exc.classification.retryable, f"refused, not retryable: {exc.detail[:50]}"
                )
            except TimeoutError:
                tally.check(False, "request dropped under pressure")
        if not ctx.break_recovery:
            await client.request("test/memory/release")
        released = time.monotonic()
        want = before.get("qualityLevel")
        deadline = released + (5 if ctx.break_recovery else ctx.n(40, 15))
        while time.monotonic() < deadline:
            now = await _health(client)
            if now.get("qualityLevel") == want and float(now.get("pressure", 100)) < 60:
                rto = (time.monotonic() - released) * 1000
                break
            await asyncio.sleep(0.05)
        tally.check(rto < 5_000, "quality not restored within 5 s")
        await client.request("test/memory/release")
        for execution, size in outputs.items():
            try:
                read = await _read_spool(client, execution)
            except BridgeError:
                read = -1
            tally.check(read == size, "spool unreadable")
    return tally.result(
        "memory pressure (server's own)",
        rto,
        1,
        seed_ms=30_000,
        goal_ms=5_000,
        detail=f"serve --memory-budget {budget_mib}M, {load_mib} MiB allocated in the server; "
        "RTO = release to quality back.",
        extra={"peak_pressure": peak},
    )
