"""Starting a terminal's shell, falling back when it does not answer, and restarting it.

Theory of operation: `boot` resolves the shell (missing: the first runnable fallback shell,
mode `alternative_shell`) and climbs down a ladder, each rung with a bound on the clock:
1. our integration with the user's rc files: ready at the first 633 prompt or cwd mark;
2. the same process with a tokened end mark after each command (`no_shell_integration`),
   when the rc files broke the hooks but the shell runs commands;
3. our integration without the user's rc files (`minimal_pty`);
4. a plain shell without rc files and no marks at all (`raw_output`).
sh, dash and unknown shells start at rung 2. Each rung taken is recorded as a recovery on the
terminal's next result.

`on_shell_death` runs from the PTY's exit callback: it finishes the running command as
`interrupted` with the recovery taken, reports the exit, and starts `restart` as a task the
terminal owns, which brings up a shell of the decided kind in the last cwd with the exported
variables the dead one last wrote (`restore` file, same shell kind only). The time from the
death to a ready shell is the terminal's `last_recovery_ms` (the RTO).
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import signal
from pathlib import Path
from typing import TYPE_CHECKING

from lapce_bridge.core.errors import ShellCrashed, TerminalError
from lapce_bridge.terminal import modes
from lapce_bridge.terminal.modes import build_env, resolve_shell, run_line, shell_kind, write_file
from lapce_bridge.terminal.recovery import (
    RestartAction,
    RestartDecision,
    decide_restart,
    give_up_strategy,
    next_shell,
    recreate_strategy,
)
from lapce_bridge.terminal.result import Mode, Recovery, Status, TerminalExited

if TYPE_CHECKING:
    from lapce_bridge.terminal.terminal import Terminal

_VOLATILE = re.compile(r"^(?:declare -\S+|export|typeset -\S+|set -gx) (?:PWD|OLDPWD|SHLVL|_)\b")


def _path_of(term: Terminal) -> str | None:
    return term.extra_env.get("PATH") or (term.base_env or os.environ).get("PATH")


def _is_dir(path: str) -> bool:
    return os.path.isdir(path)


async def boot(term: Terminal, *, restore: Path | None) -> None:
    requested = term.requested_shell or modes.default_shell(term.base_env)
    exe = resolve_shell(requested, _path_of(term))
    alternative = False
    if exe is None:
        alt = next_shell(
            requested,
            term.tried_shells,
            term.crash_policy.fallback_shells,
            lambda s: resolve_shell(s, _path_of(term)) is not None,
        )
        alt_exe = None if alt is None else resolve_shell(alt, _path_of(term))
        if alt_exe is None:
            raise TerminalError(f"shell {requested!r} cannot be run and no fallback shell can")
        term.tried_shells.append(requested)
        term.pending_recoveries.append(
            Recovery("alternative_shell", f"shell {requested!r} not found; using {alt}")
        )
        exe, alternative = alt_exe, True
    if not _is_dir(term.initial_cwd):
        raise TerminalError(f"cwd {term.initial_cwd!r} is not a directory", retryable=False)
    await start_shell(term, exe, restore=restore, alternative=alternative)


async def start_shell(term: Terminal, exe: str, *, restore: Path | None, alternative: bool) -> None:
    term.shell = exe
    cwd = term.cwd if term.cwd and _is_dir(term.cwd) else term.initial_cwd
    env = build_env(term.base_env, term.extra_env)
    kind = shell_kind(exe)

    def plan(integration: bool, user_rc: bool, restore: Path | None) -> modes.Launch:
        return modes.launch(
            exe,
            env=env,
            term_dir=term.dir,
            state_dir=term.state_dir,
            nonce=term.nonce,
            integration=integration,
            user_rc=user_rc,
            restore=restore,
        )

    if term.shell_integration and kind != "posix":
        launch = plan(True, True, restore)
        term.spawn(launch.argv, launch.env, cwd)
        if await wait_ready(term, term.startup_timeout):
            _set_mode(term, Mode.SHELL_INTEGRATION, Mode.SHELL_INTEGRATION, alternative)
            return
        reason = f"shell integration did not start within {term.startup_timeout:g} s"
        if await probe(term, Mode.NO_SHELL_INTEGRATION, term.probe_timeout):
            _set_mode(term, Mode.NO_SHELL_INTEGRATION, Mode.NO_SHELL_INTEGRATION, alternative)
            term.pending_recoveries.append(Recovery("no_shell_integration", reason))
            return
        await stop_process(term)
        launch = plan(True, False, restore)
        term.spawn(launch.argv, launch.env, cwd)
        if await wait_ready(term, term.startup_timeout):
            _set_mode(term, Mode.SHELL_INTEGRATION, Mode.MINIMAL_PTY, alternative)
            term.pending_recoveries.append(
                Recovery("minimal_pty", reason + " with the user's rc files; started without")
            )
            return
        await stop_process(term)
    else:
        launch = plan(False, True, None)
        term.spawn(launch.argv, launch.env, cwd)
        if await probe(term, Mode.NO_SHELL_INTEGRATION, term.probe_timeout):
            _set_mode(term, Mode.NO_SHELL_INTEGRATION, Mode.NO_SHELL_INTEGRATION, alternative)
            return
        await stop_process(term)
    launch = plan(False, False, None)
    # No rc files and no prompt, so nothing but the command's output follows our line.
    raw_env = {k: v for k, v in launch.env.items() if k not in ("ENV", "BASH_ENV")}
    raw_env.update(PS1="", PS2="", PROMPT_COMMAND="")
    proc = term.spawn(launch.argv, raw_env, cwd)
    if not proc.alive:
        raise ShellCrashed(f"{exe} exits at once; no terminal can be started")
    _set_mode(term, Mode.RAW_OUTPUT, Mode.RAW_OUTPUT, alternative)
    term.pending_recoveries.append(
        Recovery("raw_output_mode", f"{exe} answered no end marker within the bounds")
    )


async def wait_ready(term: Terminal, bound: float) -> bool:
    """Whether integration announced itself (a prompt or cwd mark) within `bound` s."""
    assert term.ready_fut is not None
    try:
        async with term.clock.timeout(bound):
            return await asyncio.shield(term.ready_fut)
    except TimeoutError:
        return False


async def probe(term: Terminal, mode: Mode, bound: float) -> bool:
    """Whether the shell runs a command and prints a tokened end mark within `bound` s."""
    if term.proc is None or not term.proc.alive:
        return False
    token = secrets.token_hex(8)
    fut: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
    term.probe_waiter = (token, fut)
    # Without integration the prompt would be printed inside the output (dash prints it
    # between our two lines), so the fallback modes run with empty prompts.
    write_file(term.cmd_path, b"PS1=''\nPS2=''\n" if term.kind == "posix" else b"")
    try:
        term.proc.write(run_line(term.kind, mode, Path(term.cmd_path), token))
        async with term.clock.timeout(bound):
            await fut
    except (TimeoutError, OSError):
        return False
    finally:
        term.probe_waiter = None
    return True


async def stop_process(term: Terminal) -> None:
    """End the current shell process (used by the ladder and by close)."""
    proc, exited = term.proc, term.exited_fut
    if proc is None or exited is None:
        return
    term.stopping = proc  # a death we cause is not a crash to recover from
    if proc.alive:
        proc.signal(signal.SIGHUP)
        proc.close()
        try:
            async with term.clock.timeout(term.interrupt_grace):
                await asyncio.shield(exited)
        except TimeoutError:
            proc.kill()
            try:
                async with term.clock.timeout(term.interrupt_grace):
                    await asyncio.shield(exited)
            except TimeoutError:
                proc.reap_blocking()  # SIGKILL cannot be refused: this returns at once
    proc.close()


def _set_mode(term: Terminal, protocol: Mode, label: Mode, alternative: bool) -> None:
    term.protocol = protocol
    # Results name the most important departure: another shell than asked for, first.
    term.mode = Mode.ALTERNATIVE_SHELL if alternative else label


def prepare_restore(term: Terminal) -> Path | None:
    """The dead shell's exported variables, minus those that describe the dead process."""
    name = "env.fish" if term.kind == "fish" else "env"
    source = term.dir / name
    try:
        text = source.read_text(errors="surrogateescape")
    except OSError:
        return None
    if term.kind == "fish":
        # `set -xL` lists "NAME escaped-value(s)": valid fish words after `set -gx`.
        text = "".join("set -gx " + line for line in text.splitlines(keepends=True))
    kept = [line for line in text.splitlines(keepends=True) if not _VOLATILE.match(line)]
    target = term.dir / "restore"
    target.write_text("".join(kept), errors="surrogateescape")
    return target


