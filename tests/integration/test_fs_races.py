"""Symlinks swapped in a loop by another process while fs/* requests run: nothing escapes.

A separate process turns the workspace folder `d` into a symlink to a folder outside and
back, and `d/f.txt` into a symlink to a file outside and back, as fast as it can, while
requests through the real connection and dispatcher read, write, stat, list, search and
tree through `d`. Every answer is checked against what lies outside (distinct content, size and
names), and afterwards the outside folder must hold exactly what it held before: no write,
no temporary file. Both ways of confining are driven: `openat2` and the descriptor walk.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import pytest

from lapce_bridge.core.errors import BridgeError
from lapce_bridge.core.timeouts import TimeoutManager
from lapce_bridge.fs.atomic import is_temp_name
from lapce_bridge.fs.beneath import have_openat2
from lapce_bridge.fs.ops import REAL_FS, FsOps, WalkingFs
from lapce_bridge.fs.service import FileService
from lapce_bridge.testing.memory import MemoryServer

OPERATIONS = 10_000
INSIDE = b"inside"
OUTSIDE = b"OUTSIDE " * 512  # another size and content than anything inside

SWAPPER = r"""
import os, sys
ws, out = sys.argv[1], sys.argv[2]
d, hold = os.path.join(ws, "d"), os.path.join(ws, "hold")
f, fhold = os.path.join(d, "f.txt"), os.path.join(ws, "hold-f.txt")
print("ready", flush=True)
while True:
    try:
        os.rename(d, hold)
        os.symlink(out, d)  # d leads outside
        os.unlink(d)
        os.rename(hold, d)  # d is the real folder again
        os.rename(f, fhold)
        os.symlink(os.path.join(out, "f.txt"), f)  # d/f.txt leads outside
        os.unlink(f)
        os.rename(fhold, f)
    except OSError:
        pass
"""


def outside_state(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in out.iterdir()}


def temp_files(tree: Path) -> list[Path]:
    return [p for p in tree.rglob("*") if is_temp_name(p.name)]


@pytest.mark.parametrize(
    "ops",
    [
        pytest.param(
            REAL_FS,
            id="openat2",
            marks=pytest.mark.skipif(not have_openat2(), reason="this kernel has no openat2"),
        ),
        pytest.param(WalkingFs(), id="walk"),
    ],
)
async def test_swapped_symlinks_never_lead_a_request_outside(tmp_path: Path, ops: FsOps) -> None:
    ws = tmp_path / "ws"
    (ws / "d").mkdir(parents=True)
    (ws / "d" / "f.txt").write_bytes(INSIDE)
    out = tmp_path / "outside"
    out.mkdir()
    (out / "f.txt").write_bytes(OUTSIDE)
    (out / "secret.txt").write_bytes(OUTSIDE)
    before = outside_state(out)
    svc = FileService(workspace=ws, ops=ops, durable=False, sweep_on_start=False)
    server = MemoryServer(svc.methods(), clock=svc.clock, timeouts=TimeoutManager())
    client = server.connect()  # the real connection and dispatcher, over memory

    async def call(name: str, params: dict[str, Any]) -> Any:
        return await client.request(name, params)

    escapes: list[str] = []
    answered = refused = 0
    swapper = await asyncio.create_subprocess_exec(
        sys.executable, "-c", SWAPPER, str(ws), str(out), stdout=asyncio.subprocess.PIPE
    )
    try:
        assert swapper.stdout is not None
        assert await asyncio.wait_for(swapper.stdout.readline(), 60) == b"ready\n"
        async with svc:
            for i in range(OPERATIONS):
                kind = i % 6
                try:
                    if kind == 0:
                        got = await call("fs/read", {"path": "d/f.txt", "encoding": "base64"})
                        if got["size"] != len(INSIDE):
                            escapes.append(f"read {got['size']} bytes")
                    elif kind == 1:
                        await call("fs/write", {"path": "d/new.txt", "content": f"w{i}"})
                    elif kind == 2:
                        got = await call("fs/stat", {"path": "d/f.txt"})
                        if got["size"] not in (0, len(INSIDE)):
                            escapes.append(f"stat says {got['size']} bytes")
                    elif kind == 3:
                        names = {e["name"] for e in await call("fs/list", {"path": "d"})}
                        if "secret.txt" in names:
                            escapes.append("list showed the outside folder")
                    elif kind == 4:
                        found = await call("fs/search", {"query": "OUTSIDE", "path": "d"})
                        if found["matches"]:
                            escapes.append(f"search read outside: {found['matches'][0]}")
                    else:
                        tree = await call("fs/tree", {"path": "d"})
                        if "secret.txt" in {e["name"] for e in tree["entries"]}:
                            escapes.append("tree showed the outside folder")
                except BridgeError:
                    refused += 1  # refused (-32006) or missing mid-swap: never an escape
                else:
                    answered += 1
    finally:
        swapper.kill()
        await swapper.wait()
    assert escapes == []
    assert outside_state(out) == before  # no write and no temp file landed outside
    assert temp_files(tmp_path) == []
    # Both outcomes happened: the swaps raced the requests, and requests still got through.
    assert answered > 0
    assert refused > 0
    assert answered + refused == OPERATIONS
