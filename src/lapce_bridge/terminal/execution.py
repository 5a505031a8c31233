"""One command's run through a terminal: its output, its end, and its result.

Theory of operation: an `Execution` is created when a command is handed to the shell and is
fed by the terminal's reader: `begin()` when the start mark arrives (633 C, or the tokened
start of the fallback modes), `feed()` for every text chunk after it, `finish()` once, when the
end mark arrives (633 D with our nonce, the tokened end, idleness in raw mode, or the shell's
death). Output is normalised (UTF-8, `\\r\\n`) into a `Spool`, which bounds memory; the
optional `on_data` callback sees the same text as it arrives.

`done` resolves exactly once with the final `ExecResult`; `snapshot()` builds a non-final one
(waiting for input, timed out) from the output so far without ending the execution. Times are
the terminal's clock: `durationMs` runs from `received_at` to the end mark.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from lapce_bridge.terminal.modes import AsTypedErrors
from lapce_bridge.terminal.output import OutputNormalizer
from lapce_bridge.terminal.result import ExecResult, Mode, Recovery, Status
from lapce_bridge.terminal.spool import Spool


class Execution:
    __slots__ = (
        "_held_nl",
        "_last_nl",
        "_loop",
        "_normalizer",
        "_waiters",
        "began",
        "command",
        "cwd",
        "done",
        "ended_at",
        "execution_id",
        "exit_code",
        "halt",
        "interrupted",
        "last_activity",
        "lines_left",
        "mode",
        "on_data",
        "prompted",
        "raw",
        "received_at",
        "recoveries",
        "renamed",
        "reported",
        "run_cwd",
        "shell",
        "skip_cr",
        "spool",
        "started",
        "terminal_id",
        "timed_out",
        "token",
        "typed",
    )

    def __init__(
        self,
        *,
        execution_id: str,
        terminal_id: str,
        spool: Spool,
        received_at: float,
        now: float,
        mode: Mode,
        shell: str,
        token: str,
        on_data: Callable[[str], None] | None,
        recoveries: list[Recovery],
    ) -> None:
        self.execution_id = execution_id
        self.terminal_id = terminal_id
        self.spool = spool
        self.received_at = received_at
        self.last_activity = now  # idleness counts from the hand-over, not the request's arrival
        self.mode = mode
        self.raw = False  # no end mark: the command ends when its output goes quiet
        self.shell = shell
        self.token = token
        self.on_data = on_data
        self.recoveries = recoveries
        self.started = False
        self.typed = False  # delivered line by line: `began` waits for the shell to run a line
        self.skip_cr = False  # fish returns the cursor to column 0 as the command starts
        self.timed_out = False
        self.interrupted = False
        self.exit_code: int | None = None
        self.command = ""  # what was asked, and in which cwd (handed over again after a
        self.run_cwd: str | None = None  # death before it started)
        self.prompted = False  # a prompt mark came after its output began (fish: hooks gone?)
        self.lines_left = 0  # typed delivery: -1 once its continuation prompt is abandoned
        # What tells a shell that loads the command's lines itself to load no more (called
        # before the first signal that stops the command).
        self.halt: Callable[[], None] | None = None
        self.reported = 0  # output bytes already answered in a waiting_for_input snapshot
        # A sourced command's output: the shell's messages naming the command file, as typed.
        self.renamed: AsTypedErrors | None = None
        self.cwd: str | None = None
        self.ended_at: float | None = None
        self._normalizer = OutputNormalizer()
        # A stopped command's last newline is held back: bash and zsh print one when the
        # foreground job dies of SIGINT (to end the line a typed ^C was echoed on); ours was
        # never echoed, so after a line that already ended it would be a blank line.
        self._held_nl = False
        self._last_nl = True
        self._loop = loop = asyncio.get_running_loop()
        self.done: asyncio.Future[ExecResult] = loop.create_future()
        self.began: asyncio.Future[None] = loop.create_future()
        self._waiters: list[asyncio.Future[None]] = []

    @property
    def finished(self) -> bool:
        return self.done.done()

    def waiter(self) -> asyncio.Future[None]:
        """A future resolved when the execution ends, which the waiter may cancel (a timeout)
        without touching `done`: what `asyncio.shield(done)` gives, without the callback
        that shield runs a loop turn later (the waiting task wakes one turn sooner)."""
        waiter: asyncio.Future[None] = self._loop.create_future()
        if self.done.done():
            waiter.set_result(None)
        else:
            # Those a timeout cancelled go (a long command is waited for in many slices).
            self._waiters = [w for w in self._waiters if not w.done()]
            self._waiters.append(waiter)
        return waiter

    def begin(self, now: float) -> None:
        """Output starts (the start mark, or the echo's end of a typed line)."""
        self.started = True
        self.last_activity = now
        if not self.typed and not self.began.done():
            self.began.set_result(None)

    def executing(self) -> None:
        """The shell runs a line it parsed (typed delivery): a SIGINT now reaches the command."""
        if not self.began.done():
            self.began.set_result(None)

    def feed(self, data: bytes, now: float) -> None:
        self.last_activity = now
        text = self._normalizer.feed(data)
        if text:
            self._emit(text)

    def _emit(self, text: str, *, hold: bool = True) -> None:
        if self.renamed is not None:
            text = self.renamed(text)
            if not text:
                return
        if self._held_nl:
            self._held_nl = False
            text = "\n" + text
        if hold and (self.interrupted or self.timed_out) and text.endswith("\n"):
            self._held_nl = True
            text = text[:-1]
            if not text:
                return
        if self.skip_cr:
            self.skip_cr = False
            if text[0] == "\r" and text[1:2] != "\n":
                text = text[1:]
                if not text:
                    return
        self.spool.write(text)
        self._last_nl = text.endswith("\n")
        if self.on_data is not None:
            self.on_data(text)

    def finish(
        self,
        now: float,
        *,
        exit_code: int | None,
        cwd: str | None,
        status: Status = Status.COMPLETED,
        recovery: Recovery | None = None,
        at_prompt: bool = False,
    ) -> ExecResult:
        """`at_prompt`: the shell was found back at its prompt with no end mark, so its last
        line (after the last newline) is the prompt it drew, not output."""
        if self.done.done():
            return self.done.result()
        tail = self._normalizer.flush()
        if tail:
            self._emit(tail)
        if self.renamed is not None:
            tail, self.renamed = self.renamed.flush(), None
            if tail:
                self._emit(tail)
        if at_prompt:
            self.spool.drop_partial_line()
        if self._held_nl:
            self._held_nl = False
            if not self._last_nl:
                self._emit("\n", hold=False)
        if not self.began.done():
            self.began.set_result(None)
        self.exit_code = exit_code
        self.cwd = cwd
        self.ended_at = now
        if recovery is not None:
            self.recoveries.append(recovery)
        if self.timed_out:
            status = Status.TIMED_OUT
        elif self.interrupted and status is Status.COMPLETED:
            status = Status.INTERRUPTED
        result = self._result(status, now, exit_code)
        self.done.set_result(result)
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)
        return result

    def snapshot(self, status: Status, now: float, cwd: str | None) -> ExecResult:
        """A result for the output so far; the execution keeps running. After a first
        `waiting_for_input` answer, a later one holds only the output printed since."""
        self.cwd = cwd
        since = self.reported
        if status is Status.WAITING_FOR_INPUT:
            self.reported = self.spool.total
        return self._result(status, now, None, since)

    def _result(
        self, status: Status, now: float, exit_code: int | None, since: int = 0
    ) -> ExecResult:
        if since:
            output, _, _ = self.spool.read(since, max(1, min(self.spool.total - since, 1 << 20)))
            truncated = False
        else:
            output, truncated = self.spool.result()
        return ExecResult(
            execution_id=self.execution_id,
            terminal_id=self.terminal_id,
            exit_code=exit_code,
            output=output,
            output_bytes=self.spool.total,
            truncated=truncated,
            cwd=self.cwd,
            duration_ms=max(0.0, (now - self.received_at) * 1000.0),
            status=status,
            mode=self.mode,
            shell=self.shell,
            recoveries=tuple(self.recoveries),
        )
