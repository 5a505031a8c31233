"""FileService's fs/* methods: params, wire shapes, errors, watches per connection."""

from __future__ import annotations

import asyncio
import base64
import errno
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from lapce_bridge.core.errors import (
    BridgeError,
    ConflictError,
    InvalidParams,
    PermissionDenied,
    Unavailable,
)
from lapce_bridge.core.timeouts import TimeoutManager
from lapce_bridge.fs.service import FileService, default_retry
from lapce_bridge.fs.watch import watchfiles_backend
from lapce_bridge.ipc.dispatch import RequestContext
from lapce_bridge.testing import FakeClock
from lapce_bridge.testing.faultfs import Fault, FaultyFs
from lapce_bridge.testing.memory import MemoryClient, MemoryServer

_servers: dict[int, MemoryServer] = {}


def connect(svc: FileService) -> MemoryClient:
    """A client of the service through the real dispatcher (in-memory transport); the
    dispatcher's limits run on real time, so an autojumping clock cannot expire them."""
    server = _servers.get(id(svc))
    if server is None:
        server = MemoryServer(svc.methods(), clock=svc.clock, timeouts=TimeoutManager())
        _servers[id(svc)] = server
    return server.connect()


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    root = tmp_path.resolve() / "ws"
    (root / "src").mkdir(parents=True)
    (root / "src" / "main.py").write_text("print('hi')\n")
    return root


@pytest.fixture
async def svc(ws: Path) -> AsyncIterator[FileService]:
    service = FileService(
        workspace=ws,
        clock=FakeClock(autojump=True),
        racy_window_ns=0,
        watch_backend=watchfiles_backend(debounce_ms=50, step_ms=5),
    )
    async with service:
        yield service


async def call(svc: FileService, name: str, params: Any, ctx: MemoryClient | None = None) -> Any:
    return await (ctx or connect(svc)).request(name, params)


def test_method_table_sync_where_inline_answers_pay(ws: Path) -> None:
    table = FileService(workspace=ws).methods()
    assert {name: m.is_async for name, m in table.items()} == {
        "fs/read": True,
        "fs/write": True,
        "fs/stat": False,
        "fs/list": True,  # a large folder is listed in a thread
        "fs/watch": True,
        "fs/unwatch": False,
        "fs/edit": True,  # reads, then writes in a thread
        "fs/search": True,  # walks in threads
        "fs/tree": True,
    }


async def test_read_shape_and_cache(svc: FileService) -> None:
    first = await call(svc, "fs/read", {"path": "src/main.py"})
    assert first == {
        "content": "print('hi')\n",
        "encoding": "utf-8",
        "size": 12,
        "mtimeNs": first["mtimeNs"],
        "fromCache": False,
        "stale": False,
    }
    assert (await call(svc, "fs/read", {"path": "src/main.py"}))["fromCache"] is True


async def test_binary_round_trip_through_base64(svc: FileService, ws: Path) -> None:
    blob = bytes(range(256)) * 3
    encoded = base64.b64encode(blob).decode()
    written = await call(
        svc, "fs/write", {"path": "b.bin", "content": encoded, "encoding": "base64"}
    )
    assert written["size"] == len(blob)
    assert (ws / "b.bin").read_bytes() == blob
    read = await call(svc, "fs/read", {"path": "b.bin", "encoding": "base64"})
    assert base64.b64decode(read["content"]) == blob
    assert read["mtimeNs"] == written["mtimeNs"]


async def test_invalid_utf8_suggests_base64(svc: FileService, ws: Path) -> None:
    (ws / "latin1.txt").write_bytes(b"caf\xe9")
    with pytest.raises(InvalidParams, match="base64") as info:
        await call(svc, "fs/read", {"path": "latin1.txt"})
    assert "byte 3" in info.value.detail


@pytest.mark.parametrize(
    ("params", "needle"),
    [
        ([1, 2], "object"),
        ({}, "path"),
        ({"path": 5}, "path"),
        ({"path": "x", "encoding": "latin-1"}, "encoding"),
    ],
)
async def test_read_param_errors(svc: FileService, params: Any, needle: str) -> None:
    with pytest.raises(InvalidParams, match=needle):
        await call(svc, "fs/read", params)


