"""The resource manager: samples memory, asks the pressure policy, carries out its actions.

It owns no resources itself. Components that hold droppable memory register a `Relief`
(callbacks for trimming or clearing caches, trimming spools, reaping idle terminals); the
manager calls them when the policy says so, and records what each freed. Throttling is an
admission check the server consults before expensive work (`admit()`), answered with
`ResourceExhausted` (-32005) while pressure is high, so the bridge slows down instead of
falling over. Sampling runs on the injected clock; the sampler is injectable too, the default
one reads this process's RSS and the machine's memory through psutil.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import psutil

from lapce_bridge.clock import SYSTEM_CLOCK
from lapce_bridge.core.clock import Clock
from lapce_bridge.core.errors import ResourceExhausted
from lapce_bridge.core.pressure import (
    Action,
    Band,
    PressureDecision,
    PressurePolicy,
    ResourceSample,
)

Sampler = Callable[[], ResourceSample]


def psutil_sampler() -> Sampler:
    proc = psutil.Process(os.getpid())

    def sample() -> ResourceSample:
        return ResourceSample(proc.memory_info().rss, psutil.virtual_memory().percent)

    return sample


@dataclass
class Relief:
    """What a component can give back. Each callback returns how many bytes/items it freed."""

    name: str
    trim_cache: Callable[[float], int] | None = None  # fraction to drop
    clear_cache: Callable[[], int] | None = None
    trim_spools: Callable[[], int] | None = None
    reap_idle: Callable[[], Awaitable[int]] | None = None


@dataclass
class ResourceStats:
    pressure: float = 0.0
    band: str = Band.NORMAL.name.lower()
    rss_bytes: int = 0
    samples: int = 0
    throttled: bool = False
    actions: dict[str, int] = field(default_factory=dict)
    freed: dict[str, int] = field(default_factory=dict)


class ResourceManager:
    def __init__(
        self,
        *,
        budget_bytes: int = 512 * 1024 * 1024,
        clock: Clock = SYSTEM_CLOCK,
        sampler: Sampler | None = None,
        policy: PressurePolicy | None = None,
        interval: float = 1.0,
        degrade: Callable[[str], object] | None = None,
        restore: Callable[[str], object] | None = None,
    ) -> None:
        self.budget_bytes = budget_bytes
        self._clock = clock
        self._sampler = sampler or psutil_sampler()
        self.policy = policy or PressurePolicy()
        self.interval = interval
        self._degrade = degrade
        self._restore = restore
        self._reliefs: list[Relief] = []
        self._stats = ResourceStats()
        self._task: asyncio.Task[None] | None = None

    def register(self, relief: Relief) -> None:
        self._reliefs.append(relief)

    @property
    def pressure(self) -> float:
        return self._stats.pressure

    def admit(self, operation: str) -> None:
        """Raise ResourceExhausted when new expensive work must wait for pressure to ease."""
        if self.policy.throttled:
            raise ResourceExhausted(
                f"{operation} refused: memory pressure {self._stats.pressure:.0f}/100; retry later"
            )

    async def check(self) -> PressureDecision:
        """Sample once, decide, and carry out the decision."""
        sample = self._sampler()
        pressure = sample.pressure(self.budget_bytes)
        decision = self.policy.decide(pressure, self._clock.now())
        stats = self._stats
        stats.pressure, stats.band = pressure, decision.band.name.lower()
        stats.rss_bytes, stats.samples = sample.rss_bytes, stats.samples + 1
        stats.throttled = self.policy.throttled
        for action in decision.actions:
            stats.actions[action.value] = stats.actions.get(action.value, 0) + 1
            await self._carry_out(action, pressure)
        return decision

    async def _carry_out(self, action: Action, pressure: float) -> None:
        reason = f"memory pressure {pressure:.0f}"
        if action is Action.DEGRADE and self._degrade is not None:
            self._degrade(reason)
        elif action is Action.RESTORE and self._restore is not None:
            self._restore(reason)
        for relief in self._reliefs:
            freed = 0
            if action is Action.TRIM_CACHE and relief.trim_cache is not None:
                freed = relief.trim_cache(0.5)
            elif action is Action.CLEAR_CACHE and relief.clear_cache is not None:
                freed = relief.clear_cache()
            elif action is Action.TRIM_SPOOLS and relief.trim_spools is not None:
                freed = relief.trim_spools()
            elif action is Action.REAP_IDLE_TERMINALS and relief.reap_idle is not None:
                freed = await relief.reap_idle()
            if freed:
                key = f"{relief.name}.{action.value}"
                self._stats.freed[key] = self._stats.freed.get(key, 0) + freed

    async def run(self) -> None:
        while True:
            await self.check()
            await self._clock.sleep(self.interval)

    async def __aenter__(self) -> ResourceManager:
        self._task = asyncio.get_running_loop().create_task(self.run(), name="resource-manager")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def statistics(self) -> ResourceStats:
        s = self._stats
        return ResourceStats(
            s.pressure, s.band, s.rss_bytes, s.samples, s.throttled, dict(s.actions), dict(s.freed)
        )
