"""Each chaos scenario against a real server: it counts what it checks, and sees a loss.

Quick forms, bash only. Every scenario runs once more with its recovery broken
(`break_recovery`: the terminal closed under the kill, the fault never clearing, the server
stopped or not restarted, the memory never released) and must then report the loss and miss
its goal; the normal runs assert what works on this build and that the counts add up. Each
run has a server of its own, and most of a run is waiting (for a recovery, or for the
patience a broken one is given), so a test runs its scenarios side by side.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import pytest

from lapce_bridge.chaos import clients, fs, memory, scale, server, terminal
from lapce_bridge.chaos.scenario import ChaosContext, ChaosResult
from tests.hosts import hosts_under

pytestmark = pytest.mark.timeout(180)


def ctx(tmp_path: Path, broken: bool = False) -> ChaosContext:
    return ChaosContext(tmp_path, quick=True, shells=("bash",), break_recovery=broken)


async def together(*runs: Awaitable[Any]) -> list[Any]:
    """The scenarios' results, in order, run side by side (each with its own server)."""
    return list(await asyncio.gather(*runs))


def assert_sees_loss(result: ChaosResult, at_least: int) -> None:
    assert result.lost >= at_least, result
    assert not result.ok
    lost_row = result.rows()[1]
    assert lost_row.value == result.lost
    assert lost_row.verdict() == "miss"


async def test_shell_killed_counts_state_and_sees_a_closed_terminal(tmp_path: Path) -> None:
    [(ok,), (broken,)] = await together(
        terminal.run_shell_killed(ctx(tmp_path)),
        terminal.run_shell_killed(ctx(tmp_path, broken=True)),
    )
    assert ok.extra["items"] >= 2 * 2 * 5  # two rounds, two kills, env/cwd/answer/exit each
    assert ok.rto_ms < 10_000
    assert "variable lost" not in ok.detail  # cwd and env come back after a kill
    assert "directory lost" not in ok.detail
    assert_sees_loss(broken, 2)
    assert "terminal not answering" in broken.detail or "variable lost" in broken.detail


async def test_user_exits_and_broken_integration_are_counted(tmp_path: Path) -> None:
    [(exits,), (broken,), (integ,)] = await together(
        terminal.run_user_exits(ctx(tmp_path)),
        terminal.run_user_exits(ctx(tmp_path, broken=True)),
        terminal.run_integration_broken(ctx(tmp_path, broken=True)),
    )
    assert exits.extra["items"] == 3 * 5
    assert exits.rto_ms < 10_000  # every next command answered
    assert hosts_under(tmp_path) == []  # each scenario stops the terminal host it started
    assert_sees_loss(broken, 3)
    assert_sees_loss(integ, 3 * 2)  # output and exit code of each command after the break


async def test_deaf_shells_are_answered_and_a_closed_terminal_is_seen(tmp_path: Path) -> None:
    [(ok,), (broken,)] = await together(
        terminal.run_deaf_shells(ctx(tmp_path)),
        terminal.run_deaf_shells(ctx(tmp_path, broken=True)),
    )
    assert ok.ok, ok.detail
    cases = [row.name for row in ok.rows()[2:]]
    assert len(cases) == 3  # Ctrl-C trapped, SIGINT ignored, output sent nowhere (bash)
    assert all(row.value < 10_000 for row in ok.rows()[2:]), ok.detail
    assert ok.extra["items"] >= 3 * 5  # each command answered; then output, env, cwd, code
    assert_sees_loss(broken, 3)


