"""Keyed watches on disk (`fs.watch_store`): base + log, torn lines, bounds, privacy."""

from __future__ import annotations

import os
from pathlib import Path

from lapce_bridge.fs.snapshot import Snapshot
from lapce_bridge.fs.watch_store import MIN_LOG_LINES, Persisted, WatchStore


def _stamp(n: int) -> tuple[int, int, int, int, str]:
    return (n, n, n, n, "file")


def _persisted(key: str = "k", entries: int = 3) -> Persisted:
    snap: Snapshot = {f"/ws/f{i}": _stamp(i) for i in range(entries)}
    return Persisted(key, "w-1", ["/ws"], True, seq=4, snapshot=snap)


def test_save_then_log_then_load_gives_the_latest_snapshot(tmp_path: Path) -> None:
    store = WatchStore(tmp_path / "watches")
    p = _persisted()
    store.save(p)
    snap = dict(p.snapshot)
    snap["/ws/new"] = _stamp(9)
    del snap["/ws/f0"]
    p.seq = 5
    store.append(p, [("/ws/new", "added"), ("/ws/f0", "deleted")], snap)
    loaded = store.load("k")
    assert loaded is not None
    assert loaded.snapshot == snap
    assert (loaded.seq, loaded.watch_id, loaded.roots, loaded.recursive) == (
        5,
        "w-1",
        ["/ws"],
        True,
    )
    assert store.load("other") is None
    folder = tmp_path / "watches"
    assert folder.stat().st_mode & 0o777 == 0o700
    assert all(f.stat().st_mode & 0o777 == 0o600 for f in folder.iterdir())


def test_a_torn_last_line_is_ignored(tmp_path: Path) -> None:
    store = WatchStore(tmp_path / "watches")
    p = _persisted()
    store.save(p)
    store.append(p, [("/ws/a", "added")], {**p.snapshot, "/ws/a": _stamp(7)})
    log = tmp_path / "watches" / f"{WatchStore.name('k')}.log"
    with log.open("ab") as f:
        f.write(b'[5, "/ws/b", [1, 2')  # killed mid-append
    loaded = WatchStore(tmp_path / "watches").load("k")
    assert loaded is not None
    assert "/ws/a" in loaded.snapshot
    assert "/ws/b" not in loaded.snapshot


def test_the_log_is_folded_into_the_base_past_its_bound(tmp_path: Path) -> None:
    store = WatchStore(tmp_path / "watches")
    p = _persisted()
    store.save(p)
    snap = dict(p.snapshot)
    log = tmp_path / "watches" / f"{WatchStore.name('k')}.log"
    for i in range(MIN_LOG_LINES + 10):  # one file saved again and again
        snap["/ws/f1"] = _stamp(100 + i)
        store.append(p, [("/ws/f1", "modified")], snap)
    # Folded at the bound (the log never outgrows max(1000, the base)): it holds what came
    # after the fold.
    assert len(log.read_bytes().splitlines()) == 9
    loaded = store.load("k")
    assert loaded is not None
    assert loaded.snapshot == snap


def test_at_most_max_watches_are_kept_and_forget_removes_one(tmp_path: Path) -> None:
    store = WatchStore(tmp_path / "watches", max_watches=2)
    for i, key in enumerate(("a", "b", "c")):
        p = _persisted(key)
        store.save(p)
        base = tmp_path / "watches" / f"{WatchStore.name(key)}.json"
        os.utime(base, ns=(i * 10**9, i * 10**9))  # written in this order
    assert store.load("a") is None
    assert store.load("b") is not None
    store.forget("b")
    assert store.load("b") is None
    assert store.load("c") is not None


def test_an_unreadable_base_is_treated_as_absent(tmp_path: Path) -> None:
    store = WatchStore(tmp_path / "watches")
    store.save(_persisted())
    (tmp_path / "watches" / f"{WatchStore.name('k')}.json").write_bytes(b"{not json")
    assert store.load("k") is None
