"""Terminal files another local user cannot read, replace or block (real folders and FIFOs)."""

from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path

import pytest

from lapce_bridge.terminal.files import runtime_base
from lapce_bridge.terminal.startup import restore_file
from lapce_bridge.terminal.terminal import Terminal


def test_a_folder_prepared_by_another_user_is_never_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    hostile = runtime / f"lapce-bridge-{os.getuid()}"
    hostile.mkdir(mode=0o777)
    (hostile / "terminals").mkdir(mode=0o777)
    if os.getuid() == 0:
        os.chown(hostile, 65534, 65534)
        os.chown(hostile / "terminals", 65534, 65534)
    else:
        # Without root another owner cannot be made; a symlink in its place is the same
        # attack (the folder would be wherever its maker pointed it).
        (hostile / "terminals").rmdir()
        hostile.rmdir()
        (tmp_path / "elsewhere").mkdir(mode=0o700)
        hostile.symlink_to(tmp_path / "elsewhere")
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    base = runtime_base(tmp_path / "state")
    assert hostile not in base.parents
    assert base.resolve() == base
    info = os.lstat(base)
    assert stat.S_IMODE(info.st_mode) == 0o700
    assert info.st_uid == os.getuid()


def test_a_symlinked_or_open_folder_is_refused_and_ours_is_tightened(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    ours = runtime / f"lapce-bridge-{os.getuid()}"
    ours.mkdir(mode=0o755)  # an older version's folder: ours, but readable by others
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    base = runtime_base(tmp_path / "state")
    assert base == ours / "terminals"
    assert stat.S_IMODE(os.lstat(ours).st_mode) == 0o700


@pytest.mark.asyncio
async def test_files_are_private_and_a_fifo_swapped_in_cannot_block(tmp_path: Path) -> None:
    async with await Terminal.start(
        shell="bash", cwd=str(tmp_path), env={"HOME": str(tmp_path)}, state_dir=tmp_path
    ) as term:
        await term.execute("export KEEP=1; cd /", timeout=10)
        folder = term.dir
        assert stat.S_IMODE(os.lstat(folder).st_mode) == 0o700
        for name in ("cmd", "env"):
            info = os.lstat(folder / name)
            assert stat.S_ISREG(info.st_mode)
            assert stat.S_IMODE(info.st_mode) == 0o600
        # The saved environment replaced by a FIFO nobody writes: reading it for a restart
        # neither blocks nor trusts it.
        saved = (folder / "env").read_bytes()
        (folder / "env").unlink()
        os.mkfifo(folder / "env", 0o600)
        async with asyncio.timeout(5):
            assert await asyncio.to_thread(restore_file, folder, "bash") is None
        (folder / "env").unlink()
        (folder / "env").write_bytes(saved)
        os.chmod(folder / "env", 0o644)  # readable by others: not trusted either
        assert restore_file(folder, "bash") is None
        os.chmod(folder / "env", 0o600)
        restarts = term.restarts
        term.kill()
        for _ in range(1000):
            if term.restarts > restarts and term.restarting is not None:
                await term.restarting
                break
            await asyncio.sleep(0.01)
        result = await term.execute('echo "alive $KEEP"; pwd', timeout=10)
        assert result.output == "alive 1\n/\n"
        # The command file keeps its descriptor: a FIFO at its name is never opened by us.
        (folder / "cmd").unlink()
        os.mkfifo(folder / "cmd", 0o600)
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.01)

        ticker = asyncio.get_running_loop().create_task(tick())
        try:
            result = await term.execute("echo never", timeout=1)
        finally:
            ticker.cancel()
        assert ticks > 5  # the loop kept running while the shell was stuck on the FIFO
        assert result.output != "never\n"
