"""WatcherRecovery with the real watchfiles backend on real folders.

The health-check interval runs on a FakeClock; file events are real, so waiting for them is
bounded in real time (they arrive within milliseconds; the bound only stops a broken test).
"""

from __future__ import annotations

import asyncio
import errno
import itertools
import os
import shutil
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from lapce_bridge.core.errors import ResourceExhausted
from lapce_bridge.fs.paths import Workspace
from lapce_bridge.fs.watch import WatcherRecovery, is_watch_limit, watchfiles_backend
from lapce_bridge.testing import FakeClock
from lapce_bridge.testing.faultfs import FaultyWatchBackend

INTERVAL = 30.0
REAL_BOUND = 10.0  # seconds of real time a real file event may take, at most


class Collector:
    def __init__(self) -> None:
        self.changes: list[tuple[str, str]] = []
        self.ids: set[str] = set()
        self._event = asyncio.Event()

    def __call__(self, watch_id: str, changes: list[dict[str, str]]) -> None:
        self.ids.add(watch_id)
        self.changes.extend((c["path"], c["kind"]) for c in changes)
        self._event.set()

    async def until(self, *expected: tuple[str, str]) -> None:
        async with asyncio.timeout(REAL_BOUND):
            while not all(e in self.changes for e in expected):
                self._event.clear()
                await self._event.wait()


@pytest.fixture
def root(tmp_path: Path) -> Path:
    ws = tmp_path.resolve() / "ws"
    (ws / "sub").mkdir(parents=True)
    (ws / "sub" / "kept.txt").write_text("k")
    return ws


async def eventually(condition: Callable[[], bool]) -> None:
    """Wait (bounded, in real time) for state that real file events and threads change."""
    async with asyncio.timeout(REAL_BOUND):
        for _ in itertools.count():
            if condition():
                return
            await asyncio.sleep(0.01)


def fast_backend() -> FaultyWatchBackend:
    return FaultyWatchBackend(watchfiles_backend(debounce_ms=50, step_ms=5, poll_delay_ms=30))


@pytest.fixture
async def harness(
    root: Path, clock: FakeClock
) -> AsyncIterator[tuple[WatcherRecovery, FaultyWatchBackend, list[str]]]:
    backend = fast_backend()
    degraded: list[str] = []
    recovery = WatcherRecovery(
        relative=Workspace(root).relative,
        clock=clock,
        backend=backend,
        health_interval=INTERVAL,
        on_degraded=degraded.append,
    )
    async with recovery:
        yield recovery, backend, degraded


Harness = tuple[WatcherRecovery, FaultyWatchBackend, list[str]]


async def test_real_changes_are_delivered_with_relative_paths(root: Path, harness: Harness) -> None:
    recovery, _, _ = harness
    got = Collector()
    watch_id = await recovery.watch([str(root)], sink=got)
    (root / "new.txt").write_text("1")
    await got.until(("new.txt", "added"))
    (root / "new.txt").write_text("22")
    await got.until(("new.txt", "modified"))
    (root / "sub" / "kept.txt").unlink()
    await got.until(("sub/kept.txt", "deleted"))
    assert got.ids == {watch_id}
    stats = recovery.statistics()
    assert stats.running == 1
    assert stats.changes_sent >= 3


async def test_a_killed_backend_is_recreated_at_once(root: Path, harness: Harness) -> None:
    recovery, backend, degraded = harness
    got = Collector()
    watch_id = await recovery.watch([str(root)], sink=got)
    assert backend.kill() == 1
    await eventually(lambda: recovery.statistics().recoveries >= 1 and backend.running >= 1)
    assert backend.starts == [False, False]
    assert "killed" in recovery.info(watch_id).last_error
    assert degraded == []
    (root / "after.txt").write_text("x")
    await got.until(("after.txt", "added"))


