"""A persistent shell on a PTY that runs one command at a time and reports exactly how it went.

Theory of operation: the PTY reader feeds every chunk to the OSC parser; text after a command's
start mark goes to its `Execution`, markers move the state machine (`reader.py`). Modes,
best first: `shell_integration` (our hooks: 633 C starts, 633 D with our nonce ends, P;Cwd
tracks the cwd); `no_shell_integration` (a tokened end mark printed after each command);
`raw_output` (output until idle, exit code unknown). `Terminal.start` climbs down that ladder
when a rung does not answer within its bound (`startup.py`), so nobody waits forever for
a prompt that never comes.

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
from lapce_bridge.terminal.execution import Execution
from lapce_bridge.terminal.modes import run_line, runtime_dir, shell_kind, write_file
from lapce_bridge.terminal.osc import OscParser
from lapce_bridge.terminal.pty import PtyProcess
from lapce_bridge.terminal.reader import MarkerReader
from lapce_bridge.terminal.recovery import CrashLoopPolicy
from lapce_bridge.terminal.result import (
    ExecResult,
    Mode,
    Recovery,
    Status,
    TerminalExited,
    TerminalStats,
)
from lapce_bridge.terminal.spool import SpoolStore
from lapce_bridge.terminal.startup import boot, on_shell_death, stop_process
from lapce_bridge.terminal.waiting import await_result, command_file_text, stop_foreground

__all__ = ["Terminal", "TerminalExited", "TerminalStats"]

Observe = Callable[[str, float, bool], None]
_ids = itertools.count(1)
_RESULTS_KEPT = 64


class Terminal(MarkerReader):
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
        # The command and environment files are rewritten for every command: on tmpfs when
        # there is one (a write there costs a quarter of one on disk).
        self.dir = runtime_dir(state_dir) / f"{self.terminal_id}-{secrets.token_hex(4)}"
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
        self.nonce = secrets.token_hex(16)
        self._nonce_tail = (";" + self.nonce + "\x07").encode()
        self.mode = Mode.SHELL_INTEGRATION  # what results report
        # How a command's end is found: SHELL_INTEGRATION, NO_SHELL_INTEGRATION or RAW_OUTPUT
        # (an alternative shell or a minimal PTY still uses one of these three).
        self.protocol = Mode.SHELL_INTEGRATION
        self.kind = "posix"
        self.cwd: str | None = None
        self.proc: PtyProcess | None = None
        self.parser = OscParser(nonce=self.nonce, strip_ansi=True)
        self.pending_recoveries: list[Recovery] = []
        self._exec: Execution | None = None
        self._results: OrderedDict[str, ExecResult] = OrderedDict()
        self.ready_fut: asyncio.Future[bool] | None = None
        self.probe_waiter: tuple[str, asyncio.Future[int | None]] | None = None
        self._raw_skip_echo = False
        self.cmd_path = str(self.dir / "cmd")
        self._line: bytes | None = None  # the integration line depends only on the shell kind
        self.stopping: PtyProcess | None = None
        self._closing = False
        self._closed = False
        self.exited_fut: asyncio.Future[int] | None = None
        self.restarting: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self.failed: BaseException | None = None
        self.deaths: list[float] = []
        self.tried_shells: list[str] = []
        self.executions = 0
        self.stop_grace = 2.0  # seconds a cancelled command gets to stop before "busy"
        self.restarts = 0
        self.last_recovery_ms: float | None = None
        self.last_used = clock.now()

    # -- lifecycle ----------------------------------------------------------------------
    @classmethod
    async def start(cls, **kwargs: Any) -> Terminal:
        term = cls(**kwargs)
        await term.boot()
        return term

    async def boot(self) -> None:
        self.dir.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.dir.mkdir(mode=0o700, exist_ok=True)
        await boot(self, restore=None)

    async def __aenter__(self) -> Terminal:
        if self.proc is None:
            await self.boot()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def busy(self) -> bool:
        return self._exec is not None

    @property
    def current(self) -> Execution | None:
        return self._exec

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.alive and not self._closed

    def spawn(self, argv: tuple[str, ...], env: dict[str, str], cwd: str) -> PtyProcess:
        """Start a shell process for this terminal (the startup ladder decides which)."""
        loop = asyncio.get_running_loop()
        self.ready_fut = loop.create_future()
        self.exited_fut = loop.create_future()
        self.parser.reset()
        self.parser.strip_ansi = True
        self.kind = shell_kind(argv[0])
        self._line = None
        proc = PtyProcess.spawn(
            argv,
            env=env,
            cwd=cwd,
            cols=self.cols,
            rows=self.rows,
            on_data=self._on_data,
            on_exit=self._on_proc_exit,
        )
        self.proc = proc
        return proc

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
        await stop_process(self)
        ex = self._exec
        if ex is not None:
            ex.interrupted = True
            self._finish(ex, exit_code=None, status=Status.INTERRUPTED)
        self._closed = True
        if self._own_spools:
            self.spools.close()
        with contextlib.suppress(OSError):
            for name in ("cmd", "env", "env.fish", "restore"):
                (self.dir / name).unlink(missing_ok=True)
            self.dir.rmdir()

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
        await self._usable()
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
        proc = self.proc
        assert proc is not None
        self.executions += 1
        self.last_used = self.clock.now()
        execution_id = f"{self.terminal_id}-{self.executions}-{secrets.token_hex(3)}"
        ex = Execution(
            execution_id=execution_id,
            terminal_id=self.terminal_id,
            spool=self.spools.create(execution_id, max_output_bytes),
            received_at=received,
            now=self.clock.now(),
            mode=self.mode,
            shell=self.shell,
            token=secrets.token_hex(8),
            on_data=on_data,
            recoveries=self.pending_recoveries,
        )
        self.pending_recoveries = []
        ex.skip_cr = self.kind == "fish"
        if on_finished is not None:
            ex.done.add_done_callback(lambda f: f.cancelled() or on_finished(f.result()))
        self._exec = ex
        self.parser.strip_ansi = ansi == "strip"
        self._raw_skip_echo = ex.raw = self.protocol is Mode.RAW_OUTPUT
        try:
            write_file(self.cmd_path, command_file_text(self.kind, command, cwd).encode())
            if self.protocol is Mode.SHELL_INTEGRATION:
                line = self._line or run_line(self.kind, self.protocol, Path(self.cmd_path), "")
                self._line = line
            else:
                line = run_line(self.kind, self.protocol, Path(self.cmd_path), ex.token)
            proc.write(line)
        except OSError as exc:
            self._finish(ex, exit_code=None, status=Status.INTERRUPTED)
            raise ShellCrashed(f"could not write to the shell: {exc}") from exc
        try:
            return await await_result(self, ex, timeout, idle_timeout, max_wait)
        except asyncio.CancelledError:
            # The request was cancelled: stop the command rather than leave it running unseen.
            ex.interrupted = True
            proc.signal_foreground(signal.SIGINT)
            raise

    async def _usable(self) -> None:
        if self._closed or self._closing:
            raise TerminalError(f"terminal {self.terminal_id} is closed", retryable=False)
        if self.restarting is not None and not self.restarting.done():
            await asyncio.shield(self.restarting)
        if self.failed is not None:
            raise ShellCrashed(f"terminal {self.terminal_id} is gone: {self.failed}")
        if self.proc is None or not self.proc.alive:
            raise ShellCrashed(f"terminal {self.terminal_id} has no running shell")

    async def wait(self, execution_id: str, within: float | None = None) -> ExecResult:
        """The final result of an execution (waiting for it if it still runs)."""
        done = self._results.get(execution_id)
        if done is not None:
            return done
        ex = self._exec
        if ex is None or ex.execution_id != execution_id:
            raise InvalidParams(f"unknown executionId {execution_id!r} on {self.terminal_id}")
        async with self.clock.timeout(within):
            return await asyncio.shield(ex.done)

    def result_of(self, execution_id: str) -> ExecResult | None:
        return self._results.get(execution_id)

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
        self._spawn_task(stop_foreground(self, ex))

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
    ) -> ExecResult:
        result = ex.finish(
            self.clock.now(), exit_code=exit_code, cwd=self.cwd, status=status, recovery=recovery
        )
        self.spools.finished(ex.execution_id)
        if self._exec is ex:
            self._exec = None
        self._results[ex.execution_id] = result
        while len(self._results) > _RESULTS_KEPT:
            self._results.popitem(last=False)
        self.last_used = self.clock.now()
        return result

    def _on_proc_exit(self, code: int) -> None:
        if self.exited_fut is not None and not self.exited_fut.done():
            self.exited_fut.set_result(code)
        if self.ready_fut is not None and not self.ready_fut.done():
            self.ready_fut.set_result(False)
        if self.probe_waiter is not None and not self.probe_waiter[1].done():
            self.probe_waiter[1].set_exception(ShellCrashed(f"shell exited with code {code}"))
        if self._closing or self._closed or self.stopping is self.proc:
            return
        on_shell_death(self, code)

    def finish_current(
        self, status: Status, recovery: Recovery | None, exit_code: int | None = None
    ) -> None:
        ex = self._exec
        if ex is not None:
            self._finish(ex, exit_code=exit_code, status=status, recovery=recovery)

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
