"""Timeouts, idleness, escalation and startup bounds of real shells, on a FakeClock.

The shell, its PTY and its signals are real; only time is virtual, so every bound is
asserted exactly and no test waits for a timer.
"""

from __future__ import annotations

import asyncio
import signal
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from lapce_bridge.terminal.foreground import InputState
from lapce_bridge.terminal.result import Mode, Status
from lapce_bridge.terminal.terminal import Terminal
from lapce_bridge.testing import FakeClock


async def _start(tmp_path: Path, clock: FakeClock, **kw: object) -> Terminal:
    return await Terminal.start(
        shell="bash",
        cwd=str(tmp_path),
        env={"HOME": str(tmp_path)},
        state_dir=tmp_path / "state",
        clock=clock,
        **kw,
    )


async def _settle_real(task: asyncio.Future[Any], seconds: float = 10.0) -> None:
    """Let real I/O (the shell's answer) arrive; virtual time stands still meanwhile."""
    await asyncio.wait([task], timeout=seconds)


def _execed(pgrp: int) -> bool:
    """The foreground group's leader runs the command's program, no longer bash's fork of
    itself: a SIGINT between the fork and the exec can meet bash's own handler in the child
    and be lost, and a test on a frozen clock would then wait for an end that never comes."""
    try:
        return Path(f"/proc/{pgrp}/comm").read_text().strip() != "bash"
    except OSError:
        return False


async def _running(term: Terminal, *, printed: str = "", child: bool = True) -> None:
    """Real time until the command started (its own process, or has printed `printed`)."""
    for _ in range(2000):
        ex, proc = term.current, term.proc
        ready = ex is not None and ex.started and printed in ex.spool.result()[0]
        if ready and proc is not None:
            pgrp = proc.foreground_pgrp()
            if not child or (pgrp != term.pid and pgrp is not None and _execed(pgrp)):
                return
        await asyncio.sleep(0.005)
    raise AssertionError("the command did not start")


async def test_timeout_fires_exactly_and_duration_is_virtual(tmp_path: Path) -> None:
    clock = FakeClock(100.0)
    async with await _start(tmp_path, clock) as term:
        task = asyncio.ensure_future(term.execute("sleep 60", timeout=5.0, received_at=99.5))
        await _running(term)
        # First the prompt check (is the shell back at its prompt with no end mark?), every
        # quarter second of quiet; the timeout's own deadline comes after it.
        assert clock.next_deadline() == 100.25
        await clock.advance(4.999)
        assert not task.done()
        await clock.advance(0.001)
        await _settle_real(task)
        result = task.result()
        assert result.status is Status.TIMED_OUT
        assert result.exit_code == 130
        assert result.duration_ms == 5500.0  # from the request's arrival, on the clock
        after = await term.execute("echo ok")
        assert after.output == "ok\n"
        assert after.duration_ms == 0.0  # no virtual time passed


async def _reading(term: Terminal) -> None:
    """Real time until the foreground blocks reading the terminal (the idle verdict asks the
    kernel, and virtual time can jump ahead of a real shell)."""
    for _ in range(2000):
        fg = term.shell_proc.foreground() if term.shell_proc is not None else None
        if fg is not None and fg.state is InputState.READING:
            return
        await asyncio.sleep(0.005)
    raise AssertionError("the command never read the terminal")


async def test_idle_timeout_counts_from_the_last_output(tmp_path: Path) -> None:
    clock = FakeClock()
    async with await _start(tmp_path, clock) as term:
        task = asyncio.ensure_future(
            term.execute('echo first; read a; echo "a=$a"; read b; echo "b=$b"', idle_timeout=2.0)
        )
        await _running(term, printed="first\n", child=False)
        await _reading(term)
        await clock.advance(1.5)
        assert not task.done()
        await clock.advance(0.5)
        await _settle_real(task)
        waiting = task.result()
        assert waiting.status is Status.WAITING_FOR_INPUT
        assert waiting.output == "first\n"
        assert waiting.duration_ms == 2000.0
        term.send_text("1\n")
        final = asyncio.ensure_future(term.wait(waiting.execution_id))
        await asyncio.sleep(0.2)  # real time for the echo and "a=1" to arrive
        term.send_text("2\n")
        await _settle_real(final)
        result = final.result()
        assert result.output == "first\n1\na=1\n2\nb=2\n"
        assert result.exit_code == 0


async def test_escalation_steps_are_interrupt_grace_apart(tmp_path: Path) -> None:
    clock = FakeClock()
    async with await _start(tmp_path, clock, interrupt_grace=3.0) as term:
        task = asyncio.ensure_future(
            term.execute(
                "python3 -c 'import signal,time; signal.signal(signal.SIGINT, signal.SIG_IGN); "
                'print("up", flush=True); time.sleep(60)\'',
                timeout=10.0,
            )
        )
        await _running(term, printed="up\n")
        await clock.advance(10.0)  # the deadline: SIGINT, ignored
        await asyncio.sleep(0.2)
        assert not task.done()
        await clock.advance(2.9)  # repeated SIGINTs within the grace: still ignored
        await asyncio.sleep(0.2)
        assert not task.done()
        await clock.advance(0.1)  # grace over: SIGTERM ends it
        await _settle_real(task)
        result = task.result()
        assert result.status is Status.TIMED_OUT
        assert result.exit_code == 128 + signal.SIGTERM
        assert result.duration_ms == 13000.0
        assert (await term.execute("echo alive")).output == "alive\n"


async def test_startup_gives_integration_exactly_its_bound(tmp_path: Path) -> None:
    (tmp_path / ".bashrc").write_text("exec bash --norc --noprofile -i\n")
    clock = FakeClock()
    task = asyncio.ensure_future(_start(tmp_path, clock, startup_timeout=7.0))
    await clock.wait_for_sleepers(1)
    await asyncio.sleep(0.3)  # the shell is up, without our hooks
    assert clock.next_deadline() == 7.0
    await clock.advance(6.99)
    assert not task.done()
    await clock.advance(0.01)
    await _settle_real(task)
    async with task.result() as term:
        assert term.mode is Mode.NO_SHELL_INTEGRATION
        assert clock.now() == 7.0
        result = await term.execute("false")
        assert result.exit_code == 1
        assert result.recoveries[0].action == "no_shell_integration"
        assert "7 s" in result.recoveries[0].reason


@pytest.mark.slow
async def test_fifty_megabytes_with_bounded_memory(tmp_path: Path) -> None:
    clock = FakeClock()
    total = 50_000_000
    async with await _start(tmp_path, clock) as term:
        tracemalloc.start()
        try:
            tracemalloc.reset_peak()
            result = await term.execute(
                f"yes 0123456789abcdefghijklmnopqrstuvwxyz | head -c {total}"
            )
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert result.output_bytes == total
        assert result.truncated
        assert peak < 8_000_000, f"peak traced {peak / 1e6:.1f} MB for {total / 1e6:.0f} MB"
        line = "0123456789abcdefghijklmnopqrstuvwxyz\n"
        assert result.output.startswith(line * 10)
        assert len(result.output.encode()) < 256 * 1024 + 200
        offset, eof, seen, lines = 0, False, 0, 0
        while not eof:
            data, offset, eof = term.read_output(result.execution_id, offset, 4 << 20)
            seen += len(data)
            lines += data.count("\n")
        assert seen == total
        assert lines == total // len(line)
