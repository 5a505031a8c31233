"""Keyed watches come back with what changed meanwhile: real `serve` processes, real watchers.

A raw client watches under an idempotencyKey; the server is killed with SIGKILL (or the
client's connection drops); files are added, modified and deleted while nobody watches; the
client sends the same `fs/watch` again and gets the same watch back, then one `fs/didChange`
with exactly what it missed, `seq` going on from where it was.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

from lapce_bridge.ipc.raw import RawClient
from tests.integration.serve_process import serve

REAL_BOUND = 10.0


async def _changes(client: RawClient, watch_id: str, until: set[tuple[str, str]]) -> list[Any]:
    """fs/didChange notifications of `watch_id` until every (path, kind) in `until` came."""
    notes: list[Any] = []
    seen: set[tuple[str, str]] = set()
    async with asyncio.timeout(REAL_BOUND):
        while not until <= seen:
            msg = await client.recv()
            if msg.get("method") == "fs/didChange" and msg["params"]["watchId"] == watch_id:
                notes.append(msg["params"])
                seen |= {(c["path"], c["kind"]) for c in msg["params"]["changes"]}
    return notes


def _kinds(notes: list[Any]) -> set[tuple[str, str]]:
    return {(c["path"], c["kind"]) for n in notes for c in n["changes"]}


async def _watch(client: RawClient, key: str, paths: list[str]) -> dict[str, Any]:
    reply: dict[str, Any] = await client.request(
        "fs/watch", {"paths": paths, "idempotencyKey": key}
    )
    return reply


async def test_a_keyed_watch_survives_a_server_sigkill_and_reports_what_changed(
    tmp_path: Path,
) -> None:
    proj = tmp_path / "ws" / "proj"
    proj.mkdir(parents=True)
    (proj / "kept.txt").write_text("old")
    (proj / "gone.txt").write_text("x")
    async with serve(tmp_path) as served:
        client = await RawClient.connect_unix(served.socket)
        watch_id = (await _watch(client, "editor-1", ["proj"]))["result"]["watchId"]
        (proj / "live.txt").write_text("l")
        before = await _changes(client, watch_id, {("proj/live.txt", "added")})
        assert [n["seq"] for n in before] == list(range(1, len(before) + 1))
        served.proc.kill()  # SIGKILL: nothing is saved on the way out
        await served.proc.wait()
        await client.close()

    # While no server runs: one file added, one modified, one deleted, one folder made.
    (proj / "added.txt").write_text("a")
    (proj / "kept.txt").write_text("new content")
    (proj / "gone.txt").unlink()
    (proj / "sub").mkdir()
    (proj / "sub" / "deep.txt").write_text("d")

    async with serve(tmp_path) as served:
        client = await RawClient.connect_unix(served.socket)
        again = await _watch(client, "editor-1", ["proj"])
        assert again["result"]["watchId"] == watch_id
        missed = {
            ("proj/added.txt", "added"),
            ("proj/kept.txt", "modified"),
            ("proj/gone.txt", "deleted"),
            ("proj/sub", "added"),
            ("proj/sub/deep.txt", "added"),
        }
        notes = await _changes(client, watch_id, missed)
        assert _kinds(notes) == missed  # exactly what was missed: live.txt was reported
        assert notes[0]["seq"] == before[-1]["seq"] + 1
        (proj / "after.txt").write_text("z")
        later = await _changes(client, watch_id, {("proj/after.txt", "added")})
        assert later[0]["seq"] == notes[-1]["seq"] + 1

        other = await _watch(client, "editor-1", ["."])
        assert other["error"]["code"] == -32602  # the key names another watch

        assert (await client.request("fs/unwatch", {"watchId": watch_id}))["result"] is None
        (proj / "after-unwatch.txt").write_text("u")
        fresh = await _watch(client, "editor-1", ["."])  # forgotten: a new watch
        assert "result" in fresh
        await client.close()
    saved = tmp_path / "state" / "watches"
    assert oct(saved.stat().st_mode & 0o777) == "0o700"
    assert all(os.stat(p).st_mode & 0o077 == 0 for p in saved.iterdir())


async def test_a_keyed_watch_comes_back_after_a_reconnect(tmp_path: Path) -> None:
    proj = tmp_path / "ws" / "proj"
    proj.mkdir(parents=True)
    async with serve(tmp_path) as served:
        first = await RawClient.connect_unix(served.socket)
        watch_id = (await _watch(first, "k-reconnect", ["proj"]))["result"]["watchId"]
        repeat = await _watch(first, "k-reconnect", ["proj"])  # a plain repeat: the same one
        assert repeat["result"]["watchId"] == watch_id
        await first.close()
        (proj / "while-away.txt").write_text("w")
        second = await RawClient.connect_unix(served.socket)
        assert (await _watch(second, "k-reconnect", ["proj"]))["result"]["watchId"] == watch_id
        notes = await _changes(second, watch_id, {("proj/while-away.txt", "added")})
        assert _kinds(notes) == {("proj/while-away.txt", "added")}
        await second.close()


async def test_a_saved_watch_whose_folder_went_away_reports_it_and_waits_for_it(
    tmp_path: Path,
) -> None:
    proj = tmp_path / "ws" / "proj"
    proj.mkdir(parents=True)
    (proj / "a.txt").write_text("a")
    async with serve(tmp_path) as served:
        client = await RawClient.connect_unix(served.socket)
        watch_id = (await _watch(client, "k-gone", ["proj"]))["result"]["watchId"]
        served.proc.kill()
        await served.proc.wait()
        await client.close()
    (proj / "a.txt").unlink()
    proj.rmdir()  # the watched folder itself is gone while no server runs
    async with serve(tmp_path) as served:
        client = await RawClient.connect_unix(served.socket)
        assert (await _watch(client, "k-gone", ["proj"]))["result"]["watchId"] == watch_id
        gone = {("proj", "deleted"), ("proj/a.txt", "deleted")}
        assert _kinds(await _changes(client, watch_id, gone)) == gone
        proj.mkdir()
        (proj / "b.txt").write_text("b")
        back = {("proj", "added"), ("proj/b.txt", "added")}
        assert back <= _kinds(await _changes(client, watch_id, back))
        await client.close()
