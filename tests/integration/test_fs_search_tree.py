"""fs/search and fs/tree through the real JSON-RPC server over a Unix socket."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

from lapce_bridge.fs.ignore import Globs, IgnoreRules
from lapce_bridge.fs.ops import REAL_FS
from lapce_bridge.fs.search import Scan, compile_finder
from lapce_bridge.ipc.raw import RawClient
from lapce_bridge.testing import FakeClock
from tests.integration.test_fs_server import serving


def populate(ws: Path) -> None:
    (ws / ".gitignore").write_text("*.log\n!keep.log\nbuild/\n/top-only.txt\n")
    files = {
        "src/app.py": "import os\n\ndef main():\n    print('TODO: start')\n",
        "src/util.py": "# todo lower case\nVALUE = 1  # TODO: name\n",
        "src/deep/inner.py": "x = 1\n",
        "src/deep/.gitignore": "generated.py\n",
        "src/deep/generated.py": "TODO generated\n",
        "notes.log": "TODO in a log\n",
        "keep.log": "TODO kept log\n",
        "build/out.txt": "TODO build output\n",
        "top-only.txt": "TODO top\n",
        "docs/top-only.txt": "TODO docs copy\n",
        ".git/config": "TODO git internals\n",
    }
    for rel, text in files.items():
        path = ws / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    (ws / "image.bin").write_bytes(b"\x89PNG\x00\x00TODO binary\n")


async def search(c: RawClient, **params: Any) -> dict[str, Any]:
    reply: dict[str, Any] = await c.request("fs/search", params)
    return reply


def hits(result: dict[str, Any]) -> list[tuple[str, int]]:
    return [(m["path"], m["line"]) for m in result["matches"]]


async def test_literal_search_respects_gitignore_and_skips_binary(tmp_path: Path) -> None:
    async with serving(tmp_path) as srv:
        populate(srv.workspace)
        c = await srv.client()
        out = (await search(c, query="TODO"))["result"]
        assert hits(out) == [
            ("docs/top-only.txt", 1),
            ("keep.log", 1),
            ("src/app.py", 4),
            ("src/util.py", 2),
        ]
        assert out["matches"][2]["text"] == "    print('TODO: start')"
        assert (out["complete"], out["nextCursor"], out["timedOut"]) == (True, None, False)
        assert out["filesSkipped"] == 1  # image.bin: a NUL in its first bytes
        everything = (await search(c, query="TODO", gitignore=False))["result"]
        found = {path for path, _ in hits(everything)}
        assert {"notes.log", "build/out.txt", "top-only.txt", "src/deep/generated.py"} <= found
        assert ".git/config" not in found
        assert "image.bin" not in found
        await c.close()


async def test_regex_case_and_globs(tmp_path: Path) -> None:
    async with serving(tmp_path) as srv:
        populate(srv.workspace)
        c = await srv.client()
        rx = (await search(c, query=r"^\s*print\(.*\)$", regex=True))["result"]
        assert hits(rx) == [("src/app.py", 4), ("src/main.py", 1)]
        anycase = await search(c, query="todo", caseSensitive=False, include=["*.py"])
        assert hits(anycase["result"]) == [
            ("src/app.py", 4),
            ("src/util.py", 1),
            ("src/util.py", 2),
        ]
        exact = (await search(c, query="todo", include=["*.py"]))["result"]
        assert hits(exact) == [("src/util.py", 1)]
        excluded = (await search(c, query="TODO", exclude=["src/"]))["result"]
        assert hits(excluded) == [("docs/top-only.txt", 1), ("keep.log", 1)]
        scoped = (await search(c, query="TODO", path="src"))["result"]
        assert hits(scoped) == [("src/app.py", 4), ("src/util.py", 2)]
        one_file = (await search(c, query="TODO", path="src/util.py"))["result"]
        assert hits(one_file) == [("src/util.py", 2)]
        await c.close()


async def test_regex_errors_and_bad_params_are_refused(tmp_path: Path) -> None:
    async with serving(tmp_path) as srv:
        c = await srv.client()
        bad = (await search(c, query="(unclosed", regex=True))["error"]
        assert bad["code"] == -32602
        assert bad["message"].startswith("fs/search: query is not a valid regular expression")
        assert "position 0" in bad["message"]
        typo = (await search(c, query="x", maxresults=3))["error"]
        assert (typo["code"], typo["message"]) == (
            -32602,
            "fs/search: unknown parameter 'maxresults'",
        )
        empty = (await search(c, query=""))["error"]
        assert empty["code"] == -32602
        assert "query" in empty["message"]
        outside = (await search(c, query="x", path="/etc"))["error"]
        assert outside["code"] == -32006
        missing = (await search(c, query="x", path="nowhere"))["error"]
        assert (missing["code"], missing["data"]["errno"]) == (-32004, "ENOENT")
        await c.close()


async def test_a_fifo_is_skipped_without_blocking_and_either_case_is_found(
    tmp_path: Path,
) -> None:
    async with serving(tmp_path) as srv:
        os.mkfifo(srv.workspace / "pipe")
        (srv.workspace / "a.txt").write_text("Kelp\nkelp\nKELP\nhelp\n")
        (srv.workspace / "b.txt").write_text("no such word, only a k and a K\n")
        c = await srv.client()
        # Nobody writes to the FIFO: opening or reading it for real would block forever.
        fifo = (await search(c, query="x", path="pipe"))["result"]
        assert (fifo["matches"], fifo["filesSkipped"], fifo["complete"]) == ([], 1, True)
        # 'k' is the needle's rarest byte; files holding it in either case are searched.
        anycase = (await search(c, query="kelp", caseSensitive=False))["result"]
        assert hits(anycase) == [("a.txt", 1), ("a.txt", 2), ("a.txt", 3)]
        exact = (await search(c, query="Kelp"))["result"]
        assert hits(exact) == [("a.txt", 1)]
        assert exact["filesSkipped"] == 0  # the walk passes the FIFO by (not a regular file)
        await c.close()


async def test_paging_with_a_cursor_covers_every_match_once(tmp_path: Path) -> None:
    async with serving(tmp_path) as srv:
        for i in range(7):
            folder = srv.workspace / f"d{i % 3}"
            folder.mkdir(exist_ok=True)
            (folder / f"f{i}.txt").write_text("".join(f"hit {i}.{n}\nmiss\n" for n in range(3)))
        c = await srv.client()
        whole = (await search(c, query="hit", maxResults=1000))["result"]
        assert len(whole["matches"]) == 21
        assert whole["complete"]
        pages: list[dict[str, Any]] = []
        cursor = None
        while True:
            params: dict[str, Any] = {"query": "hit", "maxResults": 4}
            if cursor is not None:
                params["cursor"] = cursor
            page = (await search(c, **params))["result"]
            pages.append(page)
            cursor = page["nextCursor"]
            if cursor is None:
                assert page["complete"]
                break
            assert not page["complete"]
            assert len(page["matches"]) == 4
        assert [m for p in pages for m in p["matches"]] == whole["matches"]
        assert len(pages) == 6
        # A cursor belongs to its query; garbage is no cursor at all.
        other = (await search(c, query="miss", cursor=pages[0]["nextCursor"]))["error"]
        assert other["code"] == -32602
        assert "different search" in other["message"]
        junk = (await search(c, query="hit", cursor="not-a-cursor"))["error"]
        assert junk["code"] == -32602
        assert junk["data"]["parameter"] == "cursor"
        await c.close()


def scan_page(
    root: Path, query: str, resume: tuple[str, int] | None, max_results: int,
    clock: FakeClock, deadline: float, case_sensitive: bool = True, *, split: bool = False,
    stop: threading.Event | None = None, include: list[str] | None = None,
) -> Any:  # fmt: skip
    """One page of a literal search of `root` by `Scan` itself (.gitignore respected);
    `split`: shared with a forked child where the tree is large enough."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        return Scan(
            finder=compile_finder(query, regex=False, case_sensitive=case_sensitive),
            ops=REAL_FS,
            rules=IgnoreRules.for_folder(str(root), "."),
            include=Globs(include) if include else None,
            exclude=None,
            resume=resume,
            max_results=max_results,
            deadline=deadline,
            clock=clock,
            stop=stop or threading.Event(),
        ).run(".", fd, True, split=split)
    finally:
        os.close(fd)


