"""One shell process on a PTY: starting it, asking whether it answers, stopping it.

Theory of operation: a `ShellProcess` wraps the `PtyProcess` of one shell together with the
facts about that process alone: its executable and kind, whether its integration announced
itself (`ready`), its exit (`exited`), and whether its death is one we caused (`stopping`).
The terminal that owns it routes the tracker's `Ready` and `ProbeAnswered` events here; a
replacement shell is a new `ShellProcess`, so nothing of the old one leaks into the new one.

`status` asks a shell that is back at its prompt without our hooks for `$?` and `$PWD` through
a tokened mark (integration recovery). `foreground` asks the kernel what the terminal's
foreground is doing (`foreground.probe`), and `at_prompt` whether that is this shell at its
own line editor rather than a command or a `read` builtin.

`probe` asks a shell to run an empty command whose typed line prints a tokened end mark: the
proof that the shell runs commands even when its integration is silent. `at_prompt` asks the
kernel whether the shell itself is the terminal's foreground process with its line editor in
control (non-canonical input): a shell waiting at its prompt, as opposed to a command, or a
`read` builtin, waiting for a line (fish reads with its line editor too, so for fish only a
replaced program, an `exec`, counts). `stop` ends the process: SIGHUP and the master closed,
then SIGKILL after `grace`, then a blocking reap (SIGKILL cannot be refused).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
from collections.abc import Callable

from lapce_bridge.core.clock import Clock
from lapce_bridge.core.errors import ShellCrashed
from lapce_bridge.terminal.foreground import Foreground, InputState
from lapce_bridge.terminal.foreground import probe as probe_foreground
from lapce_bridge.terminal.modes import (
    Launch,
    probe_line,
    prompt_filter,
    shell_kind,
    status_line,
)
from lapce_bridge.terminal.pty import PtyProcess
from lapce_bridge.terminal.tracker import CommandTracker

__all__ = ["ShellProcess"]


def _filtered(
    strip: Callable[[bytes], bytes], on_data: Callable[[bytes], None]
) -> Callable[[bytes], None]:
    def deliver(data: bytes) -> None:
        on_data(strip(data))

    return deliver


class ShellProcess:
    __slots__ = ("_probe", "exe", "exited", "kind", "launch", "proc", "ready", "stopping")

    def __init__(self, launch: Launch, exe: str, proc: PtyProcess) -> None:
        loop = asyncio.get_running_loop()
        self.launch = launch
        self.exe = exe
        self.kind = launch.kind
        self.proc = proc
        self.ready: asyncio.Future[bool] = loop.create_future()
        self.exited: asyncio.Future[int] = loop.create_future()
        self.stopping = False  # a death we cause is not a crash to recover from
        self._probe: asyncio.Future[int | None] | None = None

    @classmethod
    def spawn(
        cls,
        launch: Launch,
        exe: str,
        *,
        cwd: str,
        cols: int,
        rows: int,
        on_data: Callable[[bytes], None],
        on_exit: Callable[[ShellProcess, int], None],
    ) -> ShellProcess:
        box: list[ShellProcess] = []
        strip = prompt_filter(launch.kind)
        if strip is not None:
            on_data = _filtered(strip, on_data)
        proc = PtyProcess.spawn(
            launch.argv,
            env=launch.env,
            cwd=cwd,
            cols=cols,
            rows=rows,
            on_data=on_data,
            on_exit=lambda code: on_exit(box[0], code),
        )
        shell = cls(launch, exe, proc)
        box.append(shell)
        return shell

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def alive(self) -> bool:
        return self.proc.alive

    # -- events routed here by the terminal -------------------------------------------------
    def mark_ready(self) -> None:
        if not self.ready.done():
            self.ready.set_result(True)

    def answer_probe(self, code: int | None) -> None:
        if self._probe is not None and not self._probe.done():
            self._probe.set_result(code)

    def on_exit(self, code: int) -> None:
        if not self.exited.done():
            self.exited.set_result(code)
        if not self.ready.done():
            self.ready.set_result(False)
        if self._probe is not None and not self._probe.done():
            self._probe.set_exception(ShellCrashed(f"shell exited with code {code}"))

    # -- questions ----------------------------------------------------------------------------
    async def wait_ready(self, clock: Clock, bound: float) -> bool:
        """Whether integration announced itself (a prompt or cwd mark) within `bound` s."""
        try:
            async with clock.timeout(bound):
                return await asyncio.shield(self.ready)
        except TimeoutError:
            return False

    async def probe(
        self,
        tracker: CommandTracker,
        write_command: Callable[[bytes], None],
        cmd_path: str,
        clock: Clock,
        bound: float,
    ) -> tuple[bool, int | None]:
        """Whether the shell printed a tokened end mark within `bound` s, and the status `$?`
        it reported there (None when it printed none)."""
        if not self.proc.alive:
            return False, None
        token = secrets.token_hex(8)
        fut: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
        self._probe = fut
        tracker.expect_probe(token)
        # Without integration the prompt would be printed inside the output (dash prints it
        # between our two lines), so the fallback modes run with empty prompts; and without
        # echo, because the tty echoes the second line late when it is busy (the kernel echoes
        # from a work queue), and that echo would land after the start mark.
        write_command(b"PS1=''\nPS2=''\nstty -echo 2>/dev/null\n" if self.kind == "posix" else b"")
        return await self._ask(tracker, probe_line(self.kind, cmd_path, token), fut, clock, bound)

    async def status(
        self, tracker: CommandTracker, kind: str, clock: Clock, bound: float
    ) -> tuple[bool, int | None]:
        """`$?` of the last command, from a shell at its prompt (and `$PWD` to the tracker)."""
        if not self.proc.alive:
            return False, None
        token = secrets.token_hex(8)
        fut: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
        self._probe = fut
        tracker.expect_probe(token)
        return await self._ask(tracker, status_line(kind, token), fut, clock, bound)

    async def _ask(
        self,
        tracker: CommandTracker,
        line: bytes,
        fut: asyncio.Future[int | None],
        clock: Clock,
        bound: float,
    ) -> tuple[bool, int | None]:
        try:
            self.proc.write(line)
            async with clock.timeout(bound):
                return True, await fut
        except (TimeoutError, OSError, ShellCrashed):
            return False, None
        finally:
            self._probe = None
            tracker.expect_probe(None)

    def foreground(self) -> Foreground | None:
        if not self.proc.alive or self.proc.master < 0:
            return None
        return probe_foreground(self.proc.master, self.proc.pid)

    def current_kind(self) -> str:
        """The kind of shell this process is now (`exec zsh` turns a bash process into zsh)."""
        try:
            return shell_kind(os.readlink(f"/proc/{self.proc.pid}/exe"))
        except OSError:
            return self.kind

    def replaced(self) -> bool:
        """Whether the process exec'd another program (or the same shell with other args)."""
        try:
            with open(f"/proc/{self.proc.pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")[:-1]
        except OSError:
            return False
        return argv != [os.fsencode(a) for a in self.launch.argv]

    def at_prompt(self, fg: Foreground, prompted: bool = False) -> bool:
        """The shell itself holds the terminal with its line editor reading (not a command).

        fish reads with its line editor for its `read` builtin too: for fish that counts
        only after an `exec` (another program) or when a prompt mark came after the command's
        output began (`prompted`: the prompt was drawn, the end hooks were not run)."""
        if not fg.shell or fg.pid != self.proc.pid or fg.state is not InputState.READING:
            return False
        if fg.canonical is not False:
            return False
        return self.kind != "fish" or prompted or self.replaced()

    # -- stopping -----------------------------------------------------------------------------
    async def stop(self, clock: Clock, grace: float) -> None:
        proc = self.proc
        if proc.alive:
            self.stopping = True
            proc.signal(signal.SIGHUP)
            proc.close()
            try:
                async with clock.timeout(grace):
                    await asyncio.shield(self.exited)
            except TimeoutError:
                proc.kill()
                try:
                    async with clock.timeout(grace):
                        await asyncio.shield(self.exited)
                except TimeoutError:
                    proc.reap_blocking()  # SIGKILL cannot be refused: this returns at once
        proc.close()

    def detach(self) -> None:
        """Drop the callbacks into the owner (breaks the terminal <-> PTY reference cycle)."""
        self.proc.detach()
        with contextlib.suppress(asyncio.InvalidStateError):
            if not self.ready.done():
                self.ready.set_result(False)
