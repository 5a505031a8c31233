"""A persistent shell on a PTY that runs one command at a time and reports exactly how it went.

Theory of operation: the terminal composes parts, each with one responsibility, and wires
them together:
- `ShellProcess` (shell.py): the current shell on its PTY: spawning, probing, stopping;
- `OscParser` (osc.py) and `CommandTracker` (tracker.py): every PTY chunk goes through the
  parser, whose events go through the sans-I/O tracker, which says what happened to the
  command in flight (started, output, finished) and where the shell is (cwd, ready); the
  nonce rules that make a forged end mark useless live in the tracker;
- `Execution` (execution.py): one command's output and result;
- `climb` (startup.py): the start-up ladder down to a shell that answers;
- `await_result` / `stop_foreground` (waiting.py): how long a request waits, and stopping;
- `decide_restart` (recovery.py): whether a dead shell is restarted or replaced.
How a command's end is found is the tracker's `EndDetection` (integration, end marker, raw);
what results report is `Mode` (which also says whether another shell or no rc files run).

One command at a time: `execute` on a busy terminal raises `TerminalError` ("busy") rather
than interleave two commands' output; a command returned as `waiting_for_input` (quiet for
`idle_timeout`) keeps running: `send_text` answers it, `wait()` gets its final result.
A hard `timeout` interrupts the foreground group (SIGINT, then SIGTERM, SIGKILL after
`interrupt_grace` each, then the shell itself), so the terminal is usable afterwards.

When the shell dies, the running command ends `interrupted` with a `recreate_terminal`
recovery, `on_exit` reports it, and a new shell starts in the last cwd with the exported
environment the old one last wrote (crash loops: `recovery.py`). Every wait is on `clock`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import secrets
import signal
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lapce_bridge.clock import SYSTEM_CLOCK
from lapce_bridge.core.clock import Clock
from lapce_bridge.core.errors import InvalidParams, ShellCrashed, TerminalBusy, TerminalError
from lapce_bridge.private import create_private_file
from lapce_bridge.terminal import modes
from lapce_bridge.terminal.execution import Execution
from lapce_bridge.terminal.exports import WORDS_FILE, ShellWords, may_export
from lapce_bridge.terminal.files import CommandFile, new_private_dir, runtime_base
from lapce_bridge.terminal.foreground import Foreground
from lapce_bridge.terminal.modes import (
    HALT_FILE,
    INTERRUPT_KEY,
    SELF_LOADING,
    AsTypedErrors,
    Launch,
    build_env,
    load_keys,
    resolve_shell,
    run_line,
    shell_kind,
    typed,
    typed_secret,
    typed_text,
)
from lapce_bridge.terminal.osc import OscParser
from lapce_bridge.terminal.pty import PtyProcess
from lapce_bridge.terminal.recovery import (
    CrashLoopPolicy,
    RestartAction,
    RestartDecision,
    decide_restart,
)
from lapce_bridge.terminal.result import (
    ExecResult,
    Mode,
    Recovery,
    Status,
    TerminalExited,
    TerminalStats,
    abandoned_inside,
    incomplete_command,
)
from lapce_bridge.terminal.shell import ShellProcess
from lapce_bridge.terminal.spool import SpoolStore
from lapce_bridge.terminal.startup import Outcome, Plan, Rungs, choose_shell, climb, restore_file
from lapce_bridge.terminal.tracker import (
    CommandTracker,
    EndDetection,
    Executing,
    Finished,
    LineWanted,
    Output,
    ProbeAnswered,
    Ready,
    Started,
    TrackerEvent,
)
from lapce_bridge.terminal.waiting import Hooks, await_result, command_file_text, stop_foreground

__all__ = ["Terminal", "TerminalExited", "TerminalStats"]

Observe = Callable[[str, float, bool], None]
_ids = itertools.count(1)
_RESULTS_KEPT = 64
_ABANDON_POLLS = 500  # a second of 2 ms looks for the line editor, then Ctrl-C regardless
_ABANDON_POLL_S = 0.002
_DEAF_GRACE_S = 0.3  # a continuation prompt still there after Ctrl-C: the shell ignores SIGINT
_DEAF_TRIES = 5
_UNANSWERED_PROBES = 2  # status questions a shell at its prompt may leave unanswered


def _is_dir(path: str) -> bool:
    return os.path.isdir(path)  # a stat, not a read: cannot block on a FIFO


class Terminal:
    """Use `await Terminal.start(...)`; the constructor does no I/O."""

    def __init__(
        self,
        *,
        terminal_id: str | None = None,
        shell: str | None = None,
        cwd: str | Path | None = None,
        env: dict[str, str] | None = None,
        cols: int = 120,
        rows: int = 30,
        shell_integration: bool = True,
        clock: Clock = SYSTEM_CLOCK,
        state_dir: Path | None = None,
        observe: Observe | None = None,
        spools: SpoolStore | None = None,
        on_exit: Callable[[TerminalExited], None] | None = None,
        startup_timeout: float = 5.0,
        probe_timeout: float = 2.0,
        interrupt_grace: float = 1.0,
        crash_policy: CrashLoopPolicy | None = None,
        base_env: dict[str, str] | None = None,
    ) -> None:
        self.terminal_id = terminal_id or f"t{next(_ids)}"
        if state_dir is None:
            state_dir = Path(os.environ.get("XDG_RUNTIME_DIR") or "/tmp") / "lapce-bridge"
        self.state_dir = state_dir
        # The private folder for the command and environment files, made in `boot`.
        self.dir = Path()
        self.requested_shell = shell
        self.shell = shell or ""
        self.initial_cwd = str(cwd) if cwd is not None else os.getcwd()
        self.extra_env = dict(env or {})
        self.base_env = base_env
        self.cols, self.rows = cols, rows
        self.shell_integration = shell_integration
        self.clock = clock
        self.observe = observe
        self._own_spools = spools is None
        self.spools = spools or SpoolStore(state_dir / "spool")
        self.on_exit = on_exit
        self.startup_timeout = startup_timeout
        self.probe_timeout = probe_timeout
        self.interrupt_grace = interrupt_grace
        self.crash_policy = crash_policy or CrashLoopPolicy()
        self.mode = Mode.SHELL_INTEGRATION  # what results report
        self.parser = OscParser(strip_ansi=True)
        self.tracker = CommandTracker()
        self.shell_proc: ShellProcess | None = None
        self._cmd_file: CommandFile | None = None
        self._halted = False  # the halt file is there (`_halt`), until the next command
        self.cmd_path = ""
        self._words = ShellWords("")  # the user's names, as the shell listed them
        self.pending_recoveries: list[Recovery] = []
        self._exec: Execution | None = None
        self._replay: Execution | None = None  # never started when its shell died: run again
        self._results: OrderedDict[str, ExecResult] = OrderedDict()
        self._hooks = Hooks(
            stop=self._stop_current,
            end_raw=self._end_raw,
            cwd=self._cwd,
            foreground=self._foreground,
            at_prompt=self._at_prompt,
            recover=self._recover_integration,
        )
        self._closing = False
        self._closed = False
        self._starting = False
        self.restarting: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self.failed: BaseException | None = None
        self.deaths: list[float] = []
        self.tried_shells: list[str] = []
        self.executions = 0
        self.stop_grace = 2.0  # seconds a cancelled command gets to stop before "busy"
        self.restarts = 0
        self.last_recovery_ms: float | None = None
        # From a command's last output to its end found without integration (the RTO of a
        # removed or replaced integration).
        self.last_integration_recovery_ms: float | None = None
        self.last_used = clock.now()
        # Status questions a shell at its prompt left unanswered, for the command in flight.
        self._unanswered = 0
        self._unanswered_exec: Execution | None = None

    # -- lifecycle ----------------------------------------------------------------------
    @classmethod
    async def start(cls, **kwargs: Any) -> Terminal:
        term = cls(**kwargs)
        await term.boot()
        return term

    async def boot(self, restore: Path | None = None) -> None:
        """Start the shell; `restore` is a file of exported variables to source first (a
        terminal recreated by a new terminal host from what its dead shell last saved)."""
        base = runtime_base(self.state_dir)
        self.dir = new_private_dir(base / f"{self.terminal_id}-{secrets.token_hex(4)}")
        self._cmd_file = CommandFile(self.dir / "cmd")
        # The hooks save the environment by redirecting into these: made here, 0600, so the
        # shell's umask never decides who may read exported secrets.
        for name in ("env", "env.fish"):
            os.close(create_private_file(self.dir / name))
        self.cmd_path = str(self._cmd_file.path)
        self._words = ShellWords(str(self.dir / WORDS_FILE))
        requested = self.requested_shell or modes.default_shell(self.base_env)
        exe, recovery = choose_shell(
            requested, self._path(), self.tried_shells, self._start_candidates()
        )
        if recovery is not None:
            self.pending_recoveries.append(recovery)
        if not _is_dir(self.initial_cwd):
            raise TerminalError(f"cwd {self.initial_cwd!r} is not a directory", retryable=False)
        alternative = recovery is not None
        while True:
            try:
                await self._start_shell(exe, restore=restore, alternative=alternative)
                return
            except ShellCrashed as exc:
                # A shell that exits at once: the next of the fallback shells, $SHELL, /bin/sh.
                self.tried_shells.append(exe)
                nxt = self._next_start_shell()
                if nxt is None:
                    raise ShellCrashed(f"{exc}; no fallback shell starts either") from exc
                self.pending_recoveries.append(Recovery("alternative_shell", f"{exc}; using {nxt}"))
                exe, alternative = nxt, True

    def _start_candidates(self) -> tuple[str, ...]:
        """Where creation falls back to (spec 2.2): the configured fallback shells, then the
        user's $SHELL, then /bin/sh."""
        env = self.base_env or os.environ
        return (*self.crash_policy.fallback_shells, env.get("SHELL") or "", "/bin/sh")

    def _next_start_shell(self) -> str | None:
        candidates = self._start_candidates()
        tried = {os.path.basename(s) for s in self.tried_shells} | set(self.tried_shells)
        for name in candidates:
            if not name or name in tried or os.path.basename(name) in tried:
                continue
            exe = resolve_shell(name, self._path())
            if exe is not None and exe not in tried:
                return exe
        return None

    async def __aenter__(self) -> Terminal:
        if self.shell_proc is None:
            await self.boot()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def proc(self) -> PtyProcess | None:
        return self.shell_proc.proc if self.shell_proc is not None else None

    @property
    def pid(self) -> int | None:
        return self.shell_proc.pid if self.shell_proc is not None else None

    @property
    def kind(self) -> str:
        return self.shell_proc.kind if self.shell_proc is not None else "posix"

    @property
    def detection(self) -> EndDetection:
        """How this terminal finds a command's end."""
        return self.tracker.detection

    @property
    def cwd(self) -> str | None:
        return self.tracker.cwd

    @property
    def busy(self) -> bool:
        return self._exec is not None

    @property
    def current(self) -> Execution | None:
        return self._exec

    @property
    def alive(self) -> bool:
        return self.shell_proc is not None and self.shell_proc.alive and not self._closed

    def _path(self) -> str | None:
        return self.extra_env.get("PATH") or (self.base_env or os.environ).get("PATH")

    def _cwd(self) -> str | None:
        return self.tracker.cwd

    async def close(self) -> None:
        if self._closed:
            return
        self._closing = True
        if self.restarting is not None and not self.restarting.done():
            self.restarting.cancel()
            # wait() neither raises the task's outcome nor hides a cancellation of close().
            await asyncio.wait([self.restarting])
        for task in list(self._tasks):
            task.cancel()
        shell = self.shell_proc
        if shell is not None:
            await shell.stop(self.clock, self.interrupt_grace)
        ex = self._exec
        if ex is not None:
            ex.interrupted = True
            self._finish(ex, exit_code=None, status=Status.INTERRUPTED)
        self._closed = True
        if shell is not None:
            shell.detach()
        if self._cmd_file is not None:
            self._cmd_file.close()
        if self._own_spools:
            self.spools.close()
        if self.dir != Path():
            with contextlib.suppress(OSError):
                for name in ("cmd", "env", "env.fish", "restore", WORDS_FILE, HALT_FILE, "int"):
                    (self.dir / name).unlink(missing_ok=True)
                self.dir.rmdir()

    # -- starting a shell ------------------------------------------------------------------
    async def _start_shell(self, exe: str, *, restore: Path | None, alternative: bool) -> None:
        self._starting = True
        try:
            await self._climb(exe, restore=restore, alternative=alternative)
        finally:
            self._starting = False

    async def _climb(self, exe: str, *, restore: Path | None, alternative: bool) -> None:
        cwd = self.cwd if self.cwd and _is_dir(self.cwd) else self.initial_cwd
        plan = Plan(
            exe=exe,
            env=build_env(self.base_env, self.extra_env),
            cwd=cwd,
            term_dir=self.dir,
            zdotdir_base=self.dir.parent,
            integration=self.shell_integration,
            restore=restore,
            alternative=alternative,
            startup_timeout=self.startup_timeout,
            probe_timeout=self.probe_timeout,
            unmarked=self.crash_policy.unmarked,
        )
        clock, grace = self.clock, self.interrupt_grace

        def spawn(launch: Launch, exe: str, detection: EndDetection) -> ShellProcess:
            self.parser.reset()
            self.parser.strip_ansi = True
            self.tracker.reset(detection)
            shell = ShellProcess.spawn(
                launch,
                exe,
                cwd=cwd,
                cols=self.cols,
                rows=self.rows,
                on_data=self._on_data,
                on_exit=self._on_shell_exit,
            )
            self.shell_proc = shell
            self.shell = exe
            return shell

        async def probe(shell: ShellProcess) -> bool:
            assert self._cmd_file is not None
            answered, _ = await shell.probe(
                self.tracker, self._cmd_file.write, self.cmd_path, clock, self.probe_timeout
            )
            return answered

        async def stop(shell: ShellProcess) -> None:
            await shell.stop(clock, grace)
            shell.detach()

        async def wait_ready(shell: ShellProcess) -> bool:
            return await shell.wait_ready(clock, self.startup_timeout)

        outcome: Outcome = await climb(plan, Rungs(spawn, probe, stop, wait_ready))
        self.tracker.reset(outcome.detection)
        self.mode = outcome.mode
        self.pending_recoveries.extend(outcome.recoveries)

    # -- commands -----------------------------------------------------------------------
    async def execute(
        self,
        command: str,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - ends in an interrupt, not a cancel
        idle_timeout: float | None = None,
        max_wait: float | None = None,
        max_output_bytes: int = 256 * 1024,
        ansi: str = "strip",
        on_data: Callable[[str], None] | None = None,
        received_at: float | None = None,
        cwd: str | None = None,
        on_finished: Callable[[ExecResult], None] | None = None,
    ) -> ExecResult:
        if not isinstance(command, str):
            raise InvalidParams("command must be a string")
        if ansi not in ("strip", "keep"):
            raise InvalidParams(f"ansi must be 'strip' or 'keep', not {ansi!r}")
        if max_output_bytes < 16:
            raise InvalidParams("maxOutputBytes must be at least 16")
        for name, value in (
            ("timeout", timeout),
            ("idle_timeout", idle_timeout),
            ("max_wait", max_wait),
        ):
            if value is not None and value <= 0:
                raise InvalidParams(f"{name} must be positive")
        received = self.clock.now() if received_at is None else received_at
        if not self._takes_commands:
            await self._usable()  # it refuses, or waits for the restart
        stopping = self._exec
        if stopping is not None and stopping.interrupted:
            # A cancelled command was sent SIGINT; its end is moments away. Wait for it
            # (bounded) rather than refuse the next command as "busy".
            with contextlib.suppress(TimeoutError):
                async with self.clock.timeout(self.stop_grace):
                    await asyncio.shield(stopping.done)
        if self._exec is not None:
            raise TerminalBusy(
                f"terminal {self.terminal_id} is busy running {self._exec.execution_id}: "
                "answer it with sendText, interrupt it, or use another terminal",
                retryable=False,
                data={"executionId": self._exec.execution_id, "terminalId": self.terminal_id},
            )
        self.executions += 1
        now = self.clock.now()
        self.last_used = now
        # The command's own secret (the last 32 digits): it ends this command and no other
        # (tracker.py, rule 1). One draw for it and the id's suffix.
        drawn = secrets.token_hex(19)
        execution_id = f"{self.terminal_id}-{self.executions}-{drawn[:6]}"
        secret = drawn[6:]
        self.parser.strip_ansi = ansi == "strip"
        # The shell gets the command first, and works on it while the rest is set up here:
        # nothing it prints is read before this method awaits.
        try:
            delivery: tuple[bool, bool] | OSError = self._deliver(command, cwd, secret)
        except OSError as exc:
            delivery = exc
        ex = Execution(
            execution_id=execution_id,
            terminal_id=self.terminal_id,
            spool=self.spools.create(execution_id, max_output_bytes),
            received_at=received,
            now=now,
            mode=self.mode,
            shell=self.shell,
            token=secret,
            on_data=on_data,
            recoveries=self.pending_recoveries,
        )
        self.pending_recoveries = []
        if on_finished is not None:
            ex.done.add_done_callback(lambda f: f.cancelled() or on_finished(f.result()))
        self._exec = ex
        ex.command, ex.run_cwd = command, cwd
        if isinstance(delivery, OSError):
            self._finish(ex, exit_code=None, status=Status.INTERRUPTED)
            raise ShellCrashed(f"could not write to the shell: {delivery}") from delivery
        self._delivered(ex, *delivery)
        try:
            return await await_result(ex, self.clock, self._hooks, timeout, idle_timeout, max_wait)
        except asyncio.CancelledError:
            # The request was cancelled: stop the command rather than leave it running unseen
            # (escalating as `interrupt` does: one SIGINT can land between two commands of a
            # list, or before the command runs, and stop nothing).
            ex.interrupted = True
            if not ex.done.done() and self.proc is not None:
                self._spawn_task(stop_foreground(self.proc, ex, self.clock, self.interrupt_grace))
            raise

    @property
    def _takes_commands(self) -> bool:
        """Whether a command can be handed over at once (checked inline: every command asks,
        and nearly always the answer is yes); else `_usable` refuses or waits."""
        return not self._closing and self.failed is None and self.restarting is None and self.alive

    async def _usable(self) -> None:
        """Refuse a command to a closed, failed or shell-less terminal; wait for a restart."""
        if self._closed or self._closing:
            raise TerminalError(f"terminal {self.terminal_id} is closed", retryable=False)
        if self.restarting is not None and not self.restarting.done():
            await asyncio.shield(self.restarting)
        if self.failed is not None:
            raise ShellCrashed(f"terminal {self.terminal_id} is gone: {self.failed}")
        if self.proc is None or not self.proc.alive:
            raise ShellCrashed(f"terminal {self.terminal_id} has no running shell")

    async def wait(
        self, execution_id: str, within: float | None = None, idle_timeout: float | None = None
    ) -> ExecResult:
        """The final result of an execution (waiting for it if it still runs).

        With `idle_timeout`, a program that asks for input again (quiet while it reads the
        terminal) is answered `waiting_for_input` once more, with only the output printed
        since the last such answer; a quiet program that reads nothing is waited for."""
        done = self._results.get(execution_id)
        if done is not None:
            return done
        ex = self._exec
        if ex is None or ex.execution_id != execution_id:
            raise InvalidParams(f"unknown executionId {execution_id!r} on {self.terminal_id}")
        if idle_timeout is None:
            async with self.clock.timeout(within):
                return await asyncio.shield(ex.done)
        result = await await_result(
            ex, self.clock, self._hooks, None, idle_timeout, within, quiet_is_running=False
        )
        if result.status is Status.RUNNING:
            raise TimeoutError(f"{execution_id} still runs after {within} s")
        return result

    def send_text(self, text: str) -> None:
        if not isinstance(text, str):
            raise InvalidParams("text must be a string")
        if self.proc is None or not self.proc.alive:
            raise ShellCrashed(f"terminal {self.terminal_id} has no running shell")
        if self._exec is not None:
            self._exec.last_activity = self.clock.now()
        self.proc.write(text.encode("utf-8", "surrogateescape"))

    async def interrupt(self) -> None:
        """SIGINT to the foreground group; escalation continues in the background."""
        ex = self._exec
        if self.proc is None or not self.proc.alive:
            return
        if ex is None:
            self.proc.signal_foreground(signal.SIGINT)
            return
        ex.interrupted = True
        self._spawn_task(stop_foreground(self.proc, ex, self.clock, self.interrupt_grace))

    def kill(self) -> None:
        """SIGKILL the shell (and its foreground group); it is then recovered like a crash."""
        if self.proc is not None:
            self.proc.kill()

    def resize(self, cols: int, rows: int) -> None:
        if not (0 < cols < 10_000 and 0 < rows < 10_000):
            raise InvalidParams(f"bad terminal size {cols}x{rows}")
        self.cols, self.rows = cols, rows
        if self.proc is not None and self.proc.alive:
            self.proc.resize(cols, rows)

    def read_output(
        self, execution_id: str, offset: int = 0, limit: int = 1 << 20
    ) -> tuple[str, int, bool]:
        return self.spools.read(execution_id, offset, limit)

    def trim_spools(self, keep_bytes: int) -> int:
        return self.spools.trim(keep_bytes)

    def _spawn_task(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _finish(
        self,
        ex: Execution,
        *,
        exit_code: int | None,
        status: Status,
        recovery: Recovery | None = None,
        at_prompt: bool = False,
    ) -> ExecResult:
        result = ex.finish(
            self.clock.now(),
            exit_code=exit_code,
            cwd=self.cwd,
            status=status,
            recovery=recovery,
            at_prompt=at_prompt,
        )
        self.spools.finished(ex.execution_id)
        if self._exec is ex:
            self._exec = None
            self.tracker.abandon()
        self._results[ex.execution_id] = result
        while len(self._results) > _RESULTS_KEPT:
            self._results.popitem(last=False)
        self.last_used = self.clock.now()
        return result

    def _finish_current(
        self, status: Status, recovery: Recovery | None, exit_code: int | None = None
    ) -> None:
        ex = self._exec
        if ex is not None:
            self._finish(ex, exit_code=exit_code, status=status, recovery=recovery)

    async def _stop_current(self) -> None:
        ex, proc = self._exec, self.proc
        if ex is not None and proc is not None:
            await stop_foreground(proc, ex, self.clock, self.interrupt_grace)

    def _end_raw(self) -> None:
        self._finish_current(Status.COMPLETED, None)

    def _foreground(self) -> Foreground | None:
        return self.shell_proc.foreground() if self.shell_proc is not None else None

    def _at_prompt(self, fg: Foreground) -> bool:
        ex = self._exec
        if ex is not None and ex.lines_left < 0:
            return False  # a continuation prompt being abandoned: the editor reads on purpose
        prompted = ex is not None and ex.prompted
        return self.shell_proc is not None and self.shell_proc.at_prompt(fg, prompted)

    async def _recover_integration(self) -> None:
        """The shell is back at its prompt but the command's end mark never came: the command
        removed or replaced our hooks (`PROMPT_COMMAND=true`, `exec bash --norc`, ...). Ask
        the shell for `$?` and `$PWD` with a tokened mark, end the command with them, and find
        later commands' ends with an end marker (this terminal only; cwd and env are the
        shell's own, untouched)."""
        ex, shell = self._exec, self.shell_proc
        if ex is None or shell is None or (self.restarting and not self.restarting.done()):
            return  # (a command waiting for the restarted shell is handed over again)
        started = self.clock.now()
        kind = shell.current_kind()
        self.tracker.hold_output()
        answered, code = await shell.status(self.tracker, kind, self.clock, self.probe_timeout)
        if ex.done.done():
            return  # the end mark came after all
        if not answered:
            self._unanswered = self._unanswered + 1 if self._unanswered_exec is ex else 1
            self._unanswered_exec = ex
            if self._unanswered >= _UNANSWERED_PROBES and shell.alive:
                # At its prompt, reading, and deaf: its output goes nowhere (`exec >/dev/null
                # 2>&1`), so nothing it prints can end a command again. Only a new shell (the
                # same one, cwd and exported env restored) makes the terminal usable.
                ex.recoveries.append(
                    Recovery(
                        "no_shell_integration",
                        f"{kind} is at its prompt but printed no answer to "
                        f"{self._unanswered} status questions (its output is redirected "
                        "away); it was replaced",
                    )
                )
                ex.interrupted = True  # it ran (the shell read it): never run it again
                shell.proc.kill()
                with contextlib.suppress(TimeoutError):  # its death ends the command
                    async with self.clock.timeout(self.interrupt_grace):
                        await asyncio.shield(ex.done)
            return  # otherwise wait on: the next prompt check asks again
        shell.kind = kind
        self.tracker.detection = EndDetection.END_MARKER
        if self.mode is not Mode.ALTERNATIVE_SHELL:
            self.mode = Mode.NO_SHELL_INTEGRATION
        took = (self.clock.now() - started) * 1000.0
        reason = (
            f"the command removed or replaced the shell integration ({kind} is at its prompt "
            f"without an end mark); recovered in {took:.0f} ms, later commands end with an "
            "end marker"
        )
        self.last_integration_recovery_ms = (self.clock.now() - ex.last_activity) * 1000.0
        self._finish(
            ex,
            exit_code=code,
            status=Status.COMPLETED,
            recovery=Recovery("no_shell_integration", reason),
            at_prompt=True,
        )

    # -- the PTY's side: bytes in, through the parser and the tracker -----------------------
    def _on_data(self, data: bytes) -> None:
        events = self.tracker.feed(self.parser.feed(data))
        if events:
            self._apply(events)

    def _apply(self, events: list[TrackerEvent]) -> None:
        now = self.clock.now()
        for event in events:
            kind = type(event)
            if kind is Output:
                ex = self._exec
                if ex is not None:
                    ex.feed(event.data, now)  # type: ignore[union-attr]
            elif kind is Started:
                if self._exec is not None:
                    self._exec.begin(now)
            elif kind is Finished:
                if self._exec is not None:
                    code = event.exit_code  # type: ignore[union-attr]
                    self._finish(self._exec, exit_code=code, status=Status.COMPLETED)
            elif kind is Executing:
                if self._exec is not None:
                    self._exec.executing()
            elif kind is LineWanted:
                self._next_line(event.continuation)  # type: ignore[union-attr]
            elif kind is Ready:
                if self._exec is not None and self._exec.started:
                    self._exec.prompted = True
                if self.shell_proc is not None:
                    self.shell_proc.mark_ready()
            elif kind is ProbeAnswered and self.shell_proc is not None:
                self.shell_proc.answer_probe(event.exit_code)  # type: ignore[union-attr]

    def _hand_over(self, ex: Execution) -> None:
        """Give the shell the command again (a replay after its shell died)."""
        self._delivered(ex, *self._deliver(ex.command, ex.run_cwd, ex.token))

    def _deliver(self, command: str, cwd: str | None, token: str) -> tuple[bool, bool]:
        """Give the shell the command: its text to the command file, then what is typed to
        run it (the nonce and the load key, or the line that sources the file). Whether it
        is typed line by line, and whether the shell loads its later lines itself."""
        shell, cmd_file = self.shell_proc, self._cmd_file
        assert shell is not None
        assert cmd_file is not None
        kind, detection = shell.kind, self.tracker.detection
        by_line = typed(kind, detection)
        text = command_file_text(kind, command, cwd, by_line)
        lines = text.count("\n") if by_line else 1
        self_loading = lines > 1 and kind in SELF_LOADING
        if self_loading:
            text = typed_text(kind, text)
        if self._halted:
            self._halted = False
            with contextlib.suppress(OSError):
                os.unlink(self.dir / HALT_FILE)
        secret = typed_secret(kind, token)
        if by_line and kind in SELF_LOADING:  # bash, zsh: the digit their hooks read
            secret += may_export(kind, text, self._words.names())
        self.tracker.submit(secret, typed=by_line)
        cmd_file.write(text.encode())
        shell.proc.write(run_line(kind, detection, self.cmd_path, secret, lines))
        return by_line, self_loading

    def _delivered(self, ex: Execution, by_line: bool, self_loading: bool) -> None:
        """What the execution needs to know of how its command was given to the shell."""
        kind, detection = self.kind, self.tracker.detection
        ex.typed = by_line
        if self_loading:
            ex.halt = self._halt  # the shell loads the next lines itself, unless told
        if not by_line:
            ex.renamed = AsTypedErrors(kind, self.cmd_path, os.path.basename(self.shell))
        ex.skip_cr = kind == "fish"
        ex.raw = detection is EndDetection.RAW

    def _halt(self) -> None:
        """The command in flight is being stopped: a shell loading its lines itself loads no
        more of them (it looks for this file before each load)."""
        if not self._halted:
            self._halted = True
            with contextlib.suppress(FileExistsError):
                os.close(create_private_file(self.dir / HALT_FILE, os.O_WRONLY))

    def _next_line(self, continuation: bool) -> None:
        """The shell asks for the command's next line (typed delivery): type the load key; or,
        for a command that was interrupted or is still incomplete after its last line (the
        shell asks at a continuation prompt only then), abandon the rest as a user would
        (Ctrl-C at a continuation prompt)."""
        ex, shell = self._exec, self.shell_proc
        if ex is None or shell is None or not shell.alive:
            return
        stopping = ex.interrupted or ex.timed_out
        if continuation:
            if not stopping and ex.lines_left == 0:
                ex.recoveries.append(incomplete_command())
            ex.lines_left = -1  # reported once, whatever the shell asks next
            self._spawn_task(self._abandon_input(shell, ex))
            return
        try:
            shell.proc.write(load_keys(shell.kind, "-" if stopping else ""))
        except OSError:
            pass  # the shell is gone: its death ends the command

    async def _abandon_input(self, shell: ShellProcess, ex: Execution) -> None:
        """Ctrl-C at the continuation prompt, once the line editor reads it: the prompt is
        printed before the editor starts, and a SIGINT in between leaves `$?` as it was
        (the incomplete command would be answered with the previous command's status).
        A shell that ignores SIGINT (the user's `trap '' INT`) never hears it, and the
        terminal would stay busy until the command's timeout: when the prompt is still there
        after `_DEAF_GRACE_S`, bash and zsh are given the load key's abandon argument, which
        aborts the prompt from inside the shell (zsh's mask shows no ignored SIGINT: it
        catches it and drops it, so the kernel cannot tell beforehand); fish, whose editor
        reads Ctrl-C as a key, is given it again (once lost to a `trap '' INT` while its
        editor was not yet reading)."""
        for _ in range(_ABANDON_POLLS):
            fg = shell.foreground()
            if ex.done.done() or fg is None or shell.at_prompt(fg, prompted=True):
                break
            await self.clock.sleep(_ABANDON_POLL_S)
        keys = INTERRUPT_KEY
        for _ in range(_DEAF_TRIES):
            if ex.done.done() or not shell.alive:
                return
            with contextlib.suppress(OSError):
                shell.proc.write(keys)
            if keys is not INTERRUPT_KEY:
                abandoned_inside(ex.recoveries)
            with contextlib.suppress(TimeoutError):
                async with self.clock.timeout(_DEAF_GRACE_S):
                    await asyncio.shield(ex.done)
                return
            fg = shell.foreground()
            if fg is None or not shell.at_prompt(fg, prompted=True):
                return  # not at its prompt any more: the command's own end comes
            # Still there: deaf to Ctrl-C, or (fish) it came before the editor read keys.
            if shell.kind in SELF_LOADING:
                keys = load_keys(shell.kind, "!")

    # -- deaths and restarts ----------------------------------------------------------------
    def _on_shell_exit(self, shell: ShellProcess, code: int) -> None:
        shell.on_exit(code)
        if self._closing or self._closed or shell.stopping or shell is not self.shell_proc:
            return
        if self._starting:
            return  # the start-up ladder sees it (shell.exited) and climbs on
        self._on_death(code)

    def _asked_for(self, code: int) -> bool:
        """Whether the running command ended the shell itself (`exit N`, `exec cmd`, a
        `set -e` failure): the shell exited with a status while a command it had started
        ran and we sent no signal. A death by a signal (ours, the kernel's, anyone's) or with
        no command running is a crash."""
        ex = self._exec
        return (
            code >= 0 and ex is not None and ex.started and not ex.interrupted and not ex.timed_out
        )

    def _on_death(self, code: int) -> None:
        now = self.clock.now()
        asked = self._asked_for(code)
        if asked:
            # Not a crash: it does not count toward the crash loop, and the same shell comes
            # back with the cwd and the exported environment it had before the command.
            decision = RestartDecision(RestartAction.RESTART, self.shell, "asked for")
        else:
            self.deaths.append(now)
            decision = decide_restart(
                self.deaths,
                now,
                shell=self.shell,
                tried=self.tried_shells,
                policy=self.crash_policy,
                can_run=lambda s: resolve_shell(s, self._path()) is not None,
            )
        will_recover = decision.action is not RestartAction.GIVE_UP
        if asked:
            recovery = Recovery(
                self.crash_policy.remedy.value,
                f"the command ended the shell (exit status {code}); the same shell was "
                "started again with the cwd and exported environment it had before it",
            )
        elif will_recover:
            recovery = Recovery(self.crash_policy.remedy.value, f"shell exited with code {code}")
        else:
            recovery = Recovery(self.crash_policy.fallback.value, decision.reason)
        ex = self._exec
        policy = self.crash_policy
        if (
            ex is not None
            and will_recover
            and not (ex.started or ex.interrupted or ex.timed_out)
            and sum(r.action == policy.rerun.value for r in ex.recoveries) < policy.reruns
        ):
            # It provably never started (no start mark): it runs on the restarted shell
            # instead of being lost, as often as the terminal/recoverable row allows.
            ex.recoveries.append(
                Recovery(
                    policy.rerun.value,
                    f"the shell died (code {code}) before the command started; it ran on the "
                    "restarted shell",
                )
            )
            self._replay = ex
        elif ex is not None:
            # `exit 3` ends the shell with the command's own status; a signal leaves it unknown.
            self._finish_current(Status.INTERRUPTED, recovery, code if code >= 0 else None)
        elif will_recover:
            self.pending_recoveries.append(recovery)
        if self.on_exit is not None:
            try:
                self.on_exit(TerminalExited(self.terminal_id, code, will_recover))
            except Exception:  # a faulty listener must not stop the recovery
                pass
        if will_recover:
            task = asyncio.get_running_loop().create_task(self._restart(decision, now, code))
            self.restarting = task
        else:
            self.failed = ShellCrashed(decision.reason)

    async def _restart(self, decision: RestartDecision, died_at: float, code: int) -> None:
        old = self.shell_proc
        if old is not None:
            old.proc.close()
            old.detach()
        alternative = self.mode is Mode.ALTERNATIVE_SHELL
        restore: Path | None = None
        exe = self.shell
        if decision.action is RestartAction.ALTERNATIVE_SHELL and decision.shell is not None:
            self.tried_shells.append(self.shell)
            self.deaths.clear()
            alt = resolve_shell(decision.shell, self._path())
            if alt is None:
                self.failed = ShellCrashed(f"fallback shell {decision.shell!r} vanished")
                return
            exe, alternative = alt, True
            self.pending_recoveries.append(Recovery("alternative_shell", decision.reason))
        if old is not None:
            # The exported environment comes along, into another kind of shell too.
            restore = restore_file(self.dir, old.kind, shell_kind(exe))
        tries = max(1, self.crash_policy.recreations)  # the terminal/critical row's
        for tried in range(1, tries + 1):
            try:
                await self._start_shell(exe, restore=restore, alternative=alternative)
                break
            except Exception as exc:
                if tried < tries:
                    continue
                self.failed = exc
                replay, self._replay = self._replay, None
                if replay is not None:
                    self._finish(replay, exit_code=None, status=Status.INTERRUPTED)
                if self.observe is not None:
                    self.observe("terminal/recover", self.clock.now() - died_at, False)
                if self.on_exit is not None:  # given up: the row's fallback (an alert) follows
                    with contextlib.suppress(Exception):
                        self.on_exit(TerminalExited(self.terminal_id, code, False))
                return
        self.restarts += 1
        replay, self._replay = self._replay, None
        if replay is not None and not replay.done.done():
            self._hand_over(replay)
        elapsed = self.clock.now() - died_at
        self.last_recovery_ms = elapsed * 1000.0
        if self.observe is not None:
            self.observe("terminal/recover", elapsed, True)

    def statistics(self) -> TerminalStats:
        ps = self.parser.statistics()
        return TerminalStats(
            terminal_id=self.terminal_id,
            shell=self.shell,
            pid=self.pid,
            mode=self.mode.value,
            busy=self.busy,
            executions=self.executions,
            deaths=len(self.deaths),
            restarts=self.restarts,
            last_recovery_ms=self.last_recovery_ms,
            bytes_read=self.proc.bytes_read if self.proc is not None else 0,
            markers=ps.markers,
            parser_overflows=ps.overflows,
        )
