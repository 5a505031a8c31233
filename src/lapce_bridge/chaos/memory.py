"""Memory pressure: a real allocation pushes the process past its budget.

The resource manager samples this process's RSS through psutil, sees pressure rise, clears
the cache it was given and throttles new work; when the load ends, pressure must be back under
30 within 5 s (BENCHMARKS.md). RTO runs from the end of the load to the first sample under 30;
RPO counts what was lost that should not have been (a throttled request is refused with a
retryable error, never dropped: here, nothing may be lost at all).
"""

from __future__ import annotations

import asyncio
import gc
import statistics
import time

import psutil

from lapce_bridge.chaos.scenario import ChaosContext, ChaosResult
from lapce_bridge.core.errors import ResourceExhausted
from lapce_bridge.core.pressure import PressurePolicy
from lapce_bridge.resources import Relief, ResourceManager, psutil_sampler

MiB = 1024 * 1024


async def one_round(load_mib: int = 320) -> tuple[float, bool, float]:
    """Returns (ms until pressure < 30 after the load ends, throttled during load, peak)."""
    gc.collect()
    base = psutil.Process().memory_info().rss
    cache: dict[str, bytearray] = {"warm": bytearray(64 * MiB)}

    def clear_cache() -> int:
        freed = sum(map(len, cache.values()))
        cache.clear()
        return freed

    mgr = ResourceManager(
        budget_bytes=base + 256 * MiB,
        sampler=psutil_sampler(),
        interval=0.05,
        policy=PressurePolicy(restore_after=0.5),
    )
    mgr.register(Relief("cache", clear_cache=clear_cache))
    async with mgr:
        load = bytearray(load_mib * MiB)  # the load: touched, so it is resident
        load[::4096] = b"x" * len(range(0, len(load), 4096))
        peak = 0.0
        throttled = False
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not throttled:
            await asyncio.sleep(0.05)
            peak = max(peak, mgr.pressure)
            try:
                mgr.admit("terminal/create")
            except ResourceExhausted:
                throttled = True
        del load  # the load ends
        ended = time.monotonic()
        # Polls a sampled figure: there is no event to wait on.
        while mgr.pressure >= 30 and time.monotonic() - ended < 30:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        return (time.monotonic() - ended) * 1000, throttled, peak


async def run(ctx: ChaosContext) -> ChaosResult:
    rounds = ctx.n(5, 1)
    rtos: list[float] = []
    throttled_all = True
    peaks: list[float] = []
    for _ in range(rounds):
        rto, throttled, peak = await one_round()
        rtos.append(rto)
        peaks.append(peak)
        throttled_all &= throttled
    rto = statistics.median(rtos)
    return ChaosResult(
        "memory pressure",
        rto,
        0,
        rounds,
        seed_ms=30_000,
        goal_ms=5_000,
        ok=throttled_all and rto < 5_000,
        detail="320 MiB load over a 256 MiB budget; RTO = load end to pressure < 30",
        extra={"peak_pressure": max(peaks), "throttled": float(throttled_all)},
    )