@pytest.mark.parametrize(
    ("params", "needle"),
    [
        ({"path": "f"}, "content"),
        ({"path": "f", "content": 3}, "content"),
        ({"path": "f", "content": "%%%", "encoding": "base64"}, "base64"),
        ({"path": "f", "content": "x", "expectedMtimeNs": -1}, "expectedMtimeNs"),
        ({"path": "f", "content": "x", "expectedMtimeNs": True}, "expectedMtimeNs"),
        ({"path": "f", "content": "x", "expectedMtimeNs": "1"}, "expectedMtimeNs"),
        ({"path": "f", "content": "x", "createDirs": "yes"}, "createDirs"),
        ({"path": "", "content": "x"}, "empty"),
    ],
)
async def test_write_param_errors_write_nothing(
    svc: FileService, ws: Path, params: Any, needle: str
) -> None:
    with pytest.raises(InvalidParams, match=needle):
        await call(svc, "fs/write", params)
    assert not (ws / "f").exists()


async def test_write_refuses_a_lone_surrogate_from_an_in_process_caller(
    svc: FileService, ws: Path
) -> None:
    # JSON-RPC cannot carry one (the frame is refused as -32700); a caller in the same
    # process (a front end decoding JSON with the standard library) can.
    client = connect(svc)
    handler = svc.methods()["fs/write"].handler
    with pytest.raises(InvalidParams, match="utf-8"):
        await handler({"path": "f", "content": "\udc80"}, RequestContext(client.connection, 0.0))
    assert not (ws / "f").exists()


async def test_write_outside_is_refused(svc: FileService, ws: Path) -> None:
    with pytest.raises(PermissionDenied) as info:
        await call(svc, "fs/write", {"path": "../escaped", "content": "x"})
    assert info.value.code == -32006
    assert not (ws.parent / "escaped").exists()


async def test_write_through_a_symlinked_folder_outside_is_refused(
    svc: FileService, ws: Path
) -> None:
    outside = ws.parent / "outside"
    outside.mkdir()
    (ws / "out").symlink_to(outside)
    with pytest.raises(PermissionDenied):
        await call(svc, "fs/write", {"path": "out/new.txt", "content": "x"})
    assert list(outside.iterdir()) == []


async def test_lost_update_through_the_methods(svc: FileService, ws: Path) -> None:
    read = await call(svc, "fs/read", {"path": "src/main.py"})
    await call(svc, "fs/write", {"path": "src/main.py", "content": "theirs"})
    with pytest.raises(ConflictError) as info:
        await call(
            svc,
            "fs/write",
            {"path": "src/main.py", "content": "mine", "expectedMtimeNs": read["mtimeNs"]},
        )
    assert info.value.to_wire()["mtimeNs"] == os.stat(ws / "src" / "main.py").st_mtime_ns
    assert (ws / "src" / "main.py").read_text() == "theirs"
    created = await call(svc, "fs/write", {"path": "n", "content": "1", "expectedMtimeNs": 0})
    assert created["size"] == 1
    with pytest.raises(ConflictError, match="create only"):
        await call(svc, "fs/write", {"path": "n", "content": "2", "expectedMtimeNs": 0})
    # null: no check at all.
    await call(svc, "fs/write", {"path": "n", "content": "3", "expectedMtimeNs": None})
    assert (ws / "n").read_text() == "3"


async def test_stat_kinds(svc: FileService, ws: Path) -> None:
    (ws / "alias.py").symlink_to(ws / "src" / "main.py")
    os.mkfifo(ws / "fifo")
    ctx = connect(svc)

    async def stat(params: Any, ctx: MemoryClient) -> Any:
        return await call(svc, "fs/stat", params, ctx)

    assert await stat({"path": "src/main.py"}, ctx) == {
        "size": 12,
        "mtimeNs": os.stat(ws / "src" / "main.py").st_mtime_ns,
        "kind": "file",
    }
    assert (await stat({"path": "src"}, ctx))["kind"] == "directory"
    assert (await stat({"path": "src"}, ctx))["size"] == 0
    link = await stat({"path": "alias.py"}, ctx)
    assert (link["kind"], link["targetKind"], link["size"], link["target"]) == (
        "symlink", "file", 12, "src/main.py"
    )  # fmt: skip
    assert (await stat({"path": "fifo"}, ctx))["kind"] == "other"
    with pytest.raises(BridgeError) as info:
        await stat({"path": "missing"}, ctx)
    assert (info.value.code, info.value.to_wire()["errno"]) == (-32004, "ENOENT")


