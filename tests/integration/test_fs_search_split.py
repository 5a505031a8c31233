"""A search's walk shared with a forked child gives the pages a walk in one process gives.

Real trees large enough for the split (more than `SPLIT_AFTER` files, in folders and
subfolders, with .gitignore files, binary files and files on either side of the folders),
searched by `Scan` both ways page by page; the child is watched through `Fanout.spawn`
(wrapped, not replaced) so each test knows it really forked and can stop the walk, run out
its time or kill the child at that moment. Then through the real server: its pages equal
the one-process pages, and no child is left behind.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest

from lapce_bridge.fs import fanout
from lapce_bridge.fs.fanout import Fanout
from lapce_bridge.fs.search import SPLIT_AFTER, Page
from lapce_bridge.testing import FakeClock
from tests.integration.test_fs_search_tree import scan_page
from tests.integration.test_fs_server import serving

Spy = Callable[[Fanout], None]


@dataclass
class Forks:
    """The real forks of the searches (their pids), and what to do right after each."""

    pids: list[int] = field(default_factory=list)
    then: list[Spy] = field(default_factory=list)
    # The next child takes no unit before the parent halted it: what happens to a working
    # child when the parent stops or runs out of time does not depend on who the scheduler
    # runs first (a child that finished every unit first gave a whole page).
    gated: bool = False


def grow(root: Path) -> int:
    """A tree of about 700 files; returns how many hold `hit` lines."""
    (root / ".gitignore").write_text("*.log\nskip/\n")
    with_hits = 0
    for i in range(700):
        top = root / f"t{i % 7}"
        folder = top / f"s{i % 5}" if i % 3 else top
        folder.mkdir(parents=True, exist_ok=True)
        lines = [f"line {n} of {i}" for n in range(30)]
        if i % 4 == 0:
            lines[i % 30] = f"a hit in {i}"
            lines[(i * 7) % 30] += " hit again"
            with_hits += 1
        (folder / f"f{i:03}.txt").write_text("\n".join(lines) + "\n")
    (root / "t1" / ".gitignore").write_text("f00*.txt\n")
    (root / "t2" / "s1" / "blob.bin").write_bytes(b"\0hit\n" * 10)
    (root / "t3" / "x.log").write_text("hit in a log\n")
    (root / "skip").mkdir()
    (root / "skip" / "no.txt").write_text("hit ignored\n")
    (root / "a-first.txt").write_text("hit before the folders\n")
    (root / "z-last.txt").write_text("hit after the folders\nhit\n")
    return with_hits


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    grow(tmp_path)
    return tmp_path


@pytest.fixture
def forks(monkeypatch: pytest.MonkeyPatch) -> Forks:
    """`Fanout.spawn` watched: each fork's pid noted, then the test's `then` run in the
    parent at that moment; `gated`: the child waits for the halt flag before its work."""
    watched = Forks()
    real = Fanout.spawn

    def spawn(self: Fanout, work: Callable[[], bytes], keep: Iterable[int]) -> bool:
        def gated() -> bytes:  # runs in the child
            give_up = time.monotonic() + 30
            while not self.halted and time.monotonic() < give_up:
                time.sleep(0.001)
            return work()

        hold, watched.gated = watched.gated, False  # the next fork's child is not held
        forked = real(self, gated if hold else work, keep)
        if forked:
            assert self._pid is not None
            watched.pids.append(self._pid)
            for then in watched.then:
                then(self)
        return forked

    monkeypatch.setattr(Fanout, "spawn", spawn)
    return watched


def page(
    root: Path, query: str, *, split: bool, resume: tuple[str, int] | None = None,
    max_results: int = 10_000, clock: FakeClock | None = None, stop: threading.Event | None = None,
    include: list[str] | None = None,
) -> Page:  # fmt: skip
    clock = clock or FakeClock()
    got: Page = scan_page(
        root, query, resume, max_results, clock, clock.now() + 60, split=split, stop=stop,
        include=include,
    )  # fmt: skip
    return got


def seen(p: Page) -> tuple[Any, ...]:
    return ([(m.path, m.line, m.text) for m in p.matches], p.searched, p.skipped, p.stop_at,
            p.timed_out)  # fmt: skip


def every_page(root: Path, max_results: int, *, split: bool) -> list[tuple[Any, ...]]:
    pages = []
    resume = None
    while True:
        got = page(root, "hit", split=split, resume=resume, max_results=max_results)
        pages.append(seen(got))
        if got.stop_at is None:
            return pages
        resume = got.stop_at


@pytest.mark.parametrize("max_results", [1, 9, 64, 10_000])
def test_split_pages_equal_the_pages_of_one_process(
    tree: Path, forks: Forks, max_results: int
) -> None:
    one = every_page(tree, max_results, split=False)
    forked = len(forks.pids)
    two = every_page(tree, max_results, split=True)
    assert two == one
    whole = [m for p in one for m in p[0]]
    # 175 files with two hit lines, one in the 35 whose two hits share a line; t1/s3/f008.txt
    # ignored (two lines); the top files' three; the log, skip/ and the blob left out.
    assert len(whole) == 175 * 2 - 35 - 2 + 3
    assert (whole[0][0], whole[-1][0]) == ("a-first.txt", "z-last.txt")
    if max_results == 10_000:
        assert len(forks.pids) > forked  # the walk really was shared
        assert one[0][1] > SPLIT_AFTER


def test_filters_apply_in_the_child(tree: Path, forks: Forks) -> None:
    one = page(tree, "hit", split=False, include=["**/s1/*.txt", "**/s3/*"])
    two = page(tree, "hit", split=True, include=["**/s1/*.txt", "**/s3/*"])
    assert seen(two) == seen(one)
    assert {m.path.split("/")[1] for m in two.matches} == {"s1", "s3"}


def test_a_stop_while_the_child_walks_cuts_one_page_that_resumes(tree: Path, forks: Forks) -> None:
    stop = threading.Event()
    forks.gated = True
    forks.then.append(lambda _: stop.set())
    cut = page(tree, "hit", split=True, stop=stop)
    assert len(forks.pids) == 1
    assert cut.stop_at is not None
    assert not cut.timed_out
    whole = seen(page(tree, "hit", split=False))[0]
    first = seen(cut)[0]
    rest = seen(page(tree, "hit", split=True, resume=cut.stop_at))[0]
    assert first + rest == whole  # nothing lost, nothing twice, in order


def test_running_out_of_time_while_the_child_walks_halts_it(tree: Path, forks: Forks) -> None:
    clock = FakeClock()
    forks.gated = True
    forks.then.append(lambda _: asyncio.run(clock.advance(120)))  # past the deadline
    cut = page(tree, "hit", split=True, clock=clock)
    assert len(forks.pids) == 1
    assert cut.stop_at is not None
    assert cut.timed_out
    whole = seen(page(tree, "hit", split=False))[0]
    rest = seen(page(tree, "hit", split=True, resume=cut.stop_at))[0]
    assert seen(cut)[0] + rest == whole


def test_a_killed_child_costs_a_second_walk_not_results(tree: Path, forks: Forks) -> None:
    def kill(fan: Fanout) -> None:
        pid = fan._pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)

    forks.gated = True  # killed before it took a unit
    forks.then.append(kill)
    two = page(tree, "hit", split=True)
    assert len(forks.pids) == 1
    assert seen(two) == seen(page(tree, "hit", split=False))


def grow_lopsided(root: Path, big_files: int) -> None:
    """20 small folders around one (`m-big`) that holds most of the tree: 40 subfolders of
    10 files, and `big_files` files of its own."""
    for i in range(20):
        small = root / f"{'a' if i < 10 else 'z'}{i:02}"
        small.mkdir()
        (small / "f.txt").write_text(f"hit in small {i}\nmiss\n")
    big = root / "m-big"
    for i in range(40):
        sub = big / f"p{i:02}"
        sub.mkdir(parents=True)
        for n in range(10):
            (sub / f"f{n}.txt").write_text("miss\n" * n + f"hit {i} {n}\n")
    for n in range(big_files):
        (big / f"g{n:04}.txt").write_text("hit\n" if n % 3 == 0 else "miss\n")


@pytest.mark.parametrize("max_results", [1, 7, 10_000])
def test_a_folder_holding_most_of_the_tree_is_cut_into_its_entries(
    tmp_path: Path, forks: Forks, max_results: int
) -> None:
    grow_lopsided(tmp_path, big_files=5)
    units: list[int] = []
    forks.then.append(lambda fan: units.append(fan.units))
    one = every_page(tmp_path, max_results, split=False)
    two = every_page(tmp_path, max_results, split=True)
    assert two == one
    assert len([m for p in one for m in p[0]]) == 20 + 400 + 2
    if max_results == 10_000:
        # 21 entries at the top; m-big's 45 entries (40 folders, 5 files) took its place.
        assert units == [20 + 45]


def test_a_large_folder_is_not_cut_past_what_the_queue_holds(tmp_path: Path, forks: Forks) -> None:
    grow_lopsided(tmp_path, big_files=fanout.MAX_UNITS)
    units: list[int] = []
    forks.then.append(lambda fan: units.append(fan.units))
    two = page(tmp_path, "hit", split=True)
    assert seen(two) == seen(page(tmp_path, "hit", split=False))
    assert units == [21]  # m-big's 1,064 entries would not fit: the top folder's entries


def test_a_small_tree_is_not_split(tmp_path: Path, forks: Forks) -> None:
    for i in range(SPLIT_AFTER - 10):
        folder = tmp_path / f"d{i % 9}"
        folder.mkdir(exist_ok=True)
        (folder / f"f{i}.txt").write_text("hit\n")
    got = page(tmp_path, "hit", split=True)
    assert (len(got.matches), got.searched, forks.pids) == (SPLIT_AFTER - 10, SPLIT_AFTER - 10, [])


def test_the_queue_refuses_more_units_than_a_pipe_holds() -> None:
    with pytest.raises(ValueError, match="at most"):
        Fanout(fanout.MAX_UNITS + 1)


def test_a_child_s_large_result_comes_back_whole_and_the_child_is_reaped() -> None:
    sent = os.urandom(1 << 16) * 40  # 2.6 MB: many pipe-fulls
    fan = Fanout(2)
    try:
        assert fan.spawn(lambda: sent, [])
        pid = fan._pid
        assert pid is not None
        assert fan.collect(lambda: False) == sent
    finally:
        fan.close()
    assert fanout.join_reapers(timeout=30)
    assert not psutil.pid_exists(pid)


def test_a_child_killed_while_sending_gives_no_result() -> None:
    fan = Fanout(2)
    try:
        # More than a pipe holds: the child is still sending when the parent first looks.
        assert fan.spawn(lambda: b"x" * (4 << 20), [])
        pid = fan._pid
        assert pid is not None
        killed: list[int] = []

        def kill_once() -> bool:
            if not killed:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            return False

        assert fan.collect(kill_once) is None
    finally:
        fan.close()
    assert fanout.join_reapers(timeout=30)
    assert not psutil.pid_exists(pid)


def test_a_child_that_fails_before_sending_gives_no_result() -> None:
    def fail() -> bytes:
        raise RuntimeError("the child's work failed")

    fan = Fanout(2)
    try:
        assert fan.spawn(fail, [])
        assert fan.collect(lambda: False) is None
    finally:
        fan.close()
    assert fanout.join_reapers(timeout=30)


def test_a_folder_of_more_units_than_the_queue_holds_is_searched_whole_in_one_process(
    tmp_path: Path, forks: Forks
) -> None:
    for i in range(fanout.MAX_UNITS + 50):
        (tmp_path / f"f{i:05}.txt").write_text("hit\n" if i % 2 else "miss\n")
    got = page(tmp_path, "hit", split=True)
    assert (len(got.matches), got.searched, got.stop_at) == (537, fanout.MAX_UNITS + 50, None)
    assert forks.pids == []


async def test_the_server_searches_a_large_tree_split_and_leaves_no_child(
    tmp_path: Path, forks: Forks
) -> None:
    async with serving(tmp_path) as served:
        root = served.workspace / "big"
        root.mkdir()
        grow(root)
        expected = every_page(root, 250, split=False)
        c = await served.client()
        try:
            pages: list[list[tuple[str, int, str]]] = []
            cursor = None
            while True:
                params: dict[str, Any] = {"query": "hit", "path": "big", "maxResults": 250}
                if cursor is not None:
                    params["cursor"] = cursor
                result = (await c.request("fs/search", params))["result"]
                pages.append([(m["path"][4:], m["line"], m["text"]) for m in result["matches"]])
                cursor = result["nextCursor"]
                if cursor is None:
                    break
        finally:
            await c.close()
        assert pages == [p[0] for p in expected]
        assert forks.pids, "the server's search forked"
        # A child that sent its result is reaped by a thread once it has exited.
        assert fanout.join_reapers(timeout=30)
        for pid in forks.pids:  # every child reaped: not even a zombie left
            assert not psutil.pid_exists(pid)


# Each state held a millisecond: a folder listed as a folder is often a symlink by the time
# its unit is walked (a search takes a few).
SWAPPER = r"""
import os, sys, time
folder, out = sys.argv[1], sys.argv[2]
hold = folder + "-hold"
print("ready", flush=True)
while True:
    try:
        os.rename(folder, hold)
        os.symlink(out, folder)  # the folder leads outside
        time.sleep(0.001)
        os.unlink(folder)
        os.rename(hold, folder)
        time.sleep(0.001)
    except OSError:
        pass
"""


async def test_a_folder_swapped_for_a_symlink_during_split_walks_never_leads_outside(
    tmp_path: Path, forks: Forks
) -> None:
    """Both processes open each folder by its bare name under its parent's descriptor with
    O_NOFOLLOW: a symlink swapped in anywhere below is never followed."""
    ws = tmp_path / "ws"
    ws.mkdir()
    grow(ws)
    out = tmp_path / "outside"
    out.mkdir()
    for i in range(50):
        (out / f"f{i}.txt").write_text("hit OUTSIDE\n")
    swapper = await asyncio.create_subprocess_exec(
        sys.executable, "-c", SWAPPER, str(ws / "t3" / "s2"), str(out),
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert swapper.stdout is not None
        assert await asyncio.wait_for(swapper.stdout.readline(), 60) == b"ready\n"
        escapes = []
        for _ in range(30):
            got = await asyncio.to_thread(page, ws, "OUTSIDE", split=True)
            escapes += got.matches
    finally:
        swapper.kill()
        await swapper.wait()
    assert escapes == [], len(escapes)
    assert len(forks.pids) == 30  # every search was shared with a child
