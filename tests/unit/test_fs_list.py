"""fs/list: large folders in a thread, listings too large for a message refused, odd names."""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path
from typing import Any

import orjson
import pytest

from lapce_bridge.core.errors import BridgeError, FileTooLarge
from lapce_bridge.fs.files import THREAD_LIST_DIR_BYTES
from lapce_bridge.fs.listing import ENTRY_JSON_BYTES, fs_error, list_folder
from lapce_bridge.fs.ops import RealFs
from lapce_bridge.fs.paths import Workspace, for_wire
from lapce_bridge.fs.service import FileService
from lapce_bridge.fs.watch import WatcherRecovery, watchfiles_backend
from lapce_bridge.testing import FakeClock


class ThreadRecordingFs(RealFs):
    """The real calls, noting which thread listed a folder."""

    def __init__(self) -> None:
        self.scandir_threads: list[threading.Thread] = []

    def scandir(self, path: str | int) -> list[os.DirEntry[str]]:
        self.scandir_threads.append(threading.current_thread())
        return RealFs.scandir(path)


def make_odd_file(folder: Path, name: bytes, content: bytes = b"x") -> None:
    with open(os.path.join(os.fsencode(folder), name), "wb") as f:
        f.write(content)


class Ctx:
    connection_id = 1
    received_at = 0.0

    def notify(self, method: str, params: Any) -> None:
        raise AssertionError("no notification expected")

    def on_close(self, callback: Any) -> None:
        raise AssertionError("no watch expected")


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    root = tmp_path.resolve() / "ws"
    (root / "small").mkdir(parents=True)
    (root / "small" / "one.txt").write_text("1")
    big = root / "big"
    big.mkdir()
    for i in range(400):
        (big / f"entry-with-a-longish-name-{i:04d}.txt").write_text("x" * (i % 7))
    (big / f".lapce-bridge-{os.getpid()}-0123456789ab.tmp").write_text("temp")
    return root


async def test_a_large_folder_is_listed_in_a_thread_a_small_one_inline(ws: Path) -> None:
    assert os.stat(ws / "big").st_size > THREAD_LIST_DIR_BYTES
    assert os.stat(ws / "small").st_size <= THREAD_LIST_DIR_BYTES
    ops = ThreadRecordingFs()
    svc = FileService(workspace=ws, clock=FakeClock(), ops=ops, sweep_on_start=False)
    listing = svc.methods()["fs/list"].handler
    small = await listing({"path": "small"}, Ctx())
    assert [e["name"] for e in small] == ["one.txt"]
    assert ops.scandir_threads == [threading.current_thread()]
    big = await listing({"path": "big"}, Ctx())
    names = [e["name"] for e in big]
    assert names == sorted(f"entry-with-a-longish-name-{i:04d}.txt" for i in range(400))
    assert [e["size"] for e in big[:8]] == [0, 1, 2, 3, 4, 5, 6, 0]
    assert ops.scandir_threads[1] is not threading.current_thread()
    assert svc.statistics().store.threaded_lists == 1


async def test_a_listing_too_large_for_a_message_is_refused(ws: Path) -> None:
    workspace = Workspace(ws)
    need = sum(ENTRY_JSON_BYTES + len(n) for n in os.listdir(ws / "big") if n.endswith(".txt"))
    assert len(list_folder(workspace, "big", max_bytes=need)) == 400
    with pytest.raises(FileTooLarge) as info:
        list_folder(workspace, "big", max_bytes=need - 1)
    assert info.value.code == -32004
    assert not info.value.classification.retryable
    assert info.value.to_wire()["limit"] == need - 1
    assert "subfolders" in str(info.value)
    # The budget is a true bound: the listing that fits is no larger as JSON.
    assert len(orjson.dumps(list_folder(workspace, "big", max_bytes=need))) <= need


async def test_a_listing_too_large_for_a_message_in_a_thread_too(ws: Path) -> None:
    svc = FileService(workspace=ws, clock=FakeClock(), sweep_on_start=False)
    svc.store.max_list_bytes = 1000
    with pytest.raises(FileTooLarge):
        await svc.methods()["fs/list"].handler({"path": "big"}, Ctx())
    assert svc.statistics().store.threaded_lists == 1


def test_a_name_that_is_not_utf8_is_listed_escaped_and_encodable(ws: Path) -> None:
    make_odd_file(ws / "small", b"caf\xe9.txt", b"latin-1 name")
    entries = list_folder(Workspace(ws), "small")
    assert entries[0]["name"] == "caf\\xe9.txt"
    assert entries[0]["undecodable"] is True
    assert entries[0]["size"] == 12
    assert "undecodable" not in entries[1]
    assert b"caf\\\\xe9.txt" in orjson.dumps(entries)


def test_for_wire_keeps_good_names_as_they_are() -> None:
    name = "naïve 漢字.txt"
    assert for_wire(name) is name
    assert for_wire(os.fsdecode(b"\xff\xfe")) == "\\xff\\xfe"


def test_an_error_on_an_undecodable_path_is_encodable() -> None:
    error = fs_error(OSError(5, "Input/output error"), "read", os.fsdecode(b"dir/\xff"))
    assert isinstance(error, BridgeError)
    wire = error.to_wire()
    assert wire["path"] == "dir/\\xff"
    orjson.dumps(wire)
    orjson.dumps(str(error))


async def test_a_change_to_an_undecodable_name_is_still_notified(ws: Path) -> None:
    got: list[list[dict[str, str]]] = []
    arrived = asyncio.Event()

    def sink(watch_id: str, changes: list[dict[str, str]]) -> None:
        got.append(changes)
        arrived.set()

    recovery = WatcherRecovery(
        relative=Workspace(ws).relative,
        clock=FakeClock(),
        backend=watchfiles_backend(debounce_ms=50, step_ms=5),
    )
    async with recovery:
        await recovery.watch([str(ws / "small")], sink=sink)
        make_odd_file(ws / "small", b"\xff.txt")
        (ws / "small" / "fine.txt").write_text("y")
        async with asyncio.timeout(10):
            while not any(c["path"] == "small/fine.txt" for batch in got for c in batch):
                arrived.clear()
                await arrived.wait()
    changes = [c for batch in got for c in batch]
    assert {"path": "small/\\xff.txt", "kind": "added"} in changes
    orjson.dumps(got)
