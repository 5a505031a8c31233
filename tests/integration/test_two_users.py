"""Attacks by a second local user, with two real uids: a user this test creates.

The server runs as the test's own user; the attacker is a fresh user made with `useradd`
(the tests skip, saying why, where that cannot be done: not root, or no `useradd`). They
share a sticky world-writable folder, as users share /tmp and /dev/shm. The attacker
prepares the folders the server would use (with a FIFO inside, to block or to feed it), then
tries to read what the server keeps: every attempt must fail, and the server must neither
use the attacker's folder nor hang on it.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from lapce_bridge.host.places import stop_host
from tests.integration.test_private_state import REPO, call


@dataclass(frozen=True)
class User:
    name: str
    uid: int
    gid: int

    def run(self, *argv: str) -> subprocess.CompletedProcess[str]:
        """Run `argv` as this user (no extra groups), capturing its output."""
        return subprocess.run(
            argv,
            user=self.uid,
            group=self.gid,
            extra_groups=[],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            cwd="/",
        )


@pytest.fixture(scope="module")
def attacker() -> Iterator[User]:
    if os.geteuid() != 0:
        pytest.skip("creating a second local user needs root (run the suite as root or in CI)")
    useradd, userdel = shutil.which("useradd"), shutil.which("userdel")
    if useradd is None or userdel is None:
        pytest.skip("useradd/userdel are not installed: no second user can be made")
    name = f"lbatk{uuid.uuid4().hex[:8]}"
    made = subprocess.run(
        [useradd, "--no-create-home", "--shell", "/bin/sh", name],
        capture_output=True,
        text=True,
        check=False,
    )
    if made.returncode != 0:
        pytest.skip(f"useradd could not create a user here: {made.stderr.strip()}")
    try:
        out = subprocess.run(["id", "-u", name], capture_output=True, text=True, check=True)
        uid = int(out.stdout)
        gid = int(subprocess.run(["id", "-g", name], capture_output=True, text=True).stdout)
        yield User(name, uid, gid)
    finally:
        subprocess.run([userdel, name], capture_output=True, check=False)


@pytest.fixture
def shared() -> Iterator[Path]:
    """A folder both users may create entries in, sticky like /tmp (under /tmp: the
    attacker cannot traverse pytest's own 0700 folders)."""
    folder = Path(tempfile.mkdtemp(prefix="lb-shared-", dir="/tmp"))
    os.chmod(folder, 0o1777)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def server_env(shared: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    env["TMPDIR"] = str(shared)  # the socket's fallback folder
    env["XDG_RUNTIME_DIR"] = str(shared)  # where terminal files go first
    env["XDG_STATE_HOME"] = str(shared / "victim-state")
    return env


def tree(folder: Path) -> dict[str, int]:
    """Every entry below `folder` with its mode (the attacker's folders, as root sees them)."""
    return {str(p.relative_to(folder)): p.lstat().st_mode for p in sorted(folder.rglob("*"))}


def test_a_socket_folder_another_user_made_first_is_refused(
    attacker: User, shared: Path, tmp_path: Path
) -> None:
    trap = shared / f"lapce-bridge-{os.getuid()}"
    assert attacker.run("mkdir", "-m", "777", str(trap)).returncode == 0
    assert attacker.run("mkfifo", "-m", "666", str(trap / "bridge.sock")).returncode == 0
    before = tree(trap)
    ws = tmp_path / "ws"
    ws.mkdir()
    env = server_env(shared)
    env.pop("XDG_RUNTIME_DIR")  # the default socket falls back to $TMPDIR/lapce-bridge-<uid>
    done = subprocess.run(
        [sys.executable, "-m", "lapce_bridge", "serve", "--workspace", str(ws),
         "--state-dir", str(tmp_path / "state")],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode != 0  # refused at once, not hung on the FIFO
    assert f"belongs to uid {attacker.uid}" in done.stderr
    assert tree(trap) == before  # not chmodded, nothing bound or written there
    assert trap.stat().st_uid == attacker.uid


async def test_terminal_files_state_and_spools_stay_out_of_another_users_reach(
    attacker: User, shared: Path, tmp_path: Path
) -> None:
    # The attacker prepares the terminal folder on the shared tmpfs-like folder, with a
    # FIFO where a command file could go and a folder open to all.
    trap = shared / f"lapce-bridge-{os.getuid()}"
    for argv in (
        ("mkdir", "-m", "777", str(trap)),
        ("mkdir", "-m", "777", str(trap / "terminals")),
        ("mkfifo", "-m", "666", str(trap / "terminals" / "cmd")),
    ):
        assert attacker.run(*argv).returncode == 0, argv
    before = tree(trap)
    ws = tmp_path / "ws"
    ws.mkdir()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "lapce_bridge", "serve", "--stdio", "--workspace", str(ws),
        env=server_env(shared), stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        await call(proc, 1, "initialize", {"protocolVersion": 1})
        secret = "API_KEY=" + uuid.uuid4().hex
        params: dict[str, Any] = {
            "command": f"export {secret}; echo {secret}; head -c 300000 /dev/zero | tr '\\0' s",
            "maxOutputBytes": 1024,
        }
        result = await asyncio.wait_for(call(proc, 2, "terminal/execute", params), 120)
        assert result["exitCode"] == 0  # the server was neither blocked nor fed by the trap
        assert result["output"].startswith(secret)
        assert tree(trap) == before  # the attacker's folder was skipped, never used

        state = shared / "victim-state"
        files = [p for p in state.rglob("*") if p.is_file()]
        assert any(p.suffix == ".out" for p in files)  # the output was spooled to disk
        for path in files:  # spools, journal: the attacker reads none of them
            attempt = attacker.run("cat", str(path))
            assert attempt.returncode != 0
            assert "Permission denied" in attempt.stderr
            assert secret not in attempt.stdout
        listing = attacker.run("ls", "-R", str(state))
        assert listing.returncode != 0
        spool_dir = next(p.parent for p in files if p.suffix == ".out")
        planted = attacker.run("mkfifo", str(spool_dir / "planted"))  # swap in a FIFO
        assert planted.returncode != 0
        assert not (spool_dir / "planted").exists()
        for folder in {p.parent for p in files} | {state / "lapce-bridge"}:
            assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        await asyncio.wait_for(proc.wait(), 60)
        # The terminal host outlives its server on purpose (it lingers for a successor);
        # this test's host goes with the test.
        await stop_host(shared / "victim-state" / "lapce-bridge", ws.resolve())
