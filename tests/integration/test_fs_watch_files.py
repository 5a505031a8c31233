"""Watching single files: saves by rename (editors, our fs/write) keep being reported live.

A watched file replaced by a rename is a new inode; the backend keeps watching the old one.
The report of the change must trigger a recovery at once, without waiting for the periodic
health check (the FakeClock below is never advanced unless a test says so).
"""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import AsyncIterator, Callable
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from lapce_bridge.fs.atomic import write_atomic
from lapce_bridge.fs.paths import Workspace
from lapce_bridge.fs.service import FileService
from lapce_bridge.fs.watch import WatcherRecovery, watchfiles_backend
from lapce_bridge.testing import FakeClock
from lapce_bridge.testing.faultfs import FaultyWatchBackend

INTERVAL = 30.0
REAL_BOUND = 10.0  # seconds of real time a real file event may take, at most


async def eventually(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(REAL_BOUND):
        for _ in itertools.count():
            if condition():
                return
            await asyncio.sleep(0.01)


class Changes:
    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    def __call__(self, watch_id: str, changes: list[dict[str, str]]) -> None:
        self.seen.extend((c["path"], c["kind"]) for c in changes)

    def count(self, path: str, kind: str) -> int:
        return self.seen.count((path, kind))


@pytest.fixture
def root(tmp_path: Path) -> Path:
    ws = tmp_path.resolve() / "ws"
    ws.mkdir()
    (ws / "a.txt").write_text("0")
    return ws


@pytest.fixture
async def watching(
    root: Path, clock: FakeClock
) -> AsyncIterator[tuple[WatcherRecovery, FaultyWatchBackend]]:
    backend = FaultyWatchBackend(watchfiles_backend(debounce_ms=50, step_ms=5))
    recovery = WatcherRecovery(
        relative=Workspace(root).relative, clock=clock, backend=backend, health_interval=INTERVAL
    )
    async with recovery:
        yield recovery, backend


Watching = tuple[WatcherRecovery, FaultyWatchBackend]


async def test_every_save_by_rename_is_reported_live(root: Path, watching: Watching) -> None:
    recovery, backend = watching
    got = Changes()
    watch_id = await recovery.watch([str(root / "a.txt")], sink=got)
    for i in range(1, 4):
        write_atomic(str(root / "a.txt"), b"v%d" % i)
        await eventually(partial(lambda n: got.count("a.txt", "modified") >= n, i))
        # The backend is moved to the new inode before the next save.
        await eventually(partial(lambda n: len(backend.starts) == 1 + n, i))
        await eventually(lambda: backend.running == 1)
    assert recovery.statistics().recoveries == 3
    assert recovery.info(watch_id).running
    assert set(got.seen) == {("a.txt", "modified")}


async def test_in_place_writes_need_no_recovery(root: Path, watching: Watching) -> None:
    recovery, backend = watching
    got = Changes()
    await recovery.watch([str(root / "a.txt")], sink=got)
    (root / "a.txt").write_text("longer")
    await eventually(lambda: got.count("a.txt", "modified") >= 1)
    with (root / "a.txt").open("a") as f:
        f.write(" and longer")
    await eventually(lambda: got.count("a.txt", "modified") >= 2)
    assert recovery.statistics().recoveries == 0
    assert backend.starts == [False]


async def test_a_watched_file_deleted_then_recreated(
    root: Path, clock: FakeClock, watching: Watching
) -> None:
    recovery, backend = watching
    got = Changes()
    watch_id = await recovery.watch([str(root / "a.txt")], sink=got)
    os.unlink(root / "a.txt")
    await eventually(lambda: got.count("a.txt", "deleted") == 1)
    await eventually(lambda: not recovery.info(watch_id).running)
    (root / "a.txt").write_text("back")
    await clock.advance(INTERVAL)
    await eventually(lambda: got.count("a.txt", "added") == 1)
    assert recovery.info(watch_id).running
    (root / "a.txt").write_text("edited after coming back")
    await eventually(lambda: got.count("a.txt", "modified") >= 1)
    assert len(backend.starts) == 2


class Ctx:
    connection_id = 1
    received_at = 0.0

    def __init__(self) -> None:
        self.notes: list[Any] = []

    def notify(self, method: str, params: Any) -> None:
        assert method == "fs/didChange"
        self.notes.append(params)

    def on_close(self, callback: Callable[[], None]) -> None:
        pass


async def test_fs_write_over_a_watched_file_is_seen_by_the_watcher(root: Path) -> None:
    service = FileService(
        workspace=root,
        clock=FakeClock(autojump=False),
        watch_backend=watchfiles_backend(debounce_ms=50, step_ms=5),
    )
    ctx = Ctx()
    async with service:
        table = service.methods()
        watched = await table["fs/watch"].handler({"paths": ["a.txt"]}, ctx)
        for i in range(3):
            await table["fs/write"].handler({"path": "a.txt", "content": f"save {i}"}, ctx)
            await eventually(partial(lambda n: len(ctx.notes) > n, i))
            await eventually(partial(lambda n: service.watcher.statistics().recoveries > n, i))
    assert all(n["watchId"] == watched["watchId"] for n in ctx.notes)
    assert [c for n in ctx.notes for c in n["changes"]] == [
        {"path": "a.txt", "kind": "modified"}
    ] * 3
