"""Waiting for a command's end on the clock: hard timeouts, idleness, interruption.

Theory of operation: `await_result` sleeps on the clock until the soonest of (the hard
deadline, the moment output has been quiet for `idle_timeout`, the next prompt check),
re-checking after each wake, because output moves the idle moment forward. Then:
- the command ended: its final result;
- a prompt check (every `PROMPT_CHECK_S` of quiet, or the idle timeout if shorter): the
  kernel is asked what the foreground is doing (`foreground.probe`); when it is the shell
  itself back at its line editor, the command is over but its end mark never came (the
  hooks were removed, or another shell was exec'd): `hooks.recover` ends it another way,
  so a terminal is never left busy with nothing running;
- idle, marker modes: a `waiting_for_input` snapshot when the foreground reads the terminal
  (or /proc cannot tell, the old fallback of quietness); a quiet process that reads nothing
  (a `sleep` ignoring SIGINT) is not waiting for input: a `running` snapshot; a command the
  shell has not started yet (a loaded machine) is not idle at all;
- idle, raw mode: the end of the command (raw mode has no other end), exit code unknown;
- `max_wait` passed while output still flows (a dev server): a `running` snapshot; the
  command keeps running;
- deadline: `stop_foreground` and a `timed_out` result with the output so far.

The collaborators are passed in, never reached through an owner: the clock, the PTY whose
foreground group is signalled, and `Hooks` (how to end a raw command, how to stop the
command, what cwd a snapshot reports).

`stop_foreground` escalates SIGINT -> SIGTERM -> SIGKILL on the terminal's foreground process
group, `interrupt_grace` apart, and kills the shell itself as the last step (the recovery then
starts a new one), so a stopped command never leaves the terminal unusable. Signals other than
SIGINT are never sent to the shell's own group: an interactive shell that ignores them would
only delay the escalation, and killing it is the last step anyway.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial

from lapce_bridge.core.clock import Clock
from lapce_bridge.terminal.execution import Execution
from lapce_bridge.terminal.foreground import Foreground, InputState
from lapce_bridge.terminal.pty import PtyProcess
from lapce_bridge.terminal.result import ExecResult, Status

_REPOLL_S = 0.02
_RESEND_S = 0.2
RAW_IDLE_S = 0.5  # raw mode ends a command after this much quiet when no idle_timeout is given
PROMPT_CHECK_S = 0.25  # quiet this long: ask whether the shell is back at its prompt


@dataclass(frozen=True, slots=True)
class Hooks:
    """What the waiting logic asks of the terminal it waits for."""

    stop: Callable[[], Awaitable[None]]  # stop the command (escalating), for a hard timeout
    end_raw: Callable[[], None]  # a raw-mode command went quiet: that is its end
    cwd: Callable[[], str | None]  # the cwd a snapshot reports
    foreground: Callable[[], Foreground | None]  # what the kernel says the foreground does
    at_prompt: Callable[[Foreground], bool]  # is that the shell at its own line editor?
    recover: Callable[[], Awaitable[None]]  # the end mark will not come: end it another way


async def await_result(
    ex: Execution,
    clock: Clock,
    hooks: Hooks,
    limit: float | None,
    idle_timeout: float | None,
    max_wait: float | None = None,
    *,
    quiet_is_running: bool = True,
) -> ExecResult:
    """`quiet_is_running`: answer a quiet program that reads nothing `running` at the idle
    timeout (an execute request), or keep waiting for it (a wait for the final result)."""
    start = clock.now()
    deadline = None if limit is None else start + limit
    hold_until = None if max_wait is None else start + max_wait
    raw = ex.raw
    idle = idle_timeout if idle_timeout is not None else (RAW_IDLE_S if raw else None)
    check = None if raw else min(PROMPT_CHECK_S, idle_timeout or PROMPT_CHECK_S)
    rearmed = start  # quiet is counted from here too: a quiet process found not reading
    checked = start
    while not ex.done.done():
        now = clock.now()
        quiet_from = max(ex.last_activity, rearmed)
        bounds = [b - now for b in (deadline, hold_until) if b is not None]
        if idle is not None:
            bounds.append(quiet_from + idle - now)
        if check is not None:
            bounds.append(max(ex.last_activity, checked) + check - now)
        wait = min(bounds) if bounds else None
        if wait is not None and wait <= 0:
            if deadline is not None and now >= deadline:
                ex.timed_out = True
                await hooks.stop()
                if ex.done.done():
                    return ex.done.result()
                return ex.snapshot(Status.TIMED_OUT, clock.now(), hooks.cwd())
            idle_now = idle is not None and now >= quiet_from + idle
            if raw and idle_now and (hold_until is None or now < hold_until):
                hooks.end_raw()
                continue
            if hold_until is not None and now >= hold_until:
                # A server that keeps printing is never idle: the request still gets an answer.
                return ex.snapshot(Status.RUNNING, now, hooks.cwd())
            fg = None if raw else hooks.foreground()
            checked = now
            if fg is not None and hooks.at_prompt(fg):
                await hooks.recover()
                continue
            if not idle_now:
                continue
            if fg is not None and fg.state is InputState.RUNNING:
                if not ex.started or not quiet_is_running:
                    rearmed = now  # the shell has not even begun it (a loaded machine)
                    continue
                return ex.snapshot(Status.RUNNING, now, hooks.cwd())
            return ex.snapshot(Status.WAITING_FOR_INPUT, now, hooks.cwd())
        # The execution's end or the clock's timer, whichever resolves the waiter first (a
        # timer and a future: what a deadline around the await costs, without its task cancel).
        waiter = ex.waiter()
        if wait is None:
            await waiter
            continue
        timer = clock.call_later(wait, partial(_wake, waiter))
        try:
            await waiter
        finally:
            timer.cancel()
    return ex.done.result()


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


async def _ended(clock: Clock, ex: Execution, seconds: float) -> bool:
    if ex.done.done():
        return True
    try:
        async with clock.timeout(seconds):
            await asyncio.shield(ex.done)
    except TimeoutError:
        return False
    return True


async def stop_foreground(proc: PtyProcess, ex: Execution, clock: Clock, grace: float) -> None:
    if ex.halt is not None:
        ex.halt()  # the command's later lines are not to run
    if not ex.began.done():
        # Before the command runs a signal would reach the shell's reader (the line editor,
        # or bash between reading a line and running it, which drops a character and runs the
        # rest): wait for it to run; a shell that never runs it is stuck, and only replacing
        # it helps.
        try:
            async with clock.timeout(grace):
                await asyncio.shield(ex.began)
        except TimeoutError:
            proc.kill()
            await _ended(clock, ex, grace)
            return
        if ex.done.done():
            return
    if await _interrupt(proc, ex, clock, grace):
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if not proc.alive:
            break
        pgrp = proc.foreground_pgrp()
        if pgrp is None or pgrp == proc.pid:
            continue
        proc.signal_foreground(sig)
        if await _ended(clock, ex, grace):
            return
    if proc.alive and not ex.done.done():
        proc.kill()
        await _ended(clock, ex, grace)


async def _interrupt(proc: PtyProcess, ex: Execution, clock: Clock, grace: float) -> bool:
    """SIGINT, as Ctrl-C would; whether the command ended within the grace period.

    A SIGINT that arrives while the shell forks the command's process is absorbed (by the
    shell, or by the child before it resets its handlers), so while the grace lasts a group
    that changed gets one too, and the same group gets another every `_RESEND_S`, as a user
    would press Ctrl-C again.
    """
    sent_to = proc.signal_foreground(signal.SIGINT)
    sent_at = clock.now()
    deadline = sent_at + grace
    while (left := deadline - clock.now()) > 0:
        if await _ended(clock, ex, min(_REPOLL_S, left)):
            return True
        pgrp = proc.foreground_pgrp()
        # A group that took over gets one at once; the shell's own group only on the resend
        # period: it takes over when the command has ended, and a SIGINT then would reach the
        # line editor as it reads the next command's keys.
        changed = pgrp != sent_to and pgrp != proc.pid
        if proc.alive and (changed or clock.now() - sent_at >= _RESEND_S):
            sent_to = proc.signal_foreground(signal.SIGINT)
            sent_at = clock.now()
    return ex.done.done()


def command_file_text(kind: str, command: str, cwd: str | None, typed: bool = False) -> str:
    """What the shell reads: the command, after a `cd` when the request names a cwd.

    Typed line by line (`modes.typed`), the text is lines ending in a newline (a `\\r\\n` is
    a line end, as Enter would be), and a `cd` that fails skips the rest with `__lb_skip`
    (`return` only works in a sourced file)."""
    if typed:
        command = command.replace("\r\n", "\n")
        if not command.endswith("\n"):
            command += "\n"
    if cwd is None:
        return command
    quoted = "'" + cwd.replace("'", "'\\''") + "'"
    if kind == "fish":
        quoted = "'" + cwd.replace("\\", "\\\\").replace("'", "\\'") + "'"
        return f"cd {quoted}; or {'__lb_skip' if typed else 'return 1'}\n{command}"
    if typed:
        return f"cd -- {quoted} || __lb_skip\n{command}"
    return f"cd -- {quoted} || return 1\n{command}"