def on_shell_death(term: Terminal, code: int) -> None:
    now = term.clock.now()
    term.deaths.append(now)
    decision = decide_restart(
        term.deaths,
        now,
        shell=term.shell,
        tried=term.tried_shells,
        policy=term.crash_policy,
        can_run=lambda s: resolve_shell(s, _path_of(term)) is not None,
    )
    will_recover = decision.action is not RestartAction.GIVE_UP
    if will_recover:
        recovery = Recovery(recreate_strategy().value, f"shell exited with code {code}")
    else:
        recovery = Recovery(give_up_strategy().value, decision.reason)
    if term.current is not None:
        # `exit 3` ends the shell with the command's own status; a signal leaves it unknown.
        term.finish_current(Status.INTERRUPTED, recovery, code if code >= 0 else None)
    elif will_recover:
        term.pending_recoveries.append(recovery)
    if term.on_exit is not None:
        try:
            term.on_exit(TerminalExited(term.terminal_id, code, will_recover))
        except Exception:  # a faulty listener must not stop the recovery
            pass
    if will_recover:
        task = asyncio.get_running_loop().create_task(restart(term, decision, now))
        term.restarting = task
    else:
        term.failed = ShellCrashed(decision.reason)


async def restart(term: Terminal, decision: RestartDecision, died_at: float) -> None:
    if term.proc is not None:
        term.proc.close()
    alternative = term.mode is Mode.ALTERNATIVE_SHELL
    restore: Path | None = None
    shell = term.shell
    if decision.action is RestartAction.ALTERNATIVE_SHELL and decision.shell is not None:
        term.tried_shells.append(term.shell)
        term.deaths.clear()
        exe = resolve_shell(decision.shell, _path_of(term))
        if exe is None:
            term.failed = ShellCrashed(f"fallback shell {decision.shell!r} vanished")
            return
        shell, alternative = exe, True
        term.pending_recoveries.append(Recovery("alternative_shell", decision.reason))
    else:
        restore = prepare_restore(term)
    try:
        await start_shell(term, shell, restore=restore, alternative=alternative)
    except Exception as exc:
        term.failed = exc
        if term.observe is not None:
            term.observe("terminal.recover", term.clock.now() - died_at, False)
        return
    term.restarts += 1
    elapsed = term.clock.now() - died_at
    term.last_recovery_ms = elapsed * 1000.0
    if term.observe is not None:
        term.observe("terminal.recover", elapsed, True)
