"""FileCache: identity-validated LRU within a byte and an entry budget."""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lapce_bridge.core.errors import InvalidParams
from lapce_bridge.fs.cache import FileCache, Identity, identity_of

ID: Identity = (1_000, 2_000, 5, 42, 7)


def test_hit_only_for_the_same_identity() -> None:
    cache = FileCache()
    cache.put("/w/a", b"hello", ID)
    entry = cache.get("/w/a", ID)
    assert entry is not None
    assert entry.data == b"hello"
    assert entry.mtime_ns == 1_000
    assert entry.size == 5
    s = cache.statistics()
    assert (s.hits, s.misses, s.stale_hits) == (1, 0, 0)


@pytest.mark.parametrize("field", range(5), ids=["mtime", "ctime", "size", "inode", "device"])
def test_any_identity_field_changing_makes_the_entry_stale(field: int) -> None:
    cache = FileCache()
    cache.put("/w/a", b"hello", ID)
    changed = list(ID)
    changed[field] += 1
    assert cache.get("/w/a", (changed[0], changed[1], changed[2], changed[3], changed[4])) is None
    assert cache.statistics().stale_hits == 1
    # The stale entry is kept as the last known content, for the disk-failure fallback.
    fallback = cache.get_any("/w/a")
    assert fallback is not None
    assert fallback.data == b"hello"


def test_racy_entry_is_never_served_fresh_but_is_a_fallback() -> None:
    cache = FileCache()
    cache.put("/w/a", b"new", ID, racy=True)
    assert cache.get("/w/a", ID) is None
    assert cache.get_any("/w/a") is not None
    cache.put("/w/a", b"new", ID, racy=False)
    assert cache.get("/w/a", ID) is not None


def test_miss_for_unknown_path() -> None:
    cache = FileCache()
    assert cache.get("/w/nothing", ID) is None
    assert cache.get_any("/w/nothing") is None
    assert cache.statistics().misses == 1


def test_byte_budget_evicts_least_recently_used_first() -> None:
    cache = FileCache(max_bytes=30, max_entries=100, max_entry_bytes=30)
    for name in "abc":
        cache.put(f"/w/{name}", b"x" * 10, ID)
    assert cache.get("/w/a", ID) is not None  # a is now the most recently used
    cache.put("/w/d", b"y" * 10, ID)
    assert "/w/b" not in cache
    assert all(p in cache for p in ("/w/a", "/w/c", "/w/d"))
    s = cache.statistics()
    assert s.bytes == 30
    assert s.evictions == 1


def test_entry_budget() -> None:
    cache = FileCache(max_bytes=1000, max_entries=2)
    for name in "abc":
        cache.put(f"/w/{name}", b"x", ID)
    assert len(cache) == 2
    assert "/w/a" not in cache


def test_too_large_content_is_not_cached_and_drops_the_old_entry() -> None:
    cache = FileCache(max_bytes=100, max_entries=10)  # entries up to 25 bytes
    cache.put("/w/a", b"small", ID)
    assert cache.put("/w/a", b"z" * 26, ID) is None
    assert "/w/a" not in cache
    assert cache.statistics().bytes == 0


def test_replacing_an_entry_keeps_the_byte_count_exact() -> None:
    cache = FileCache()
    cache.put("/w/a", b"x" * 10, ID)
    cache.put("/w/a", b"x" * 3, ID)
    assert cache.statistics().bytes == 3
    assert len(cache) == 1


def test_invalidate_and_invalidate_under() -> None:
    cache = FileCache()
    for path in ("/w/d/a", "/w/d/sub/b", "/w/dx", "/w/d"):
        cache.put(path, b"1234", ID)
    assert cache.invalidate_under("/w/d") == 3
    assert [p for p in ("/w/d/a", "/w/d/sub/b", "/w/dx", "/w/d") if p in cache] == ["/w/dx"]
    assert cache.invalidate("/w/dx")
    assert not cache.invalidate("/w/dx")
    assert cache.statistics().bytes == 0


def test_resize_shrinks_and_restores_the_budget() -> None:
    cache = FileCache(max_bytes=100, max_entries=100, max_entry_bytes=100)
    for i in range(10):
        cache.put(f"/w/{i}", b"x" * 10, ID)
    freed = cache.resize(0.25)
    assert freed == 80
    s = cache.statistics()
    assert (s.bytes, s.max_bytes, s.base_max_bytes) == (20, 25, 100)
    assert "/w/9" in cache
    assert "/w/0" not in cache  # least recently used went first
    assert cache.resize(1.0) == 0
    assert cache.statistics().max_bytes == 100