async def test_list_sorted_hides_temps_and_defaults_to_the_root(svc: FileService, ws: Path) -> None:
    (ws / "b.txt").write_text("bb")
    (ws / "a.txt").write_text("a")
    (ws / f".lapce-bridge-{os.getpid()}-0123456789ab.tmp").write_text("half written")

    async def listing(params: Any, ctx: MemoryClient) -> Any:
        return await call(svc, "fs/list", params, ctx)

    entries = await listing({}, connect(svc))
    assert [(e["name"], e["kind"], e["size"]) for e in entries] == [
        ("a.txt", "file", 1),
        ("b.txt", "file", 2),
        ("src", "directory", 0),
    ]
    assert all("mtimeNs" in e for e in entries)
    assert [e["name"] for e in await listing({"path": "src"}, connect(svc))] == ["main.py"]
    with pytest.raises(BridgeError) as info:
        await listing({"path": "a.txt"}, connect(svc))
    assert info.value.to_wire()["errno"] == "ENOTDIR"


async def test_stat_and_list_report_transient_errors_as_retryable(ws: Path) -> None:
    fs = FaultyFs(faults=[Fault("lstat", errno.EIO), Fault("scandir", errno.EAGAIN)])
    svc = FileService(workspace=ws, ops=fs, sweep_on_start=False)
    with pytest.raises(BridgeError) as info:
        await call(svc, "fs/stat", {"path": "src"})
    assert info.value.code == -32004
    assert info.value.classification.retryable
    with pytest.raises(BridgeError) as info:
        await call(svc, "fs/list", {"path": "src"})
    assert info.value.code == -32004
    assert info.value.classification.retryable


async def test_stale_read_carries_the_reason(ws: Path) -> None:
    fs = FaultyFs()
    svc = FileService(workspace=ws, ops=fs, clock=FakeClock(autojump=True), racy_window_ns=0)
    async with svc:
        await call(svc, "fs/read", {"path": "src/main.py"})
        (ws / "src" / "main.py").write_text("new content, unreadable")
        fs.add(Fault("open", errno.ETIMEDOUT, times=None))
        result = await call(svc, "fs/read", {"path": "src/main.py"})
    assert (result["content"], result["stale"], result["fromCache"]) == (
        "print('hi')\n", True, True
    )  # fmt: skip
    assert "ETIMEDOUT" in result["staleReason"]
    assert svc.statistics().store.stale_served == 1


async def test_watch_notifies_the_connection_and_ends_with_it(svc: FileService, ws: Path) -> None:
    ctx = connect(svc)
    watch = await call(svc, "fs/watch", {"paths": ["src"]}, ctx)
    watch_id = watch["watchId"]
    (ws / "src" / "new.py").write_text("")
    async with asyncio.timeout(10):
        while not ctx.notes:
            ctx.noted.clear()
            await ctx.noted.wait()
    method, params = ctx.notes[0]
    assert method == "fs/didChange"
    assert params == {
        "watchId": watch_id,
        "changes": [{"path": "src/new.py", "kind": "added"}],
        "seq": 1,
    }
    with pytest.raises(InvalidParams):
        await call(svc, "fs/unwatch", {"watchId": watch_id})  # another connection's watch
    assert svc.watcher.watch_ids() == [watch_id]
    ctx.close()
    assert svc.watcher.watch_ids() == []


async def test_unwatch(svc: FileService) -> None:
    ctx = connect(svc)
    watch_id = (await call(svc, "fs/watch", {"paths": ["."], "recursive": False}, ctx))["watchId"]
    assert await call(svc, "fs/unwatch", {"watchId": watch_id}, ctx) is None
    assert svc.watcher.watch_ids() == []
    with pytest.raises(InvalidParams):
        await call(svc, "fs/unwatch", {"watchId": watch_id}, ctx)
    ctx.close()  # releasing an already released watch is harmless


