"""The chaos scenarios against real shells, a real server process and the file service."""

from __future__ import annotations

from pathlib import Path

import pytest

from lapce_bridge.chaos import fs, ipc, terminal
from lapce_bridge.chaos.scenario import ChaosContext


async def test_shell_killed_recovers_with_state_and_answers_running_command(
    tmp_path: Path,
) -> None:
    result = await terminal.run(ChaosContext(tmp_path, quick=True))
    assert result.lost == 0
    assert result.ok, result
    assert result.rto_ms < 1_000  # the seed; the goal (100 ms) is the benchmark's to judge


@pytest.mark.timeout(120)
async def test_server_killed_every_queued_request_answered(tmp_path: Path) -> None:
    result = await ipc.run(ChaosContext(tmp_path, quick=True))
    assert result.lost == 0
    assert result.ok, result


async def test_transient_fs_error_recovers_within_schedule(tmp_path: Path) -> None:
    result = await fs.run(ChaosContext(tmp_path, quick=True))
    assert result.lost == 0
    # Two EIO faults cost two backoff sleeps (50 ms and 100 ms, +-10 %): at least 135 ms.
    assert 135 <= result.rto_ms < 1_000