async def test_changes_made_while_the_watcher_was_down_are_reported(
    root: Path, clock: FakeClock, harness: Harness
) -> None:
    recovery, backend, degraded = harness
    got = Collector()
    watch_id = await recovery.watch([str(root)], sink=got)
    backend.fail_starts = 100  # every restart fails: a crash loop
    backend.start_error = OSError(errno.EIO, "backend cannot start (injected)")
    backend.kill()
    # One check per failure: the kill and three failed restarts, the last on polling.
    await eventually(lambda: recovery.statistics().checks >= 4)
    assert backend.starts == [False, False, False, True]
    info = recovery.info(watch_id)
    assert info.polling
    assert not info.running
    assert len(degraded) == 1
    assert "polling" in degraded[0]
    starts_before = len(backend.starts)
    # While nothing watches, the tree changes.
    (root / "made-while-down.txt").write_text("x")
    (root / "sub" / "kept.txt").write_text("modified while down")
    shutil.rmtree(root / "sub")
    (root / "sub").mkdir()
    await clock.advance(INTERVAL - 1)
    assert len(backend.starts) == starts_before  # no restart before the interval
    backend.fail_starts = 0
    await clock.advance(1)
    await got.until(("made-while-down.txt", "added"), ("sub/kept.txt", "deleted"))
    assert ("sub", "added") not in got.changes  # the folder was replaced, not added
    assert recovery.statistics().changes_recovered >= 2
    assert recovery.info(watch_id).running
    (root / "live-again.txt").write_text("y")
    await got.until(("live-again.txt", "added"))


async def test_root_removed_and_recreated_is_rewatched_as_soon_as_it_is_back(
    root: Path, clock: FakeClock, harness: Harness
) -> None:
    recovery, backend, _ = harness
    sub = root / "sub"
    got = Collector()
    watch_id = await recovery.watch([str(sub.resolve())], sink=got)
    shutil.rmtree(sub)
    await got.until(("sub/kept.txt", "deleted"), ("sub", "deleted"))
    # The report of the root's deletion stops the backend, which would watch a dead inode.
    await eventually(lambda: not recovery.info(watch_id).running)
    sub.mkdir()  # often with the very inode the old folder had
    (sub / "fresh.txt").write_text("f")
    assert not recovery.info(watch_id).running
    # A missing root is looked for often (nothing else would say it is back), not only at
    # the health check 30 s on.
    await clock.advance(recovery.missing_interval)
    await got.until(("sub", "added"), ("sub/fresh.txt", "added"))
    assert len(backend.starts) == 2
    (sub / "later.txt").write_text("l")
    await got.until(("sub/later.txt", "added"))


async def test_a_watch_limit_goes_to_polling_at_once(root: Path, clock: FakeClock) -> None:
    backend = fast_backend()
    backend.fail_starts = 1
    degraded: list[str] = []
    got = Collector()
    recovery = WatcherRecovery(
        relative=Workspace(root).relative,
        clock=clock,
        backend=backend,
        health_interval=INTERVAL,
        on_degraded=degraded.append,
    )
    async with recovery:
        watch_id = await recovery.watch([str(root)], sink=got)
        await eventually(lambda: backend.running >= 1)
        assert backend.starts == [False, True]
        assert recovery.info(watch_id).polling
        assert len(degraded) == 1
        (root / "polled.txt").write_text("p")
        await got.until(("polled.txt", "added"))
        assert recovery.statistics().polling == 1


async def test_unwatch_stops_the_backend(root: Path, harness: Harness) -> None:
    recovery, backend, _ = harness
    watch_id = await recovery.watch([str(root)], sink=Collector())
    assert recovery.unwatch(watch_id)
    assert not recovery.unwatch(watch_id)
    await eventually(lambda: backend.running == 0)
    assert recovery.statistics().watches == 0
    assert await recovery.check() == 0


