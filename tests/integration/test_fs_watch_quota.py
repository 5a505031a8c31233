"""Watch quotas through the real dispatcher, with real watchers on real trees: one client
cannot take every watch or the memory their snapshots need."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from lapce_bridge.core.errors import ResourceExhausted
from lapce_bridge.core.timeouts import TimeoutManager
from lapce_bridge.fs.service import FileService
from lapce_bridge.fs.watch import watchfiles_backend
from lapce_bridge.fs.watch_quota import WatchQuota
from lapce_bridge.testing.memory import MemoryServer


def make_tree(root: Path, folders: int, files: int) -> Path:
    root = root.resolve()
    for d in range(folders):
        folder = root / f"dir{d:03d}"
        folder.mkdir(parents=True)
        for f in range(files):
            (folder / f"file{f:03d}.txt").touch()
    return root


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    ws = tmp_path.resolve() / "ws"
    for d in range(4):
        folder = ws / f"d{d}"
        folder.mkdir(parents=True)
        for f in range(50):
            (folder / f"f{f}.txt").write_text("x")
    return ws


@pytest.fixture
async def server(tree: Path) -> AsyncIterator[MemoryServer]:
    svc = FileService(
        workspace=tree,
        sweep_on_start=False,
        watch_backend=watchfiles_backend(debounce_ms=50, step_ms=5),
        watch_quota=WatchQuota(max_per_owner=3, max_entries=300, max_entries_per_owner=160),
    )
    async with svc:
        yield MemoryServer(svc.methods(), clock=svc.clock, timeouts=TimeoutManager())


async def test_one_client_cannot_take_every_watch(server: MemoryServer) -> None:
    greedy, other = server.connect(), server.connect()
    for d in range(3):  # 51 entries each: 153 of the connection's 160
        await greedy.request("fs/watch", {"paths": [f"d{d}"]})
    with pytest.raises(ResourceExhausted, match="this connection holds 3 watches") as info:
        await greedy.request("fs/watch", {"paths": ["d3"]})
    assert info.value.code == -32005
    # The other client is not locked out: it has its own quota.
    assert (await other.request("fs/watch", {"paths": ["d3"]}))["watchId"]


async def test_a_watch_too_large_for_the_entry_budget_is_refused_and_dropped(
    server: MemoryServer,
) -> None:
    client = server.connect()
    with pytest.raises(ResourceExhausted, match="limit on watched entries") as info:
        await client.request("fs/watch", {"paths": ["."]})  # 205 entries, 160 allowed
    assert info.value.data["connectionLimit"] == 160
    # Nothing of it was kept: the whole budget is still there for a watch that fits.
    for d in range(3):
        await client.request("fs/watch", {"paths": [f"d{d}"]})


async def test_the_default_quota_stops_many_recursive_watches_of_a_large_tree(
    tmp_path: Path,
) -> None:
    ws = await asyncio.to_thread(make_tree, tmp_path / "big", 100, 200)
    svc = FileService(
        workspace=ws,
        sweep_on_start=False,
        watch_backend=watchfiles_backend(debounce_ms=50, step_ms=5),
    )
    async with svc:
        server = MemoryServer(svc.methods(), clock=svc.clock, timeouts=TimeoutManager())
        hostile, other = server.connect(), server.connect()
        accepted = refused = 0
        for _ in range(68):  # the attack: 68 recursive watches of a 20,101-entry tree
            try:
                await hostile.request("fs/watch", {"paths": ["."], "recursive": True})
                accepted += 1
            except ResourceExhausted:
                refused += 1
        held = sum(svc.watcher.info(w).snapshot_entries for w in svc.watcher.watch_ids())
        quota = svc.watcher.quota
        assert accepted == quota.max_entries_per_owner // 20_101  # 4 of 68
        assert refused == 68 - accepted
        assert held <= quota.max_entries_per_owner
        # A second client still watches what it needs.
        assert (await other.request("fs/watch", {"paths": ["dir000"]}))["watchId"]
