"""The foreground probe against real programs in a real PTY: what the kernel says they wait on."""

from __future__ import annotations

import asyncio
import os
import pty
import shutil
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import pytest_asyncio

from lapce_bridge.terminal.foreground import Foreground, InputState, probe
from lapce_bridge.terminal.pty import PtyProcess

SHELLS = {
    "bash": ("bash", "--norc", "--noprofile", "-i"),
    "zsh": ("zsh", "-f", "-i"),
    "fish": ("fish", "--no-config", "-i"),
}


class Shell:
    """An interactive shell on a PTY, its output collected."""

    def __init__(self, argv: tuple[str, ...]) -> None:
        self.output = bytearray()
        env = {"PATH": os.environ["PATH"], "TERM": "dumb", "HOME": os.environ.get("HOME", "/")}
        self.proc = PtyProcess.spawn(
            argv,
            env=env,
            cwd=None,
            cols=120,
            rows=30,
            on_data=self.output.extend,
            on_exit=lambda code: None,
        )

    def probe(self) -> Foreground:
        return probe(self.proc.master, self.proc.pid)

    def type(self, line: str) -> None:
        self.proc.write(line.encode() + b"\n")

    async def until(self, check: Callable[[Foreground], bool], what: str) -> Foreground:
        """Probe until `check` holds (a program takes a moment to start); 15 s at most."""
        for _ in range(750):
            found = self.probe()
            if check(found):
                return found
            await asyncio.sleep(0.02)
        raise AssertionError(f"never saw {what}; last probe: {found}")

    async def printed(self, text: str) -> None:
        for _ in range(750):
            if text.encode() in self.output:
                return
            await asyncio.sleep(0.02)
        raise AssertionError(f"{text!r} never printed; output: {bytes(self.output)!r}")

    async def close(self) -> None:
        pgrp = self.proc.foreground_pgrp()
        if pgrp is not None and pgrp > 0 and pgrp != self.proc.pid:
            os.killpg(pgrp, signal.SIGKILL)
        self.proc.kill()
        for _ in range(250):
            if not self.proc.alive:
                break
            await asyncio.sleep(0.02)
        self.proc.close()


@pytest_asyncio.fixture
async def bash() -> AsyncIterator[Shell]:
    shell = Shell(SHELLS["bash"])
    try:
        await shell.until(lambda f: f.shell and f.state is InputState.READING, "the prompt")
        yield shell
    finally:
        await shell.close()


def _is(command: str) -> Callable[[Foreground], bool]:
    return lambda f: f.command == command and not f.shell


async def test_the_shell_at_its_prompt_reads_the_terminal(bash: Shell) -> None:
    found = bash.probe()
    assert found.state is InputState.READING
    assert found.shell
    assert found.pid == bash.proc.pid == found.pgrp
    assert found.command == "bash"


async def test_python_input_is_reading(bash: Shell) -> None:
    bash.type("python3 -c 'print(input(\"name? \"))'")
    found = await bash.until(
        lambda f: f.command == "python3" and f.state is InputState.READING, "python3 reading"
    )
    assert not found.shell
    assert found.reason == "read(0) on the terminal"
    assert found.echo is True
    assert found.canonical is True
    bash.type("bob")
    await bash.printed("bob\r\nbob")
    await bash.until(lambda f: f.shell, "python3 to end")


async def test_a_second_input_is_seen_after_the_first_is_answered(bash: Shell) -> None:
    program = 'input("one? "); print("working"); import time; time.sleep(0.3); input("two? ")'
    bash.type(f"python3 -c '{program}'")
    await bash.until(lambda f: f.command == "python3" and f.state is InputState.READING, "one?")
    bash.type("1")
    await bash.printed("working")
    await bash.until(lambda f: f.command == "python3" and f.state is InputState.RUNNING, "sleep")
    await bash.printed("two? ")
    found = await bash.until(lambda f: f.state is InputState.READING, "two?")
    assert found.command == "python3"


async def test_the_read_builtin_is_the_shell_reading(bash: Shell) -> None:
    bash.type("read -p 'name? ' x; echo \"got $x\"")
    await bash.printed("name? ")
    found = await bash.until(lambda f: f.reason.startswith("read("), "the builtin reading")
    assert found.state is InputState.READING
    assert found.shell
    assert found.reason == "read(0) on the terminal"


async def test_a_password_prompt_reads_with_echo_off(bash: Shell) -> None:
    bash.type("read -s -p 'password? ' x")
    await bash.printed("password? ")
    found = await bash.until(lambda f: f.echo is False and f.reason.startswith("read("), "read")
    assert found.state is InputState.READING
    assert found.canonical is True
    assert found.shell


async def test_a_sleeper_that_ignores_sigint_is_running(bash: Shell) -> None:
    bash.type("trap '' INT; sleep 30")
    found = await bash.until(_is("sleep"), "sleep in the foreground")
    assert found.state is InputState.RUNNING
    assert found.pgrp != bash.proc.pid
    bash.proc.signal_foreground(signal.SIGINT)
    await asyncio.sleep(0.1)  # the signal is ignored: nothing should change
    again = bash.probe()
    assert (again.state, again.command, again.pid) == (InputState.RUNNING, "sleep", found.pid)


