"""What a watch runs on: the backend type, the real `watchfiles` backend, watch-limit errors.

A backend is a callable `(roots, recursive, stop_event, force_polling)` returning an async
iterator of batches of `(change, absolute path)`; it runs until `stop_event` is set, and a
crash shows as the iterator raising or ending. `watchfiles.awatch` (its Rust core watches in
a thread and polls the stop event) is the real one; `lapce_bridge.testing.faultfs`
wraps any backend to fail its starts or kill it on demand.
"""

from __future__ import annotations

import asyncio
import errno
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from typing import Any

RawChanges = Iterable[tuple[Any, str]]
"""One batch from a backend: (watchfiles.Change or int, absolute path)."""
WatchBackend = Callable[[Sequence[str], bool, asyncio.Event, bool], AsyncIterator[RawChanges]]
"""(roots, recursive, stop_event, force_polling) -> batches until `stop_event` is set."""
ChangeSink = Callable[[str, list[dict[str, str]]], None]
"""Receives (watch id, changes as `{path, kind}` with workspace-relative POSIX paths)."""
MODIFIED = 2  # watchfiles.Change.modified


def watchfiles_backend(
    *, debounce_ms: int = 100, step_ms: int = 10, poll_delay_ms: int = 300
) -> WatchBackend:
    """The real backend: `watchfiles.awatch`, unfiltered (filtering is ours)."""

    def open_backend(
        roots: Sequence[str], recursive: bool, stop: asyncio.Event, polling: bool
    ) -> AsyncIterator[RawChanges]:
        import watchfiles

        batches: AsyncIterator[RawChanges] = watchfiles.awatch(
            *roots,
            watch_filter=None,
            debounce=debounce_ms,
            step=step_ms,
            stop_event=stop,
            recursive=recursive,
            force_polling=polling,
            poll_delay_ms=poll_delay_ms,
        )
        return batches

    return open_backend


def is_watch_limit(exc: BaseException) -> bool:
    """Whether a backend failed because the OS ran out of watches (inotify's ENOSPC)."""
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return True
    return "watch limit" in str(exc).lower()


__all__ = [
    "MODIFIED",
    "ChangeSink",
    "RawChanges",
    "WatchBackend",
    "is_watch_limit",
    "watchfiles_backend",
]
