"""`lapce-bridge exec` and its standard input, as a user runs it: piped, from a terminal, none."""

from __future__ import annotations

import asyncio
import contextlib
import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lapce_bridge.terminal.exec_cmd import EXIT_NEEDS_INPUT, redirected, stdin_kind

REPO = Path(__file__).resolve().parents[2]
EXEC = [sys.executable, "-m", "lapce_bridge", "exec"]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO / "src"), env.get("PYTHONPATH")) if p)
    return env


def run(args: list[str], stdin: bytes | int | None) -> subprocess.CompletedProcess[bytes]:
    data = stdin if isinstance(stdin, bytes) else None
    handle = None if isinstance(stdin, bytes) else stdin
    return subprocess.run(
        [*EXEC, *args], input=data, stdin=handle, capture_output=True, timeout=60, env=_env()
    )


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
async def test_piped_stdin_is_the_commands(shell: str) -> None:
    done = await asyncio.to_thread(
        run, ["--shell", shell, "--", 'read x; echo "got $x"; cat'], b"bob\nrest\nof it\n"
    )
    assert done.stdout == b"got bob\nrest\nof it\n"  # once each: the terminal echoes nothing
    assert done.returncode == 0
    assert done.stderr == b""


def test_an_endless_producer_ends_with_the_command() -> None:
    with subprocess.Popen(["yes"], stdout=subprocess.PIPE) as producer:
        assert producer.stdout is not None
        try:
            done = run(["--", "head -n 2; echo $?"], producer.stdout.fileno())
        finally:
            producer.kill()
    assert done.stdout == b"y\ny\n0\n"
    assert done.returncode == 0


async def test_no_stdin_means_end_of_file_not_a_hang() -> None:
    done = await asyncio.to_thread(
        run, ["--", 'read -p "name? " x; echo "rc=$?"'], subprocess.DEVNULL
    )
    assert done.stdout.endswith(b"rc=1\n")
    assert done.returncode == 0


@pytest.mark.parametrize(
    ("command", "program", "secret"),
    [
        ('read -p "name? " x < /dev/tty; echo "got $x"', "the shell's own read (bash)", False),
        ("python3 -c 'import getpass; getpass.getpass()'", "python3", True),
    ],
    ids=["read-dev-tty", "getpass"],
)
@pytest.mark.parametrize("stdin", ["devnull", "pipe"])
async def test_asking_the_terminal_with_nobody_there_ends_with_a_message(
    command: str, program: str, secret: bool, stdin: str
) -> None:
    source: bytes | int = subprocess.DEVNULL if stdin == "devnull" else b"unused\n"
    started = time.monotonic()
    done = await asyncio.to_thread(run, ["--", command], source)
    assert done.returncode == EXIT_NEEDS_INPUT
    message = done.stderr.decode()
    assert message.startswith(f"lapce-bridge exec: {program} is waiting for input")
    assert "on the terminal" in message
    assert ("a password, echo off" in message) is secret
    assert b"got" not in done.stdout  # stopped, not answered with nothing
    assert time.monotonic() - started < 30


def test_from_a_terminal_the_user_answers_the_prompt() -> None:
    master, slave = pty.openpty()
    script = 'read -p "name? " x; echo "hi $x"; python3 -c \'print("py", input("age? "))\''
    proc = subprocess.Popen(
        [*EXEC, "--", script],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=_env(),
        start_new_session=True,
    )
    os.close(slave)
    seen = bytearray()

    def until(text: bytes) -> None:
        deadline = time.monotonic() + 30
        while text not in seen:
            assert time.monotonic() < deadline, f"{text!r} never came; saw {bytes(seen)!r}"
            ready, _, _ = select.select([master], [], [], 0.1)
            if ready:
                with contextlib.suppress(OSError):
                    seen.extend(os.read(master, 4096))

    try:
        until(b"name? ")
        os.write(master, b"bob\r")
        until(b"hi bob")
        until(b"age? ")
        os.write(master, b"42\r")
        until(b"py 42")
        assert proc.wait(30) == 0
        assert seen.count(b"bob") == 2  # echoed once by the command's terminal, then printed
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)


def test_stdin_kinds(tmp_path: Path) -> None:
    with open(os.devnull, "rb") as null:
        assert stdin_kind(null.fileno()) == "none"
    read_end, write_end = os.pipe()
    try:
        assert stdin_kind(read_end) == "data"
    finally:
        os.close(read_end)
        os.close(write_end)
    file = tmp_path / "f"
    file.write_text("x")
    with open(file, "rb") as fh:
        assert stdin_kind(fh.fileno()) == "data"
    master, slave = pty.openpty()
    try:
        assert stdin_kind(slave) == "tty"
    finally:
        os.close(master)
        os.close(slave)
    assert stdin_kind(9999) == "none"


def test_the_redirect_keeps_the_command_whole() -> None:
    assert redirected("bash", "cat <<EOF\nx\nEOF", "/tmp/it's") == (
        "{\ncat <<EOF\nx\nEOF\n} < '/tmp/it'\\''s'"
    )
    assert redirected("fish", "cat", "/tmp/it's") == "begin\ncat\nend < '/tmp/it\\'s'"
