"""The prompt check racing a command's end, through a real bash on a real PTY.

Under load a process can find bash back at its prompt (`foreground.probe`) before it has read
what bash printed just before: the command's last output and its end mark. The check then
holds the output to ask bash a question of its own; the end mark comes after all, and the
output held meanwhile is the command's (it was lost: `exit 0` with empty output).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from lapce_bridge.terminal.terminal import Terminal

pytestmark = pytest.mark.timeout(60)


async def test_output_unread_when_the_prompt_check_runs_is_kept(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    async with await Terminal.start(
        shell="bash", cwd=str(home), env={"HOME": str(home)}, state_dir=tmp_path / "state"
    ) as term:
        proc = term.proc
        assert proc is not None
        running = asyncio.ensure_future(term.execute("sleep 0.3; echo finished", timeout=30))
        # No event says "the shell began it"; bounded by the test's timeout.
        while term.current is None or not term.current.started:  # noqa: ASYNC110
            await asyncio.sleep(0.005)
        # The host has not read the PTY yet (as when it was not scheduled): bash finishes,
        # prints its output and end mark, and is at its prompt again.
        loop = asyncio.get_running_loop()
        loop.remove_reader(proc.master)
        deadline = time.monotonic() + 20
        while True:
            fg = term._foreground()  # the check's own sample
            if fg is not None and term._at_prompt(fg):
                break
            assert time.monotonic() < deadline, "bash never came back to its prompt"
            await asyncio.sleep(0.01)
        loop.add_reader(proc.master, proc._on_readable)
        await term._recover_integration()  # what the waiting logic calls
        result = await running
        assert (result.output, result.exit_code) == ("finished\n", 0)
        assert not result.recoveries  # its own end mark ended it: no recovery to report
