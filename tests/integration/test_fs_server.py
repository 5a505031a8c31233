"""The fs/* methods through the real JSON-RPC server over a real Unix socket."""

from __future__ import annotations

import asyncio
import base64
import itertools
import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lapce_bridge.app import App
from lapce_bridge.fs.service import FileService
from lapce_bridge.fs.watch import watchfiles_backend
from lapce_bridge.ipc.raw import RawClient
from lapce_bridge.ipc.server import BridgeServer
from lapce_bridge.rpc import Method

REAL_BOUND = 10.0


@dataclass
class Served:
    app: App
    service: FileService
    socket: Path
    workspace: Path

    async def client(self) -> RawClient:
        return await RawClient.connect_unix(self.socket)


def workspace(tmp_path: Path) -> Path:
    ws = tmp_path.resolve() / "ws"
    (ws / "src").mkdir(parents=True)
    (ws / "src" / "main.py").write_text("print('hi')\n")
    return ws


@asynccontextmanager
async def serving(tmp_path: Path) -> AsyncIterator[Served]:
    ws = workspace(tmp_path)
    built: list[FileService] = []

    # Built as the composition root builds it: with the app's observe and degradation manager.
    def file_service(app: App) -> dict[str, Method]:
        built.append(
            FileService(
                workspace=ws,
                clock=app.clock,
                observe=app.observe,
                features=app.degradation,
                max_file_bytes=1 << 20,
                watch_backend=watchfiles_backend(debounce_ms=50, step_ms=5),
            )
        )
        return built[0].methods()

    async with (
        App(services=False, workspace=ws, extra_methods=file_service) as app,
        built[0] as service,
    ):
        server = BridgeServer(app)
        path = await server.listen_unix(tmp_path / "run" / "bridge.sock")
        try:
            yield Served(app, service, path, ws)
        finally:
            await server.aclose()


async def eventually(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(REAL_BOUND):
        for _ in itertools.count():
            if condition():
                return
            await asyncio.sleep(0.01)


async def test_a_write_into_a_missing_folder_says_how_to_make_it(tmp_path: Path) -> None:
    async with serving(tmp_path) as srv:
        c = await srv.client()
        missing = await c.request("fs/write", {"path": "docs/a.md", "content": "# A\n"})
        assert missing["error"]["data"]["errno"] == "ENOENT", missing
        assert missing["error"]["data"]["fault"] == "caller"
        assert "pass createDirs: true" in missing["error"]["data"]["detail"]
        assert not (srv.workspace / "docs").exists()
        await c.close()


async def test_write_read_stat_list_over_the_socket(tmp_path: Path) -> None:
    async with serving(tmp_path) as srv:
        c = await srv.client()
        wrote = (await c.request("fs/write", {"path": "docs/a.md", "content": "# A\n",
                                               "createDirs": True}))["result"]  # fmt: skip
        assert wrote["size"] == 4
        read = (await c.request("fs/read", {"path": "docs/a.md"}))["result"]
        assert (read["content"], read["mtimeNs"], read["stale"]) == (
            "# A\n",
            wrote["mtimeNs"],
            False,
        )
        blob = os.urandom(300)
        b64 = base64.b64encode(blob).decode()
        await c.request("fs/write", {"path": "b.bin", "content": b64, "encoding": "base64"})
        got = (await c.request("fs/read", {"path": "b.bin", "encoding": "base64"}))["result"]
        assert base64.b64decode(got["content"]) == blob
        stat = (await c.request("fs/stat", {"path": "docs"}))["result"]
        assert stat["kind"] == "directory"
        names = [e["name"] for e in (await c.request("fs/list", {"path": "."}))["result"]]
        assert names == ["b.bin", "docs", "src"]
        ops = srv.app.metrics.snapshot()["operations"]
        assert ops["fs/read"]["count"] == 2
        assert ops["fs/write"]["count"] == 2
        await c.close()


async def test_errors_carry_codes_and_classification(tmp_path: Path) -> None:
    async with serving(tmp_path) as srv:
        c = await srv.client()
        outside = (await c.request("fs/read", {"path": "../../etc/passwd"}))["error"]
        assert outside["code"] == -32006
        assert outside["data"]["category"] == "filesystem"
        missing = (await c.request("fs/read", {"path": "nope.txt"}))["error"]
        assert missing["code"] == -32004
        assert (missing["data"]["errno"], missing["data"]["retryable"]) == ("ENOENT", False)
        bad = (await c.request("fs/write", {"path": "x", "content": 5}))["error"]
        assert bad["code"] == -32602
        first = (await c.request("fs/read", {"path": "src/main.py"}))["result"]
        await c.request("fs/write", {"path": "src/main.py", "content": "theirs"})
        stale_write = {
            "path": "src/main.py",
            "content": "mine",
            "expectedMtimeNs": first["mtimeNs"],
        }
        err = (await c.request("fs/write", stale_write))["error"]
        assert err["code"] == -32004
        assert err["data"]["mtimeNs"] == os.stat(srv.workspace / "src" / "main.py").st_mtime_ns
        (srv.workspace / "big").write_bytes(b"x" * ((1 << 20) + 1))
        big = (await c.request("fs/read", {"path": "big"}))["error"]
        assert big["code"] == -32004
        assert big["data"]["retryable"] is False
        assert "limit" in big["data"]["detail"]
        assert (await c.request("ping"))["result"] == {"pong": True}  # the connection is fine
        await c.close()


async def test_did_change_reaches_the_watching_client_and_ends_with_it(tmp_path: Path) -> None:
    async with serving(tmp_path) as srv:
        c = await srv.client()
        watch_id = (await c.request("fs/watch", {"paths": ["src"]}))["result"]["watchId"]
        (srv.workspace / "src" / "new.py").write_text("")
        async with asyncio.timeout(REAL_BOUND):
            note: Any = await c.recv()
        assert note == {
            "jsonrpc": "2.0",
            "method": "fs/didChange",
            "params": {
                "watchId": watch_id,
                "changes": [{"path": "src/new.py", "kind": "added"}],
                "seq": 1,
            },
        }
        other = await srv.client()
        refused = (await other.request("fs/unwatch", {"watchId": watch_id}))["error"]
        assert refused["code"] == -32602
        await c.close()
        await eventually(lambda: srv.service.watcher.watch_ids() == [])
        await other.close()


async def test_watching_is_refused_when_the_feature_is_degraded_away(tmp_path: Path) -> None:
    async with serving(tmp_path) as srv:
        srv.app.degradation.force("file_watching", False)
        c = await srv.client()
        err = (await c.request("fs/watch", {"paths": ["."]}))["error"]
        assert err["code"] == -32002
        srv.app.degradation.force("file_watching", None)
        assert "result" in await c.request("fs/watch", {"paths": ["."]})
        await c.close()
