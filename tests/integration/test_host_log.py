"""The terminal host's log is bounded: `host.log` rotates, stderr follows the current file.

A real handler on real files, then a real host process whose log is filled by real bad
connections (each is logged and closed).
"""

from __future__ import annotations

import asyncio
import logging
import os
import stat
import sys
from pathlib import Path

import pytest

from lapce_bridge.host.attach import host_command, spawn_detached
from lapce_bridge.host.hostlog import BoundedLog
from lapce_bridge.host.places import host_pid, host_places
from lapce_bridge.ipc.paths import probe

pytestmark = pytest.mark.timeout(60)


def _files(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in folder.iterdir() if p.name.startswith("host.log")}


def test_the_log_rotates_within_its_bound_and_stderr_follows_it(tmp_path: Path) -> None:
    path = tmp_path / "host.log"
    path.write_bytes(b"x" * 5000)  # a previous host's, already past the bound
    os.chmod(path, 0o600)
    mirror = os.open(tmp_path / "stderr-before", os.O_WRONLY | os.O_CREAT, 0o600)
    handler = BoundedLog(path, max_bytes=2000, backups=2, stderr_fd=mirror)
    logger = logging.getLogger("test.hostlog")
    logger.propagate = False
    logger.addHandler(handler)
    try:
        for i in range(200):
            logger.warning("line %04d of a host that runs for weeks", i)
        os.write(mirror, b"a traceback on stderr\n")
        handler.flush()
    finally:
        logger.removeHandler(handler)
        handler.close()
        os.close(mirror)
    files = _files(tmp_path)
    assert sorted(files) == ["host.log", "host.log.1", "host.log.2"]  # no more backups
    assert all(size <= 2000 for size in files.values()), files
    assert b"x" * 100 not in path.read_bytes()  # the old content rotated away (and dropped)
    text = path.read_text()
    assert "line 0199" in text
    assert text.endswith("a traceback on stderr\n")  # written to stderr after the rotations
    assert (tmp_path / "stderr-before").stat().st_size == 0
    for name in files:
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600


async def test_a_real_hosts_log_stays_bounded(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    places = host_places(tmp_path / "state", ws)
    cmd = host_command(tmp_path / "state", ws.resolve(), "bash", 300, sys.executable)
    spawn_detached([*cmd, "--log-max-bytes", "4096", "--log-backups", "1"], places.log)
    async with asyncio.timeout(30):
        while not probe(places.socket, 0.5):  # noqa: ASYNC110 - another process's socket
            await asyncio.sleep(0.02)
    pid = host_pid(places)
    assert pid is not None
    try:
        for _ in range(150):  # each bad connection is logged (an error line) and closed
            reader, writer = await asyncio.open_unix_connection(str(places.socket))
            writer.write(b"not a frame\r\n\r\n")
            await writer.drain()
            await reader.read()  # closed by the host
            writer.close()
        async with asyncio.timeout(10):
            while "host.log.1" not in _files(places.folder):  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        files = _files(places.folder)
        assert sorted(files) == ["host.log", "host.log.1"], files
        assert all(size <= 4096 for size in files.values()), files
        assert b"bad frame" in places.log.read_bytes() + (places.folder / "host.log.1").read_bytes()
    finally:
        os.kill(pid, 15)