async def test_a_busy_loop_is_running(bash: Shell) -> None:
    bash.type("python3 -c 'print(\"spinning\", flush=True)\nwhile 1: pass'")
    await bash.printed("spinning")
    found = await bash.until(_is("python3"), "python3")
    assert found.state is InputState.RUNNING
    assert found.reason == "running"


async def test_a_line_editor_in_non_canonical_mode_is_reading(bash: Shell) -> None:
    bash.type("python3 -c 'import readline; input(\"> \")'")
    found = await bash.until(
        lambda f: f.command == "python3" and f.state is InputState.READING, "readline"
    )
    assert found.canonical is False
    assert found.reason.startswith("select on the terminal")


@pytest.mark.parametrize(
    ("program", "state", "reason"),
    [
        (
            "import select; p = select.poll(); p.register(0, select.POLLIN); READY; p.poll()",
            InputState.READING,
            "poll on the terminal (0)",
        ),
        (
            "import select; e = select.epoll(); e.register(0, select.EPOLLIN); READY; e.poll()",
            InputState.READING,
            "epoll(3) watching the terminal",
        ),
        (
            "import socket, select; s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen();"
            " READY; select.select([s], [], [])",
            InputState.RUNNING,
            "select, not on the terminal",
        ),
        (
            "import socket, select; s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen();"
            " p = select.poll(); p.register(s, select.POLLIN); READY; p.poll()",
            InputState.RUNNING,
            "poll, not on the terminal",
        ),
        (
            "import os; r, w = os.pipe(); READY; os.read(r, 1)",
            InputState.RUNNING,
            "read(3), not the terminal",
        ),
    ],
    ids=["poll-tty", "epoll-tty", "select-socket", "poll-socket", "read-pipe"],
)
async def test_waits_on_events_are_followed_to_their_descriptors(
    bash: Shell, program: str, state: InputState, reason: str
) -> None:
    code = program.replace("READY", "print('ready', flush=True)")
    bash.type(f'python3 -c "{code}"')
    await bash.printed("ready")
    found = await bash.until(lambda f: f.command == "python3" and f.reason == reason, reason)
    assert found.state is state


async def test_a_reader_behind_the_group_leader_is_found(bash: Shell) -> None:
    # The leader (sleep) reads nothing; the second process of the pipeline reads /dev/tty.
    bash.type("sleep 30 | python3 -c 'print(open(\"/dev/tty\").readline())'")
    found = await bash.until(
        lambda f: f.command == "python3" and f.state is InputState.READING, "the reader"
    )
    assert found.pid != found.pgrp
    assert found.reason.endswith("on the terminal")


@pytest.mark.parametrize("shell", ["zsh", "fish"])
async def test_other_shells(shell: str) -> None:
    if shutil.which(SHELLS[shell][0]) is None:
        pytest.skip(f"{shell} is not installed")
    term = Shell(SHELLS[shell])
    try:
        at_prompt = await term.until(lambda f: f.shell and f.state is InputState.READING, "prompt")
        assert at_prompt.command == shell
        term.type("sleep 30")
        assert (await term.until(_is("sleep"), "sleep")).state is InputState.RUNNING
        term.proc.signal_foreground(signal.SIGINT)
        await term.until(lambda f: f.shell, "the prompt again")
        term.type("python3 -c 'input()'")
        found = await term.until(
            lambda f: f.command == "python3" and f.state is InputState.READING, "input"
        )
        assert found.reason == "read(0) on the terminal"
    finally:
        await term.close()


def test_a_terminal_without_a_foreground_group_is_unknown() -> None:
    master, slave = pty.openpty()
    try:
        found = probe(master)  # nobody has this terminal as its controlling terminal
        assert found.state is InputState.UNKNOWN
        assert found.pgrp is None
    finally:
        os.close(master)
        os.close(slave)
    closed = probe(master)
    assert closed.state is InputState.UNKNOWN
    assert closed.canonical is None


async def test_without_proc_only_a_password_prompt_is_recognised(
    bash: Shell, tmp_path: Path
) -> None:
    # A /proc that answers nothing (hidden, or another user's setuid program): the terminal's
    # own modes are all that is left, and only echo-off in canonical mode says "asking".
    bash.type("sleep 30")
    await bash.until(_is("sleep"), "sleep")
    blind = probe(bash.proc.master, bash.proc.pid, proc=str(tmp_path))
    assert blind.state is InputState.UNKNOWN
    assert blind.reason == "not inspectable"
    bash.proc.signal_foreground(signal.SIGINT)
    await bash.until(lambda f: f.shell, "the prompt")
    bash.type("read -s -p 'password? ' x")
    await bash.printed("password? ")
    await bash.until(lambda f: f.echo is False, "echo off")
    blind = probe(bash.proc.master, bash.proc.pid, proc=str(tmp_path))
    assert blind.state is InputState.READING
    assert blind.reason.startswith("not inspectable; the terminal has echo off")