@pytest.mark.parametrize(
    ("params", "error"),
    [
        ({}, InvalidParams),
        ({"paths": []}, InvalidParams),
        ({"paths": "src"}, InvalidParams),
        ({"paths": ["src"] * 65}, InvalidParams),
        ({"paths": ["src"], "recursive": 1}, InvalidParams),
        ({"paths": [".."]}, PermissionDenied),
        ({"paths": ["nope"]}, BridgeError),
    ],
)
async def test_watch_param_errors(svc: FileService, params: Any, error: type[Exception]) -> None:
    with pytest.raises(error):
        await call(svc, "fs/watch", params)
    assert svc.watcher.watch_ids() == []


class Flags:
    def __init__(self, on: bool) -> None:
        self.on = on

    def is_enabled(self, feature: str) -> bool:
        return self.on or feature != "file_watching"


@pytest.mark.parametrize("features", [Flags(False), lambda feature: feature != "file_watching"])
async def test_watch_unavailable_when_the_feature_is_off(ws: Path, features: Any) -> None:
    svc = FileService(workspace=ws, features=features)
    with pytest.raises(Unavailable) as info:
        await call(svc, "fs/watch", {"paths": ["."]})
    assert info.value.code == -32002


@pytest.fixture
def dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    return int(proc.stdout)


async def test_start_sweeps_temp_files_of_dead_writers(ws: Path, dead_pid: int) -> None:
    junk = ws / "src" / f".lapce-bridge-{dead_pid}-0123456789ab.tmp"
    junk.write_text("half a file")
    svc = FileService(workspace=ws)
    async with svc:
        assert await svc.swept() == 1
        assert not junk.exists()
        assert svc.statistics().temp_files_swept == 1


def test_default_retry_gives_up_well_within_a_second() -> None:
    policy = default_retry(FakeClock())
    delays = list(policy.delays())
    assert len(delays) == 3
    assert sum(delays) < 0.5
    assert [round(d / b, 2) >= 0.9 for d, b in zip(delays, (0.05, 0.1, 0.2), strict=True)] == [
        True, True, True
    ]  # fmt: skip


async def test_cache_is_exposed_for_pressure_relief(svc: FileService) -> None:
    await call(svc, "fs/read", {"path": "src/main.py"})
    assert svc.statistics().cache.bytes == 12
    assert svc.cache.trim(1.0) == 12
    assert svc.statistics().cache.entries == 0


async def test_stat_and_list_retry_eintr_at_once(ws: Path) -> None:
    fs = FaultyFs(faults=[Fault("lstat", errno.EINTR, times=2), Fault("scandir", errno.EINTR)])
    svc = FileService(workspace=ws, ops=fs, sweep_on_start=False)
    assert (await call(svc, "fs/stat", {"path": "src"}))["kind"] == "directory"
    assert [e["name"] for e in await call(svc, "fs/list", {"path": "src"})] == ["main.py"]
    assert fs.outcomes("lstat") == ["EINTR", "EINTR", "ok"]


async def test_a_repeated_cached_read_reuses_its_rendering(svc: FileService) -> None:
    # Object identity is what is checked, so this one calls the handler in-process.
    read = svc.methods()["fs/read"].handler
    ctx = RequestContext(connect(svc).connection, 0.0)
    await read({"path": "src/main.py"}, ctx)
    first = await read({"path": "src/main.py"}, ctx)
    entry = svc.cache.get_any(svc.workspace.resolve("src/main.py"))
    assert entry is not None
    assert entry.rendered == ("utf-8", first["content"])
    second = await read({"path": "src/main.py"}, ctx)
    assert second["content"] is first["content"]  # the very same str: nothing decoded again
    b64 = await call(svc, "fs/read", {"path": "src/main.py", "encoding": "base64"})
    assert base64.b64decode(b64["content"]) == b"print('hi')\n"
    assert entry.rendered == ("base64", b64["content"])