def test_trim_drops_a_fraction_of_the_bytes_lru_first() -> None:
    cache = FileCache(max_bytes=1000, max_entries=100)
    for i in range(10):
        cache.put(f"/w/{i}", b"x" * 10, ID)
    assert cache.trim(0.5) == 50
    assert [i for i in range(10) if f"/w/{i}" in cache] == [5, 6, 7, 8, 9]
    assert cache.trim(0.0) == 0


def test_clear() -> None:
    cache = FileCache()
    cache.put("/w/a", b"abc", ID)
    cache.put("/w/b", b"de", ID)
    assert cache.clear() == 5
    assert len(cache) == 0
    assert cache.statistics().evictions == 2


@pytest.mark.parametrize("bad", [-0.1, 1.5])
def test_fractions_are_validated(bad: float) -> None:
    cache = FileCache()
    with pytest.raises(InvalidParams):
        cache.resize(bad)
    with pytest.raises(InvalidParams):
        cache.trim(bad)
    with pytest.raises(InvalidParams):
        FileCache(max_bytes=-1)


def test_zero_entry_budget_caches_nothing() -> None:
    cache = FileCache(max_entries=0)
    assert cache.put("/w/a", b"x", ID) is None
    assert len(cache) == 0


def test_identity_of_a_real_file_tracks_rewrites(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"one")
    first = identity_of(os.stat(f))
    replacement = tmp_path / "g"
    replacement.write_bytes(b"two")
    st = os.stat(f)
    os.utime(replacement, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(replacement, f)
    second = identity_of(os.stat(f))
    # Same size, same mtime: the inode still tells the versions apart.
    assert first[0] == second[0]
    assert first[2] == second[2]
    assert first != second


ops = st.lists(
    st.tuples(
        st.sampled_from(["put", "get", "trim", "resize", "invalidate"]),
        st.integers(0, 7),
        st.integers(0, 40),
        st.floats(0, 1),
    ),
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(ops)
def test_budgets_and_lru_order_match_a_model(script: list[tuple[str, int, int, float]]) -> None:
    cache = FileCache(max_bytes=100, max_entries=5, max_entry_bytes=50)
    model: OrderedDict[str, int] = OrderedDict()
    budget = 100
    for op, key, size, frac in script:
        path = f"/w/{key}"
        if op == "put":
            cache.put(path, b"x" * size, ID)
            model.pop(path, None)
            if size <= 50 and size <= budget:
                model[path] = size
        elif op == "get":
            if cache.get(path, ID) is not None:
                model.move_to_end(path)
        elif op == "invalidate":
            cache.invalidate(path)
            model.pop(path, None)
        elif op == "trim":
            target = int(sum(model.values()) * (1 - frac))
            cache.trim(frac)
            while model and sum(model.values()) > target:
                model.popitem(last=False)
        else:
            budget = int(100 * frac)
            cache.resize(frac)
        while model and (sum(model.values()) > budget or len(model) > 5):
            model.popitem(last=False)
        s = cache.statistics()
        assert s.bytes == sum(model.values()) <= s.max_bytes
        assert s.entries == len(model) <= 5
        # Membership after every step pins the eviction order down.
        assert set(model) == {f"/w/{k}" for k in range(8) if f"/w/{k}" in cache}


def test_a_kept_rendering_counts_against_the_budget() -> None:
    cache = FileCache(max_bytes=10_000, max_entries=10, max_entry_bytes=10_000)
    entry = cache.put("/w/a", b"x" * 100, ID)
    assert entry is not None
    cache.keep_rendered(entry, "utf-8", "x" * 100)
    kept = cache.statistics().bytes
    assert kept > 200  # the content and the str (with its header)
    assert entry.rendered == ("utf-8", "x" * 100)
    cache.keep_rendered(entry, "base64", "eHh4" * 10)
    assert entry.rendered == ("base64", "eHh4" * 10)
    assert cache.statistics().bytes == entry.cost < kept  # the first rendering was released
    assert cache.invalidate("/w/a")
    assert cache.statistics().bytes == 0


def test_a_rendering_of_a_replaced_entry_is_not_kept() -> None:
    cache = FileCache()
    old = cache.put("/w/a", b"old", ID)
    assert old is not None
    cache.put("/w/a", b"new", ID)
    cache.keep_rendered(old, "utf-8", "old")
    assert cache.statistics().bytes == 3
    tight = FileCache(max_bytes=400, max_entries=10, max_entry_bytes=100)
    entry = tight.put("/w/b", b"y" * 90, ID)
    assert entry is not None
    tight.keep_rendered(entry, "utf-8", "y" * 90)  # would pass the per-entry limit
    assert entry.rendered is None
    assert tight.statistics().bytes == 90