async def test_a_failing_sink_does_not_kill_the_watch(root: Path, harness: Harness) -> None:
    recovery, _, _ = harness
    got = Collector()
    calls = 0

    def flaky(watch_id: str, changes: list[dict[str, str]]) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("client went away mid-send")
        got(watch_id, changes)

    await recovery.watch([str(root)], sink=flaky)
    (root / "one").write_text("1")
    await eventually(lambda: calls >= 1)
    (root / "two").write_text("2")
    await got.until(("two", "added"))


async def test_a_missing_root_is_watched_once_it_appears(
    root: Path, clock: FakeClock, harness: Harness
) -> None:
    recovery, backend, _ = harness
    later = root / "later"
    got = Collector()
    watch_id = await recovery.watch([str(later)], sink=got)
    assert not recovery.info(watch_id).running
    assert backend.starts == []
    later.mkdir()
    (later / "x").write_text("x")
    await clock.advance(INTERVAL)
    await got.until(("later", "added"), ("later/x", "added"))
    assert recovery.info(watch_id).running


async def test_too_many_watches(root: Path, clock: FakeClock) -> None:
    recovery = WatcherRecovery(
        relative=Workspace(root).relative, clock=clock, backend=fast_backend(), max_watches=1
    )
    async with recovery:
        await recovery.watch([str(root)], sink=Collector())
        with pytest.raises(ResourceExhausted):
            await recovery.watch([str(root)], sink=Collector())


async def test_a_root_replaced_by_a_symlink_out_is_not_rewatched(
    root: Path, clock: FakeClock, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    backend = fast_backend()
    recovery = WatcherRecovery(
        relative=Workspace(root).relative, clock=clock, backend=backend, health_interval=INTERVAL
    )
    async with recovery:
        watch_id = await recovery.watch([str(root / "sub")], sink=Collector())
        assert recovery.info(watch_id).running
        started = len(backend.starts)
        shutil.rmtree(root / "sub")
        (root / "sub").symlink_to(outside)  # the watched folder now leads outside
        await recovery.check()
        assert not recovery.info(watch_id).running  # counted as removed, not followed out
        assert len(backend.starts) == started
        (root / "sub").unlink()
        (root / "sub").mkdir()  # a real folder again: watched again
        await recovery.check()
        assert recovery.info(watch_id).running
        assert len(backend.starts) == started + 1


def test_watch_limit_recognition() -> None:
    assert is_watch_limit(OSError(errno.ENOSPC, "No space left on device"))
    assert is_watch_limit(OSError("OS file watch limit reached. about [...]"))
    assert not is_watch_limit(OSError(errno.EIO, "I/O error"))
    assert not is_watch_limit(RuntimeError("boom"))


async def test_skipped_folders_and_temp_files_are_not_reported(
    root: Path, harness: Harness
) -> None:
    recovery, _, _ = harness
    got = Collector()
    await recovery.watch([str(root)], sink=got)
    (root / "node_modules").mkdir()
    (root / "node_modules" / "dep.js").write_text("d")
    (root / f".lapce-bridge-{os.getpid()}-abcdefabcdef.tmp").write_text("t")
    (root / "marker").write_text("m")
    await got.until(("marker", "added"))
    assert not any(p.startswith("node_modules") or "lapce-bridge" in p for p, _ in got.changes)


async def test_root_replaced_by_a_rename_is_caught_by_its_inode(
    root: Path, clock: FakeClock, harness: Harness
) -> None:
    recovery, backend, _ = harness
    empty = root / "empty"
    empty.mkdir()
    other = root.parent / "other"
    other.mkdir()
    (other / "x.txt").write_text("x")
    got = Collector()
    watch_id = await recovery.watch([str(empty)], sink=got)
    os.rename(other, empty)  # a folder renamed over the (empty) watched one
    await clock.advance(INTERVAL)
    await got.until(("empty/x.txt", "added"))
    assert recovery.statistics().recoveries == 1
    assert recovery.info(watch_id).running
    assert len(backend.starts) == 2
