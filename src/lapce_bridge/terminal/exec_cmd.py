"""`lapce-bridge exec`: run one command through a shell-integrated terminal and exit with its code.

The command runs exactly as it would through `terminal/execute` (same shell integration,
output normalisation and fallbacks), in a terminal of its own that is closed afterwards.

Standard input, as `bash -c` would treat it:
- **a terminal** (someone is there): the command's own terminal is connected to it. Our
  terminal is switched to pass every key through (no local echo, no line editing, Ctrl-C
  as a byte), the command's terminal echoes and edits, so a prompt (`read -p`, `input()`,
  a password) is answered by the user typing, as in `ssh` or `script`. Restored on exit.
- **a pipe or a file**: the command's standard input is redirected from it, streamed through a
  FIFO as it arrives (`yes | lapce-bridge exec -- head -n 2` ends), EOF when it ends.
- **nothing** (closed, or /dev/null): the command's standard input is /dev/null.
In the last two cases nobody can answer a program that reads the terminal itself (`sudo`,
`ssh`, `getpass`, `read < /dev/tty`): the foreground probe (`terminal.foreground`) sees it
blocked reading the terminal, the command is stopped with a message on stderr naming the
program, and the exit status is `EXIT_NEEDS_INPUT`, never a silent hang.

Exit status: the command's; 124 when it timed out; 125 when it waited for input nobody could
give; 130 when it was interrupted; 1 when no exit code could be known (fallback modes). With
`--json` the ExecResult is printed as PROTOCOL.md's wire dict.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
import sys
import tempfile
import termios
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import click

from lapce_bridge.terminal.foreground import Foreground, InputState, probe
from lapce_bridge.terminal.modes import shell_kind
from lapce_bridge.terminal.result import ExecResult, Status

if TYPE_CHECKING:
    from lapce_bridge.terminal.terminal import Terminal

EXIT_TIMED_OUT = 124
EXIT_NEEDS_INPUT = 125
_PROBE_EVERY_S = 0.1
_PROBES_TO_DECIDE = 3  # consecutive "reading" probes, so a shell between two lines is not one
_STOP_WAIT_S = 10.0
_CHUNK = 65536


def exit_status(result: ExecResult) -> int:
    if result.status is Status.TIMED_OUT:
        return EXIT_TIMED_OUT
    if result.exit_code is not None:
        return result.exit_code & 0xFF
    return 130 if result.status is Status.INTERRUPTED else 1


def stdin_kind(fd: int = 0) -> str:
    """'tty' (a person can answer), 'data' (a pipe or a file) or 'none' (closed, /dev/null)."""
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        return "none"
    if os.isatty(fd):
        return "tty"
    if stat.S_ISCHR(mode):  # /dev/null and other devices that are not terminals
        return "none"
    return "data"


def redirected(kind: str, command: str, source: str) -> str:
    """`command` with its standard input read from `source`, as one group."""
    if kind == "fish":
        quoted = "'" + source.replace("\\", "\\\\").replace("'", "\\'") + "'"
        return f"begin\n{command}\nend < {quoted}"
    quoted = "'" + source.replace("'", "'\\''") + "'"
    return f"{{\n{command}\n}} < {quoted}"


class _Feeder:
    """Copies our standard input into a FIFO the command reads, in a thread (a blocking
    `open()` of a FIFO waits for its reader; the event loop must not)."""

    def __init__(self, source_fd: int, fifo: Path) -> None:
        self.fifo = fifo
        self._source = source_fd
        self._thread = threading.Thread(target=self._run, name="exec-stdin", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        with contextlib.suppress(OSError):
            out = os.open(self.fifo, os.O_WRONLY | os.O_CLOEXEC)
            try:
                while data := os.read(self._source, _CHUNK):
                    view = memoryview(data)
                    while view:
                        view = view[os.write(out, view) :]
            finally:
                os.close(out)  # EOF for the command

    def stop(self) -> None:
        """The command ended: release a writer still waiting for a reader (never opened)."""
        with contextlib.suppress(OSError):
            os.close(os.open(self.fifo, os.O_RDONLY | os.O_NONBLOCK))


@contextlib.contextmanager
def _pass_through(fd: int) -> Iterator[None]:
    """Our terminal hands every key over unprocessed; restored however we leave."""
    saved = termios.tcgetattr(fd)
    mode = termios.tcgetattr(fd)
    mode[0] &= ~(termios.IXON | termios.ICRNL)
    mode[3] &= ~(termios.ICANON | termios.ECHO | termios.ISIG | termios.IEXTEN)
    mode[6][termios.VMIN] = 1
    mode[6][termios.VTIME] = 0
    termios.tcsetattr(fd, termios.TCSADRAIN, mode)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _typist(term: Terminal, fd: int) -> Callable[[], None]:
    """What the user types goes to the command's terminal; returns the way to stop."""
    loop = asyncio.get_running_loop()

    def typed() -> None:
        try:
            data = os.read(fd, _CHUNK)
        except OSError:
            data = b""
        if not data:
            loop.remove_reader(fd)
            return
        with contextlib.suppress(Exception):  # the shell may be gone; its end is reported
            term.send_text(data.decode("utf-8", "surrogateescape"))

    loop.add_reader(fd, typed)

    def stop() -> None:
        loop.remove_reader(fd)

    return stop


