"""fs/edit through the real JSON-RPC server over a Unix socket: every refusal, atomicity."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

from lapce_bridge.ipc.raw import RawClient
from tests.integration.test_fs_server import serving

SOURCE = "def add(a, b):\n    return a + b\n\n\ndef sub(a, b):\n    return a - b\n"


async def edit(c: RawClient, **params: Any) -> dict[str, Any]:
    reply: dict[str, Any] = await c.request("fs/edit", params)
    return reply


def one(old: str, new: str, **more: Any) -> list[dict[str, Any]]:
    return [{"oldText": old, "newText": new, **more}]


async def test_a_unique_match_is_replaced_and_answered_with_a_diff(tmp_path: Path) -> None:
    async with serving(tmp_path) as srv:
        target = srv.workspace / "calc.py"
        target.write_text(SOURCE)
        c = await srv.client()
        out = (await edit(c, path="calc.py", edits=one("return a - b", "return b - a")))["result"]
        assert target.read_text() == SOURCE.replace("return a - b", "return b - a")
        assert out["replacements"] == 1
        assert out["mtimeNs"] == target.stat().st_mtime_ns
        assert out["size"] == target.stat().st_size
        assert out["dryRun"] is False
        assert out["diff"].startswith("--- a/calc.py\n+++ b/calc.py\n@@")
        assert "-    return a - b\n+    return b - a\n" in out["diff"]
        read = (await c.request("fs/read", {"path": "calc.py"}))["result"]
        assert read["content"] == target.read_text()
        assert read["mtimeNs"] == out["mtimeNs"]
        await c.close()


async def test_an_ambiguous_match_is_refused_naming_its_lines(tmp_path: Path) -> None:
    async with serving(tmp_path) as srv:
        target = srv.workspace / "calc.py"
        target.write_text(SOURCE)
        before = target.stat().st_mtime_ns
        c = await srv.client()
        err = (await edit(c, path="calc.py", edits=one("(a, b):", "(x, y):")))["error"]
        assert err["code"] == -32602
        assert "edits[0].oldText matched 2 times, expected 1" in err["message"]
        assert "lines 1, 5" in err["message"]
        assert "nothing was written" in err["message"]
        assert err["data"]["edits"] == [
            {"index": 0, "expected": 1, "matches": 2, "lines": [1, 5], "nearest": []}
        ]
        assert (target.read_text(), target.stat().st_mtime_ns) == (SOURCE, before)
        # Stating the count makes the same edit legal.
        done = await edit(c, path="calc.py", edits=one("(a, b):", "(x, y):", count=2))
        assert done["result"]["replacements"] == 2
        assert target.read_text().count("(x, y):") == 2
        await c.close()


async def test_no_match_names_the_nearest_lines_and_writes_nothing(tmp_path: Path) -> None:
    async with serving(tmp_path) as srv:
        target = srv.workspace / "calc.py"
        target.write_text(SOURCE)
        c = await srv.client()
        edits = [
            {"oldText": "def add(a, b):", "newText": "def plus(a, b):"},  # fine alone
            {"oldText": "return a * b", "newText": "return a ** b"},  # matches nowhere
        ]
        err = (await edit(c, path="calc.py", edits=edits))["error"]
        assert err["code"] == -32602
        [miss] = err["data"]["edits"]
        assert (miss["index"], miss["matches"], miss["expected"]) == (1, 0, 1)
        assert [n["line"] for n in miss["nearest"]][:2] == [2, 6]
        assert miss["nearest"][0]["text"] == "    return a + b"
        assert "edits[1].oldText matched 0 times" in err["message"]
        assert target.read_text() == SOURCE  # the matching first edit was not written either
        await c.close()


async def test_edits_apply_in_order_each_to_the_result_of_the_last(tmp_path: Path) -> None:
    async with serving(tmp_path) as srv:
        target = srv.workspace / "calc.py"
        target.write_text(SOURCE)
        c = await srv.client()
        edits = [
            {"oldText": "def add", "newText": "def plus"},
            {"oldText": "def plus(a, b):", "newText": "def plus(a, b, c=0):"},
            {"oldText": "return a + b", "newText": "return a + b + c"},
        ]
        out = (await edit(c, path="calc.py", edits=edits))["result"]
        assert out["replacements"] == 3
        assert target.read_text().startswith("def plus(a, b, c=0):\n    return a + b + c\n")
        await c.close()


async def test_dry_run_answers_the_diff_and_writes_nothing(tmp_path: Path) -> None:
    async with serving(tmp_path) as srv:
        target = srv.workspace / "calc.py"
        target.write_text(SOURCE)
        before = target.stat().st_mtime_ns
        c = await srv.client()
        out = (await edit(c, path="calc.py", edits=one("a - b", "b - a"), dryRun=True))["result"]
        assert out["dryRun"] is True
        assert "+    return b - a\n" in out["diff"]
        assert out["mtimeNs"] == before
        assert (target.read_text(), target.stat().st_mtime_ns) == (SOURCE, before)
        await c.close()


async def test_a_stale_expected_mtime_is_a_conflict(tmp_path: Path) -> None:
    async with serving(tmp_path) as srv:
        target = srv.workspace / "calc.py"
        target.write_text(SOURCE)
        c = await srv.client()
        seen = target.stat().st_mtime_ns
        target.write_text(SOURCE + "# changed by someone else\n")
        os.utime(target, ns=(seen + 10**9, seen + 10**9))
        err = await edit(c, path="calc.py", edits=one("a - b", "b - a"), expectedMtimeNs=seen)
        assert err["error"]["code"] == -32004
        assert err["error"]["data"]["mtimeNs"] == seen + 10**9
        assert "changed since it was read" in err["error"]["message"]
        assert "someone else" in target.read_text()
        assert "b - a" not in target.read_text()
        fresh = await edit(
            c, path="calc.py", edits=one("a - b", "b - a"), expectedMtimeNs=seen + 10**9
        )
        assert fresh["result"]["replacements"] == 1
        await c.close()


async def test_refusals_of_bad_paths_and_files(tmp_path: Path) -> None:
    async with serving(tmp_path) as srv:
        c = await srv.client()
        (tmp_path / "outside.txt").write_text("secret")
        outside = (await edit(c, path="../../outside.txt", edits=one("secret", "x")))["error"]
        assert outside["code"] == -32006
        missing = (await edit(c, path="nope.py", edits=one("a", "b")))["error"]
        assert (missing["code"], missing["data"]["errno"]) == (-32004, "ENOENT")
        (srv.workspace / "blob.bin").write_bytes(b"\xff\xfe\x00abc")
        binary = (await edit(c, path="blob.bin", edits=one("abc", "x")))["error"]
        assert binary["code"] == -32602
        assert "not UTF-8" in binary["message"]
        folder = (await edit(c, path="src", edits=one("a", "b")))["error"]
        assert folder["code"] == -32004
        assert folder["data"]["errno"] == "EISDIR"
        assert (tmp_path / "outside.txt").read_text() == "secret"
        await c.close()


async def test_malformed_params_are_refused_naming_the_parameter(tmp_path: Path) -> None:
    async with serving(tmp_path) as srv:
        c = await srv.client()
        cases: list[tuple[dict[str, Any], str]] = [
            ({"path": "src/main.py", "edits": one("a", "b"), "dryrun": True},
             "fs/edit: unknown parameter 'dryrun'"),
            ({"edits": one("a", "b")}, "fs/edit: missing parameter 'path'"),
            ({"path": "src/main.py", "edits": []}, "fs/edit: parameter 'edits' must be an array"),
            ({"path": "src/main.py", "edits": one("", "b")},
             "fs/edit: parameter 'edits[0].oldText'"),
            ({"path": "src/main.py", "edits": one("a", "b", count=0)},
             "fs/edit: parameter 'edits[0].count' must be an integer >= 1"),
            ({"path": "src/main.py", "edits": [{"oldText": "a", "newtext": "b"}]},
             "fs/edit: unknown parameter 'edits[0].newtext'"),
            ({"path": "src/main.py", "edits": one("a", "b"), "dryRun": "yes"},
             "fs/edit: parameter 'dryRun' must be a boolean, got a string"),
        ]  # fmt: skip
        for params, message in cases:
            err = (await c.request("fs/edit", params))["error"]
            assert err["code"] == -32602, params
            assert err["message"].startswith(message), (params, err["message"])
        assert (srv.workspace / "src" / "main.py").read_text() == "print('hi')\n"
        await c.close()


async def test_crlf_files_get_a_hint(tmp_path: Path) -> None:
    async with serving(tmp_path) as srv:
        (srv.workspace / "win.txt").write_bytes(b"one\r\ntwo\r\nthree\r\n")
        c = await srv.client()
        err = (await edit(c, path="win.txt", edits=one("one\ntwo", "1\n2")))["error"]
        assert "CRLF" in err["message"]
        assert "CRLF" in err["data"]["edits"][0]["hint"]
        ok = await edit(c, path="win.txt", edits=one("one\r\ntwo", "1\r\n2"))
        assert ok["result"]["replacements"] == 1
        assert (srv.workspace / "win.txt").read_bytes() == b"1\r\n2\r\nthree\r\n"
        await c.close()


async def test_concurrent_editors_and_writers_lose_no_update(tmp_path: Path) -> None:
    """Two clients edit their own line while a third rewrites the file with fs/write
    (read, change, write with expectedMtimeNs, again on conflict): every change survives."""
    rounds = 15
    async with serving(tmp_path) as srv:
        target = srv.workspace / "counters.txt"
        target.write_text("a=0\nb=0\nc=0\n")
        clients = [await srv.client() for _ in range(3)]

        async def editor(c: RawClient, name: str) -> None:
            for i in range(rounds):
                out = await edit(
                    c, path="counters.txt", edits=one(f"{name}={i}\n", f"{name}={i + 1}\n")
                )
                assert "result" in out, out

        async def writer(c: RawClient) -> None:
            done = 0
            while done < rounds:
                read = (await c.request("fs/read", {"path": "counters.txt"}))["result"]
                lines = read["content"].splitlines(keepends=True)
                value = int(lines[2].split("=")[1])
                lines[2] = f"c={value + 1}\n"
                out = await c.request(
                    "fs/write",
                    {"path": "counters.txt", "content": "".join(lines),
                     "expectedMtimeNs": read["mtimeNs"]},
                )  # fmt: skip
                if "result" in out:
                    done += 1
                else:
                    assert out["error"]["code"] == -32004, out  # a conflict: read again

        await asyncio.gather(editor(clients[0], "a"), editor(clients[1], "b"), writer(clients[2]))
        assert target.read_text() == f"a={rounds}\nb={rounds}\nc={rounds}\n"
        assert not [n for n in os.listdir(srv.workspace) if n.startswith(".lapce-bridge-")]
        for c in clients:
            await c.close()
