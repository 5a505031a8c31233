"""File watching that heals itself and loses no change: `WatcherRecovery`.

Theory of operation: each watch runs one backend (by default `watchfiles.awatch`, whose Rust
core runs in a thread; `debounce`/`step` are set low so a change is delivered about `step`
ms after things go quiet) in a consumer task, and keeps a last-known snapshot of its trees
(see `fs.snapshot`). Reported paths are reconciled against the snapshot before they go out.

A watch can stop working in three ways, and each is repaired by recreating its backend and
rescanning: the backend died (raised, or its task ended: noticed at once through the task's
done-callback), the watched root was removed and re-created (the backend keeps watching the
old inode and goes silent), or the OS watch limit was reached (ENOSPC from inotify, at backend
start). A removed or replaced root is noticed when the backend reports a change to the root
itself and the root's (device, inode) is not the one recorded (which wakes the health check
at once: a watched file saved by rename is replaced on every save), or by the health
check, which runs every `health_interval` seconds on the clock and compares each root's
(device, inode) with the one recorded; a reported deletion of a root counts even when the
root is already back, because a folder re-created at once often gets the very same inode. A
root that is missing is looked for every `missing_interval` seconds (one `lstat`; nothing
would tell us it is back) and rewatched as soon as it is. After the new backend is started
(and has set up its OS watches: the scan waits one loop turn for its task to construct
them, so a file made between the scan and the watch is not missed) the trees are rescanned
and the difference from the last-known snapshot is sent as one `fs/didChange`: what changed
while nothing was watching is reported, not lost. While a rescan runs, batches from the new
backend are held and applied after it. A watch may start from a `baseline` snapshot (one
saved by an earlier server, `fs.watch_store`): its first scan then reports the difference
from it, and its `journal` hears of every full scan and every change applied, before the
sink does.

Invariants:
- Every change to a covered path between `watch()` returning and `unwatch()` reaches the
  sink: live, or in the diff after a recovery. A change may be reported twice (live and
  again in a diff that raced it), never not at all.
- A backend that keeps failing is restarted at once at most `max_failures` times; then it
  runs on polling (`force_polling`), `on_degraded` is told, and further restarts happen only
  at the health check. A watch limit goes to polling at once: retrying cannot help.
- Only the event loop's thread touches a snapshot (rescans build a new one in a thread).
- A root is watched (first or again) only while it is still the path it was when confined:
  one that a symlink now redirects counts as removed (see `_root_id`).
- Watches and their entries are charged to the connection that made them under a
  `WatchQuota`; a watch that does not fit is refused (-32005) before its backend starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Protocol

from lapce_bridge.clock import SYSTEM_CLOCK
from lapce_bridge.core.clock import Clock
from lapce_bridge.fs.backend import (
    MODIFIED,
    ChangeSink,
    RawChanges,
    WatchBackend,
    is_watch_limit,
    watchfiles_backend,
)
from lapce_bridge.fs.paths import for_wire
from lapce_bridge.fs.snapshot import (
    DEFAULT_SKIP_DIRS,
    Change,
    Reconciler,
    Scope,
    Snapshot,
    diff,
    scan,
)
from lapce_bridge.fs.watch_quota import WatchQuota
from lapce_bridge.rpc import Observe

log = logging.getLogger("lapce_bridge.fs.watch")
MAX_CHANGES_PER_NOTICE = 1000  # keeps one notification far below the message size limit


class WatchJournal(Protocol):
    """Told what a watch knows, before its sink is (see `fs.watch_store`)."""

    def rescanned(self, snapshot: Snapshot, changes: list[Change]) -> None:
        """A full scan replaced the snapshot; `changes` are about to be reported."""
        ...

    def changed(self, changes: list[Change], snapshot: Snapshot) -> None: ...


def _root_id(path: str) -> tuple[int, int] | None:
    """The root's (device, inode), or None when it is gone or no longer the confined path
    it was when watched: a root (or a folder above it) replaced by a symlink resolves
    elsewhere, maybe outside the workspace, and is treated as removed, never re-watched."""
    try:
        st = os.lstat(path)
        if os.path.realpath(path) != path:
            return None
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


@dataclass(eq=False)
class _Watch:
    id: str
    scope: Scope
    sink: ChangeSink
    reconciler: Reconciler
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    root_ids: dict[str, tuple[int, int] | None] = field(default_factory=dict)
    task: asyncio.Task[None] | None = None
    stop: asyncio.Event | None = None
    polling: bool = False
    failures: int = 0
    last_error: str = ""
    scanning: bool = False
    pending: list[RawChanges] = field(default_factory=list)
    root_lost: bool = False  # the backend reported a root deleted or replaced
    closed: bool = False
    owner: int | None = None  # the connection that holds it (for its quota)
    journal: WatchJournal | None = None


@dataclass(frozen=True, slots=True)
class WatchInfo:
    watch_id: str
    roots: tuple[str, ...]
    running: bool
    polling: bool
    failures: int
    last_error: str
    snapshot_entries: int
    truncated: bool


@dataclass(frozen=True, slots=True)
class WatchStats:
    watches: int
    running: int
    polling: int
    checks: int
    recoveries: int
    backend_failures: int
    batches: int
    changes_sent: int
    changes_recovered: int  # sent from a diff after a recovery


class WatcherRecovery:
    def __init__(
        self,
        *,
        relative: Callable[[str], str],
        clock: Clock = SYSTEM_CLOCK,
        backend: WatchBackend | None = None,
        health_interval: float = 30.0,
        missing_interval: float = 0.25,
        max_failures: int = 3,
        skip_dirs: frozenset[str] = DEFAULT_SKIP_DIRS,
        max_snapshot_entries: int = 100_000,
        max_watches: int = 256,
        quota: WatchQuota | None = None,
        on_degraded: Callable[[str], object] | None = None,
        observe: Observe | None = None,
    ) -> None:
        self._relative = relative
        self._clock = clock
        self._backend = backend or watchfiles_backend()
        self.health_interval = health_interval
        self.missing_interval = missing_interval
        self.max_failures = max_failures
        self.skip_dirs = skip_dirs
        self.max_snapshot_entries = max_snapshot_entries
        self.quota = quota if quota is not None else WatchQuota(max_watches=max_watches)
        self._on_degraded = on_degraded
        self._observe = observe
        self._watches: dict[str, _Watch] = {}
        self._ids = itertools.count(1)
        self._wake = asyncio.Event()
        self._supervisor: asyncio.Task[None] | None = None
        self._reaping: set[asyncio.Task[None]] = set()
        self._checks = self._recoveries = self._failures = 0
        self._batches = self._sent = self._recovered = 0

    # -- life cycle ---------------------------------------------------------------------------
    async def __aenter__(self) -> WatcherRecovery:
        self._supervisor = asyncio.get_running_loop().create_task(
            self._supervise(), name="fs watch health check"
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        supervisor, self._supervisor = self._supervisor, None
        if supervisor is not None:
            supervisor.cancel()
            await asyncio.wait({supervisor})
        for watch_id in list(self._watches):
            self.unwatch(watch_id)
        if self._reaping:
            await asyncio.wait(self._reaping)

    # -- watches ------------------------------------------------------------------------------
    async def watch(
        self,
        roots: Sequence[str],
        *,
        sink: ChangeSink,
        recursive: bool = True,
        owner: int | None = None,
        watch_id: str | None = None,
        baseline: Snapshot | None = None,
        journal: WatchJournal | None = None,
    ) -> str:
        """Start watching confined, existing `roots`; changes go to `sink`. Returns the id.

        `owner` (a connection id) is charged for it under the `quota` (-32005 past it).
        `watch_id` names it (one not in use); with a `baseline`, what changed since that
        snapshot is reported after the first scan; `journal` hears of each snapshot change.
        """
        held = [(o.owner, len(o.reconciler.snapshot)) for o in self._watches.values()]
        budget = self.quota.admit(owner, held)
        scope = Scope(tuple(dict.fromkeys(roots)), recursive, self.skip_dirs)
        if watch_id is None:
            watch_id = f"w{next(self._ids)}"
        elif watch_id in self._watches:
            raise ValueError(f"watch {watch_id!r} is already open")
        w = _Watch(
            watch_id,
            scope,
            sink,
            Reconciler(scope, dict(baseline or {}), max_entries=self.max_snapshot_entries),
        )
        w.owner = owner
        w.journal = journal
        self._watches[watch_id] = w
        try:
            async with w.lock:
                self._start(w)
                limit = min(budget, self.max_snapshot_entries)
                await self._rescan(w, report=baseline is not None, limit=limit)
                if w.reconciler.truncated and limit < self.max_snapshot_entries:
                    mine = sum(n for o, n in held if owner is not None and o == owner)
                    raise self.quota.too_many_entries(owner, sum(n for _, n in held), mine)
        except BaseException:
            self.unwatch(watch_id)
            raise
        if self._missing():
            self._wake.set()  # the health check looks for a missing root more often
        return watch_id

    def unwatch(self, watch_id: str) -> bool:
        """Stop a watch (safe from a sync callback); False if there was no such watch."""
        w = self._watches.pop(watch_id, None)
        if w is None:
            return False
        w.closed = True
        task = self._halt(w)
        if task is not None:
            self._reaping.add(task)
            task.add_done_callback(self._reaping.discard)
        return True

    def watch_ids(self) -> list[str]:
        return list(self._watches)

    def info(self, watch_id: str) -> WatchInfo:
        w = self._watches[watch_id]
        return WatchInfo(
            watch_id,
            w.scope.roots,
            w.task is not None and not w.task.done(),
            w.polling,
            w.failures,
            w.last_error,
            len(w.reconciler.snapshot),
            w.reconciler.truncated,
        )

    # -- the backend ----------------------------------------------------------------------------
    def _start(self, w: _Watch) -> None:
        w.root_lost = False
        w.root_ids = {root: _root_id(root) for root in w.scope.roots}
        existing = [root for root, rid in w.root_ids.items() if rid is not None]
        if not existing:
            return  # nothing to watch until a root comes back: the health check looks
        stop = asyncio.Event()
        task = asyncio.get_running_loop().create_task(
            self._consume(w, existing, stop, w.polling), name=f"fs watch {w.id}"
        )
        w.stop, w.task = stop, task
        task.add_done_callback(partial(self._ended, w))

    async def _consume(
        self, w: _Watch, roots: list[str], stop: asyncio.Event, polling: bool
    ) -> None:
        async for batch in self._backend(roots, w.scope.recursive, stop, polling):
            self._batches += 1
            w.failures = 0
            if w.scanning:
                w.pending.append(list(batch))
            else:
                self._apply(w, batch)

    def _ended(self, w: _Watch, task: asyncio.Task[None]) -> None:
        error = None if task.cancelled() else task.exception()
        if w.closed or task is not w.task or (w.stop is not None and w.stop.is_set()):
            return  # stopped on purpose
        w.failures += 1
        self._failures += 1
        w.last_error = "cancelled" if task.cancelled() else repr(error) if error else "ended"
        if error is not None and is_watch_limit(error) and not w.polling:
            w.failures = max(w.failures, self.max_failures)
        self._wake.set()

    def _halt(self, w: _Watch) -> asyncio.Task[None] | None:
        if w.stop is not None:
            w.stop.set()
        task, w.task = w.task, None
        if task is not None and not task.done():
            task.cancel()
            return task
        return None

    # -- health ---------------------------------------------------------------------------------
    async def _supervise(self) -> None:
        clock = self._clock
        last_periodic = clock.now()
        while True:
            wait = self.health_interval - (clock.now() - last_periodic)
            if self._missing():
                wait = min(wait, self.missing_interval)
            with contextlib.suppress(TimeoutError):
                async with clock.timeout(max(wait, 0.0)):
                    await self._wake.wait()
            self._wake.clear()
            periodic = clock.now() - last_periodic >= self.health_interval
            if periodic:
                last_periodic = clock.now()
            try:
                await self.check(periodic=periodic)
            except Exception:
                # The check must outlive any one failure, or nothing would repair the watches.
                log.exception("file watch health check failed; trying again at the next one")

    async def check(self, *, periodic: bool = True) -> int:
        """Check every watch now and recreate the broken ones; returns how many."""
        self._checks += 1
        recovered = 0
        for w in list(self._watches.values()):
            reason = self._diagnose(w)
            if reason is None:
                if periodic and w.task is not None:
                    w.failures = 0  # it survived a whole interval
                continue
            if not periodic and w.failures > self.max_failures:
                continue  # a crash loop: leave it to the next periodic check
            async with w.lock:
                if not w.closed:
                    await self._recover(w, reason)
                    recovered += 1
        return recovered

    def _missing(self) -> bool:
        """Whether some watch waits for a root to come back (looked for more often)."""
        return any(
            rid is None
            for w in self._watches.values()
            if not w.closed
            for rid in w.root_ids.values()
        )

    def _diagnose(self, w: _Watch) -> str | None:
        if w.task is not None and w.task.done():
            return f"watcher died: {w.last_error or 'ended'}"
        if w.root_lost:
            return "the backend reported a watched root deleted or replaced"
        now = {root: _root_id(root) for root in w.scope.roots}
        if now != w.root_ids:
            gone = [r for r, rid in now.items() if rid is None]
            return f"root removed: {gone}" if gone else "root replaced or restored"
        if w.task is None and any(rid is not None for rid in now.values()):
            return "watcher not running"
        return None

    async def _recover(self, w: _Watch, reason: str) -> None:
        started = self._clock.now()
        old = self._halt(w)
        if old is not None:
            await asyncio.wait({old})
        self._recoveries += 1
        if w.failures >= self.max_failures and not w.polling:
            w.polling = True
            message = f"file watching fell back to polling for {w.id}: {reason}"
            log.warning(message)
            if self._on_degraded is not None:
                self._on_degraded(message)
        ok = False
        try:
            self._start(w)
            await self._rescan(w, report=True)
            ok = True
        finally:
            if self._observe is not None:
                self._observe("fs/watch/recover", self._clock.now() - started, ok)

    async def _rescan(self, w: _Watch, *, report: bool, limit: int | None = None) -> None:
        w.scanning = True
        # One loop turn first: the backend task just started constructs its OS watches in
        # its first step; a scan racing ahead of them could miss a file made in between.
        await asyncio.sleep(0)
        try:
            fresh, truncated = await asyncio.to_thread(
                scan, w.scope, max_entries=self.max_snapshot_entries if limit is None else limit
            )
        finally:
            w.scanning = False
        old: Snapshot = w.reconciler.snapshot
        w.reconciler.snapshot = fresh
        w.reconciler.truncated = truncated
        changes = diff(old, fresh) if report else []
        if w.journal is not None and not w.closed:
            w.journal.rescanned(fresh, changes)
        if report:
            self._recovered += len(changes)
            self._send(w, changes)
        pending, w.pending = w.pending, []
        for batch in pending:
            self._apply(w, batch)

    def _apply(self, w: _Watch, batch: RawChanges) -> None:
        reported = [(path, int(kind) == MODIFIED) for kind, path in batch]
        changes = w.reconciler.apply(reported)
        if changes and w.journal is not None and not w.closed:
            w.journal.changed(changes, w.reconciler.snapshot)
        self._send(w, changes)
        # A root deleted (even if already back, often with the same inode) or replaced by a
        # rename (a watched file saved as editors and our own fs/write save) leaves the
        # backend watching a dead inode: recover now rather than at the next periodic check.
        ids = w.root_ids
        if any(
            path in ids and (kind == "deleted" or _root_id(path) != ids[path])
            for path, kind in changes
        ):
            w.root_lost = True
            self._wake.set()

    def _send(self, w: _Watch, changes: list[tuple[str, str]]) -> None:
        if not changes or w.closed:
            return
        rel = self._relative
        # A name that is not UTF-8 would make the whole notification unencodable.
        wire = [{"path": for_wire(rel(path)), "kind": kind} for path, kind in changes]
        self._sent += len(wire)
        for i in range(0, len(wire), MAX_CHANGES_PER_NOTICE):
            with contextlib.suppress(Exception):  # a sink's failure must not kill the watch
                w.sink(w.id, wire[i : i + MAX_CHANGES_PER_NOTICE])

    def statistics(self) -> WatchStats:
        watches = list(self._watches.values())
        return WatchStats(
            watches=len(watches),
            running=sum(1 for w in watches if w.task is not None and not w.task.done()),
            polling=sum(1 for w in watches if w.polling),
            checks=self._checks,
            recoveries=self._recoveries,
            backend_failures=self._failures,
            batches=self._batches,
            changes_sent=self._sent,
            changes_recovered=self._recovered,
        )


__all__ = [
    "MODIFIED",
    "ChangeSink",
    "RawChanges",
    "WatchBackend",
    "WatchInfo",
    "WatchJournal",
    "WatchStats",
    "WatcherRecovery",
    "is_watch_limit",
    "watchfiles_backend",
]