def test_a_full_page_is_cut_inside_a_file_and_resumes_at_the_next_line(tmp_path: Path) -> None:
    for name in ("a.txt", "b.txt", "c.txt"):
        (tmp_path / name).write_text("hit 1\nmiss\nhit 3\nhit 4\n")
    (tmp_path / "d.txt").write_text("nothing here\n")
    clock = FakeClock()
    first = scan_page(tmp_path, "hit", None, 4, clock, clock.now() + 60)
    assert [(m.path, m.line) for m in first.matches] == [
        ("a.txt", 1), ("a.txt", 3), ("a.txt", 4), ("b.txt", 1),
    ]  # fmt: skip
    # Cut at b.txt's second hit: b.txt counts as searched, the page resumes after line 2.
    assert (first.stop_at, first.searched, first.timed_out) == (("b.txt", 2), 2, False)
    rest = scan_page(tmp_path, "hit", first.stop_at, 100, clock, clock.now() + 60)
    assert [(m.path, m.line) for m in rest.matches] == [
        ("b.txt", 3), ("b.txt", 4), ("c.txt", 1), ("c.txt", 3), ("c.txt", 4),
    ]  # fmt: skip
    assert (rest.stop_at, rest.searched) == (None, 3)


def test_a_search_out_of_time_stops_with_a_cursor_that_resumes(tmp_path: Path) -> None:
    for i in range(200):
        (tmp_path / f"f{i:03}.txt").write_text(f"needle {i}\n")
    clock = FakeClock()

    def scan(deadline: float, resume: tuple[str, int] | None) -> Any:
        return scan_page(tmp_path, "needle", resume, 1000, clock, deadline)

    late = scan(clock.now(), None)  # the deadline has already come
    assert (late.timed_out, late.stop_at, late.matches) == (True, ("f000.txt", 0), [])
    resumed = scan(clock.now() + 1, late.stop_at)
    assert (resumed.timed_out, resumed.stop_at) == (False, None)
    assert [m.line for m in resumed.matches] == [1] * 200
    assert resumed.matches[0].path == "f000.txt"
    assert resumed.matches[-1].path == "f199.txt"


