"""`Relief`: what a component can give back under memory pressure.

Kept apart from the resource manager (`lapce_bridge.resources`, which samples the system with
psutil) so that a component offers its relief without loading the sampler: the server offers
its idle connections before its services, and the manager, are open.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass


@dataclass
class Relief:
    """What a component can give back. Each callback returns how many bytes/items it freed."""

    name: str
    trim_cache: Callable[[float], int] | None = None  # fraction to drop
    clear_cache: Callable[[], int] | None = None
    spill_spools: Callable[[], int | Awaitable[int]] | None = None  # (awaited: in another process)
    reap_idle: Callable[[], Awaitable[int]] | None = None


__all__ = ["Relief"]