async def _asked(term: Terminal, running: asyncio.Task[ExecResult]) -> Foreground | None:
    """Watch for the command reading its terminal; the probe that saw it, or None at its end."""
    seen = 0
    while not running.done():
        await asyncio.wait([running], timeout=_PROBE_EVERY_S)
        proc = term.proc
        if running.done() or proc is None or not proc.alive:
            return None
        found = probe(proc.master, proc.pid)
        seen = seen + 1 if found.state is InputState.READING else 0
        if seen >= _PROBES_TO_DECIDE:
            return found
    return None


async def run_once(
    command: str,
    *,
    shell: str | None,
    cwd: str | None,
    limit: float | None,
    stream: bool,
    stdin_fd: int = 0,
) -> tuple[ExecResult, Foreground | None]:
    """Run `command`; the result, and what the kernel said if it was stopped waiting for input."""
    from lapce_bridge.terminal.terminal import Terminal

    out = sys.stdout
    kind = stdin_kind(stdin_fd)

    def on_data(text: str) -> None:
        out.write(text)
        out.flush()

    with tempfile.TemporaryDirectory(prefix="lapce-bridge-exec-") as state:
        async with await Terminal.start(shell=shell, cwd=cwd, state_dir=Path(state)) as term:
            feeder: _Feeder | None = None
            if kind == "data":
                fifo = Path(state) / "stdin"
                os.mkfifo(fifo, 0o600)
                feeder = _Feeder(stdin_fd, fifo)
                feeder.start()
                command = redirected(shell_kind(term.shell), command, str(fifo))
            elif kind == "none":
                command = redirected(shell_kind(term.shell), command, os.devnull)
            running = asyncio.ensure_future(
                term.execute(command, timeout=limit, on_data=on_data if stream else None)
            )
            try:
                if kind == "tty":
                    with _pass_through(stdin_fd):
                        stop_typing = _typist(term, stdin_fd)
                        try:
                            return await running, None
                        finally:
                            stop_typing()
                asked = await _asked(term, running)
                if asked is not None:
                    await term.interrupt()
                    async with asyncio.timeout(_STOP_WAIT_S):
                        return await running, asked
                return await running, None
            finally:
                if feeder is not None:
                    feeder.stop()
                if not running.done():
                    running.cancel()
                    await asyncio.wait([running])


def _needs_input_message(asked: Foreground) -> str:
    program = asked.command or "the command"
    if asked.shell:
        program = f"the shell's own read ({program})"
    secret = " (a password, echo off)" if asked.echo is False else ""
    return (
        f"lapce-bridge exec: {program} is waiting for input on its terminal{secret} "
        f"({asked.reason}), and standard input is not a terminal anyone can answer from: "
        "stopped it. Pipe the answers into standard input, or run it from a terminal."
    )


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on POSIX
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


@click.command(
    "exec",
    context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False},
)
@click.option("--shell", default=None, help="Shell to run in (default: $SHELL, else bash).")
@click.option(
    "--cwd",
    default=None,
    type=click.Path(exists=True, file_okay=False),
    help="Directory to start in.",
)
@click.option("--timeout", default=None, type=click.FloatRange(min=0, min_open=True),
              help="Interrupt the command after this many seconds (exit status 124).")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print the ExecResult as JSON.")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def exec_command(
    shell: str | None,
    cwd: str | None,
    timeout: float | None,
    as_json: bool,
    command: tuple[str, ...],
) -> None:
    """Run COMMAND (all remaining words, joined by spaces) and exit with its exit code.

    Piped standard input is the command's; from a terminal, the user answers its prompts.
    A command waiting for input nobody can give is stopped: exit status 125.
    """
    text = " ".join(command)
    try:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            result, asked = runner.run(
                run_once(text, shell=shell, cwd=cwd, limit=timeout, stream=not as_json)
            )
    except Exception as exc:
        click.echo(f"lapce-bridge exec: {exc}", err=True)
        sys.exit(1)
    if as_json:
        import orjson

        sys.stdout.buffer.write(orjson.dumps(result.to_wire()) + b"\n")
        sys.stdout.flush()
    if asked is not None:
        click.echo(_needs_input_message(asked), err=True)
        sys.exit(EXIT_NEEDS_INPUT)
    sys.exit(exit_status(result))