async def test_server_restart_delivers_the_queue_and_counts_what_it_lost(tmp_path: Path) -> None:
    result, broken = await together(
        server.run(ctx(tmp_path)), server.run(ctx(tmp_path, broken=True))
    )
    queued = 10
    # queue; command and its exit code; stream (result, read back, notifications' bytes and
    # hash); list; three terminals; env, cwd; watch
    assert result.extra["items"] == 3 * queued + 2 + 4 + 1 + 3 + 2 + 1
    # Every queued request answered, every file whole:
    assert "not answered" not in result.detail
    assert "not on disk" not in result.detail
    # Terminals live in the host: nothing of theirs is lost when the server is killed.
    lost = result.detail.partition("lost:")[2]
    for kept in ("running command", "streamed output", "streamed notifications", "terminal"):
        assert kept not in lost, result.detail
    assert result.extra["terminalsUsableMs"] < 10_000
    usable = [r for r in result.rows() if r.name.endswith("terminals usable")]
    assert [r.value for r in usable] == [result.extra["terminalsUsableMs"]]
    assert result.rto_ms < 5_000
    assert_sees_loss(broken, 2 * queued)
    assert "queued ping not answered" in broken.detail


async def test_file_system_faults_recover_and_a_broken_recovery_is_seen(tmp_path: Path) -> None:
    transient, broken_transient, permanent, broken_permanent, broken_watch = await together(
        fs.run_transient(ctx(tmp_path)),
        fs.run_transient(ctx(tmp_path, broken=True)),
        fs.run_permanent(ctx(tmp_path)),
        fs.run_permanent(ctx(tmp_path, broken=True)),
        fs.run_watched_folder(ctx(tmp_path, broken=True)),
    )
    assert transient.ok, transient
    assert 100 <= transient.rto_ms < 1_000  # two backoff sleeps happened, within the schedule
    assert_sees_loss(broken_transient, 2)
    assert permanent.ok, permanent
    assert permanent.extra["items"] == 2 * 6  # answer, stale mark, incident open/counted/ended
    assert_sees_loss(broken_permanent, 2)
    assert_sees_loss(broken_watch, 2)
    assert broken_watch.rto_ms == float("inf")


async def test_memory_pressure_restores_quality_and_sees_a_load_never_released(
    tmp_path: Path,
) -> None:
    ok, result = await together(memory.run(ctx(tmp_path)), memory.run(ctx(tmp_path, broken=True)))
    assert ok.ok, ok  # every spool read back, quality back within 5 s of the release
    assert ok.extra["peak_pressure"] >= 85
    assert ok.rto_ms < 5_000
    assert result.extra["peak_pressure"] >= 85  # the server's own allocation was seen
    assert_sees_loss(result, 1)
    assert "quality not restored" in result.detail
    assert result.rto_ms == float("inf")


async def test_misbehaving_clients_are_survived_and_a_stopped_server_is_seen(
    tmp_path: Path,
) -> None:
    severed, broken_severed, stalled, broken_stall = await together(
        clients.run_severed(ctx(tmp_path)),
        clients.run_severed(ctx(tmp_path, broken=True)),
        clients.run_stalled_reader(ctx(tmp_path)),
        clients.run_stalled_reader(ctx(tmp_path, broken=True)),
    )
    assert severed.ok, severed
    assert_sees_loss(broken_severed, 2)
    assert stalled.ok, stalled
    # Sockets at once, measured on their own: their burst would delay the stalled-reader
    # test's pings in this process's own event loop.
    many = await clients.run_many_clients(ctx(tmp_path))
    assert many.ok, many
    assert many.extra["items"] == 100
    assert_sees_loss(await clients.run_many_clients(ctx(tmp_path, broken=True)), 100)
    assert_sees_loss(broken_stall, 1)
    assert broken_stall.rto_ms == float("inf")


async def test_terminals_under_load_count_each_failure(tmp_path: Path) -> None:
    result = await scale.run(ctx(tmp_path))
    assert result.rows()[2].value == 100.0 * (10 - result.lost) / 10
    assert result.ok == (result.lost == 0)  # 10 terminals: one failure is already under 95 %
    broken = await scale.run(ctx(tmp_path, broken=True))
    assert_sees_loss(broken, 10)
    assert broken.rows()[2].value == 0.0