async def test_tree_is_depth_limited_with_sizes_and_kinds(tmp_path: Path) -> None:
    async with serving(tmp_path) as srv:
        populate(srv.workspace)
        (srv.workspace / "link").symlink_to("src")
        c = await srv.client()
        out = (await c.request("fs/tree", {"depth": 1}))["result"]
        names = [(e["name"], e["kind"]) for e in out["entries"]]
        assert ("link", "symlink") in names
        assert ("src", "directory") in names
        assert (".git", "directory") in names  # gitignore not asked for: everything
        src = next(e for e in out["entries"] if e["name"] == "src")
        assert src["children"] is None  # below the depth limit
        deep = await c.request("fs/tree", {"path": "src", "depth": 3, "gitignore": True})
        tree = deep["result"]
        assert tree["path"] == "src"
        by_name = {e["name"]: e for e in tree["entries"]}
        assert by_name["app.py"]["size"] == (srv.workspace / "src/app.py").stat().st_size
        inner = {e["name"] for e in by_name["deep"]["children"]}
        assert inner == {".gitignore", "inner.py"}  # generated.py is ignored
        top = (await c.request("fs/tree", {"gitignore": True}))["result"]
        top_names = {e["name"] for e in top["entries"]}
        assert not {"notes.log", "build", ".git", "top-only.txt"} & top_names
        assert {"keep.log", "docs", "image.bin"} <= top_names
        capped = (await c.request("fs/tree", {"depth": 5, "maxEntries": 3}))["result"]
        assert (capped["count"], capped["truncated"]) == (3, True)
        bad = (await c.request("fs/tree", {"path": "src/app.py"}))["error"]
        assert bad["code"] == -32602
        assert "not a folder" in bad["message"]
        deep_err = (await c.request("fs/tree", {"depth": 0}))["error"]
        assert deep_err["message"] == "fs/tree: parameter 'depth' must be an integer >= 1"
        await c.close()
