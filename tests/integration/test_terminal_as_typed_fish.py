"""fish commands behave as if typed: the differential test of `test_terminal_as_typed`, for fish.

A corpus of fish commands of the kinds agents run (navigation, reading, editing with `sed -i`,
a test run, git, a background server and `kill %1`, errors, a syntax error on line 2 of a
multi-line command, blocks and functions over several lines, multi-line strings, pipes,
quoting, unicode) goes, in order, through our terminal (`Terminal.execute`) and, typed line by
line, into the same fish started plainly in a real PTY of the same size. Output, exit code and
cwd must agree for every command.

fish has no continuation prompt: Enter on an incomplete buffer (an open block or quote) adds a
newline and waits for more, and Enter on a line with a syntax error prints fish's message and
leaves the line in the buffer, where a user clears it (Ctrl-C) before typing the next. So the
plain fish's Enter key is bound to a function that does exactly what Enter does
(`commandline -f execute`) after saying whether the buffer is complete, wrong or incomplete
(`commandline --is-valid`): the typist's only way to know which of the three happened.

Normalised on both sides as in the bash/zsh test (escapes, carriage returns, PIDs, the two
folders); on the plain side, the line fish draws before each prompt (its "missing newline"
mark, `⏎` and spaces) is part of the prompt, not of the output.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import re
import secrets
import select
import shutil
import signal
import struct
import subprocess
import termios
import time
from pathlib import Path
from typing import Any

import pytest

from lapce_bridge.ipc.client import BridgeClient
from lapce_bridge.terminal.modes import resolve_shell
from lapce_bridge.terminal.result import Mode
from lapce_bridge.terminal.terminal import Terminal
from tests.integration.serve_process import serve
from tests.integration.test_terminal_as_typed import (
    COLS,
    QUIET_S,
    ROWS,
    Answer,
    _compared,
    _folder,
)

pytestmark = [pytest.mark.shells, pytest.mark.asyncio(loop_scope="function")]

# Each is what an agent sends in one terminal/execute, in fish's syntax.
CORPUS: list[str] = [
    "echo hello",
    "pwd",
    "ls",
    "cat notes.txt",
    "mkdir -p src/pkg && cd src/pkg && pwd",
    "cd ../..",
    "printf '%s\\n' 'import sys' \"print('hi', *sys.argv[1:])\" > app.py",
    "python3 app.py one two",
    "sed -i 's/hi/hello/' app.py && cat app.py",
    "grep -n beta notes.txt",
    "echo one\necho two )\necho three\necho four",
    "echo one\nif\necho three",
    "status filename; status is-interactive; echo $status",
    "nosuchcommand --flag",
    "false",
    "echo $status",
    "fish -c 'exit 3'",
    "ls does-not-exist",
    "cd /does/not/exist",
    "set -gx GREETING 'hi there'",
    'echo "$GREETING"; set -e GREETING; echo "[$GREETING]"',
    "printf 'b\\na\\nc\\n' | sort | head -n 2",
    "false | true; echo $status $pipestatus",
    'seq 3 | while read n; echo "n=$n"; end',
    'for i in 1 2 3\n  echo "item $i"\nend',
    "if test -f app.py\n  echo exists\nelse\n  echo missing\nend",
    'function greet\n  echo "hi $argv[1]"\nend',
    "greet bob",
    "echo 'single $x' \"double $HOME\" \\$PATH",
    "echo 'héllo wörld ✓ 日本語'",
    "echo 'a multi-line\n  string, indented\n\nwith a blank line'",
    "echo \"two\\tescapes\\n\" 'and a \\' quote'",
    "echo err >&2; echo out",
    "python3 -c 'import sys; print(\"out\"); sys.exit(4)'",
    "echo " + "x" * 300,
    "true && echo yes || echo no",
    "math 6 \\* 7",
    "git -c init.defaultBranch=main init -q repo && cd repo && git status --short"
    " && git rev-parse --abbrev-ref HEAD; cd ..",
    "python3 -m pytest -q -p no:cacheprovider test_calc.py 2>&1 | tail -n 1 | sed 's/ in .*//'",
    "sleep 30 > server.log 2>&1 &",
    "jobs -c",
    "kill %1; wait",
    "echo after the server",
    "begin\n  echo inside",
    "echo still here",
    "",
    "type -t cd",
]

# fish's "missing newline" mark, drawn before every prompt (escapes already removed).
_ABANDON = re.compile(r"⏎ *\r⏎ \r")
_DIM = re.compile(r"\x1b\[2m|\x1b\(B\x1b\[m|\x1b\[K")


class TypedFish:
    """fish started plainly in a PTY; each command's lines are typed at its prompt."""

    def __init__(self, exe: str, cwd: Path, home: Path) -> None:
        tok = secrets.token_hex(6)
        master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, COLS, 0, 0))
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(home),
            "TERM": "xterm-256color",
            "LANG": os.environ.get("LANG", "C.UTF-8"),
            "PAGER": "cat",
            "GIT_PAGER": "cat",
        }
        # Marks the typist reads, in OSC strings (they take no room on the screen, so fish
        # draws its lines as it would without them): the prompt, with $status and $PWD; each
        # line that runs, as it starts (fish_preexec); a buffer cleared by Ctrl-C; and Enter,
        # which does what it always does after saying whether the buffer is complete (0),
        # wrong (1) or incomplete (2).
        osc = "\\e]1337;"
        setup = (
            f"function fish_prompt; printf '{osc}P{tok}:%s:%s\\a$ ' $status $PWD; end; "
            "function fish_title; end; "
            f"function __run --on-event fish_preexec; printf '{osc}X{tok}\\a'; end; "
            f"function __cut --on-event fish_cancel; printf '{osc}K{tok}\\a'; end; "
            f"function __enter; commandline --is-valid; printf '{osc}V{tok}:%s\\a' $status; "
            "commandline -f execute; end; bind \\r __enter"
        )
        self.proc = subprocess.Popen(
            [exe, "-i", "--init-command", setup],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            cwd=cwd,
            env=env,
            start_new_session=True,
            preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0),
        )
        os.close(slave)
        self.master = master
        mark = rb"\x1b\]1337;"
        self.prompt = re.compile(mark + rb"P" + tok.encode() + rb":(-?\d+):(.*?)\x07\$ ")
        self.valid = re.compile(mark + rb"V" + tok.encode() + rb":(\d)\x07")
        self.runs = re.compile(mark + rb"X" + tok.encode() + rb"\x07")
        self.cut = re.compile(mark + rb"K" + tok.encode() + rb"\x07")
        self._buf = b""
        self.last = "start"
        self._until(self.prompt, 20.0)
        self.quiet(0.5)
        self._buf = b""

    def write(self, data: bytes) -> None:
        os.write(self.master, data)

    def _read(self, timeout: float) -> bytes:
        ready, _, _ = select.select([self.master], [], [], timeout)
        if not ready:
            return b""
        try:
            return os.read(self.master, 65536)
        except OSError:
            return b""

    def _until(self, pattern: re.Pattern[bytes], timeout: float) -> tuple[bytes, re.Match[bytes]]:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            m = pattern.search(self._buf)
            if m is not None:
                text, self._buf = self._buf[: m.start()], self._buf[m.end() :]
                return text, m
            self._buf += self._read(0.05)
        raise AssertionError(f"no answer from fish after {self.last!r}; got {self._buf[-300:]!r}")

    def quiet(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self._buf += self._read(max(0.0, end - time.monotonic()))

    def _clear(self) -> None:
        """Ctrl-C, as a user clears the buffer; again if fish was not reading keys yet (it
        takes a Ctrl-C for a key only at its line editor)."""
        for _ in range(30):
            self.write(b"\x03")
            with contextlib.suppress(AssertionError):
                self._until(self.cut, 1.0)
                return
        raise AssertionError(f"fish did not clear its buffer after {self.last!r}")

    def run(self, command: str) -> Answer:
        self.last = command
        # Printed at the prompt since the last command (a job's notice).
        output = self.prompt.sub(b"", self._buf)
        self._buf = b""
        status: re.Match[bytes] | None = None
        incomplete = False
        for line in command.split("\n"):
            if not line and not incomplete:
                continue  # an empty line at the prompt runs nothing
            # Typed, then Enter (not pasted: inside a quote, fish's paste escapes quotes).
            self.write(line.encode() + b"\r")
            _, valid = self._until(self.valid, 30.0)
            incomplete = valid.group(1) == b"2"
            if incomplete:
                continue  # fish waits for the rest of the block or quote
            if valid.group(1) == b"0":
                self._until(self.runs, 30.0)  # the echo ends as the line starts to run
                text, status = self._until(self.prompt, 30.0)
                output += text
                continue
            # A syntax error: fish's message follows the echo's line end; then the line is
            # cleared from the buffer.
            text, status = self._until(self.prompt, 30.0)
            output += text[text.find(b"\n") + 1 :]
            self._clear()
        if incomplete:
            self._clear()  # still incomplete after the last line: abandoned
            status = None
        if status is None:
            # Nothing ran, or Ctrl-C drew a new prompt: read its status and cwd (Ctrl-L).
            self.quiet(0.2)
            self._buf = b""
            self.write(b"\x0c")
            _, status = self._until(self.prompt, 30.0)
            self.quiet(0.2)
            self._buf = b""
        shown = _DIM.sub("", output.decode("utf-8", "replace"))
        return Answer(_ABANDON.sub("", shown), int(status.group(1)), status.group(2).decode())

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        os.close(self.master)


def _fish() -> str:
    exe = resolve_shell("fish", os.environ.get("PATH"))
    if exe is None or shutil.which("git") is None:
        pytest.skip("fish or git is not installed")
    return exe


async def test_fish_commands_behave_as_typed_into_a_plain_fish(tmp_path: Path) -> None:
    exe = _fish()
    ours_dir, ours_home = _folder(tmp_path, "ours")
    ref_dir, ref_home = _folder(tmp_path, "ref")
    typed = await asyncio.to_thread(TypedFish, exe, ref_dir, ref_home)
    mismatches: list[str] = []
    try:
        async with await Terminal.start(
            shell=exe,
            cwd=str(ours_dir),
            env={"HOME": str(ours_home)},
            state_dir=tmp_path / "state",
            cols=COLS,
            rows=ROWS,
        ) as term:
            assert term.mode is Mode.SHELL_INTEGRATION
            for command in CORPUS:
                result = await term.execute(command, timeout=30)
                ours = Answer(result.output, result.exit_code, result.cwd)
                ref = await asyncio.to_thread(typed.run, command)
                await asyncio.gather(
                    asyncio.sleep(QUIET_S), asyncio.to_thread(typed.quiet, QUIET_S)
                )
                mine = _compared(ours, tmp_path / "ours")
                theirs = _compared(ref, tmp_path / "ref")
                if mine != theirs:
                    mismatches.append(f"{command!r}:\n  ours  {mine!r}\n  typed {theirs!r}")
    finally:
        await asyncio.to_thread(typed.close)
    assert not mismatches, f"{len(mismatches)} of {len(CORPUS)} differ:\n" + "\n".join(mismatches)


SERVE_CHECKS = [
    "set -gx KEEP kept; sleep 30 > server.log 2>&1 &",
    "jobs -c",
    "echo one\necho two )\necho three",
    "nosuchcommand",
    "status filename",
    "echo 'unclosed",
    "trap '' INT",
    *(f"echo 'unclosed while SIGINT is ignored {i}" for i in range(5)),
    "trap - INT",
    "kill %1; wait; echo waited",
    "exit 3",
    'echo "back $KEEP"',
]


async def test_fish_as_typed_through_a_real_serve(tmp_path: Path) -> None:
    _fish()
    async with serve(tmp_path) as srv, BridgeClient(srv.socket) as client:
        tid = (await client.request("terminal/create", {"shell": "fish"}))["terminalId"]
        answers: dict[str, dict[str, Any]] = {
            cmd: await client.request("terminal/execute", {"terminalId": tid, "command": cmd})
            for cmd in SERVE_CHECKS
        }
    assert answers["jobs -c"]["output"] == "Command\nsleep\n"
    lines = answers["echo one\necho two )\necho three"]
    assert lines["output"].startswith("one\nfish: Unexpected ')'")  # fish's own message
    assert lines["output"].endswith("three\n")  # the line after the error still ran
    missing = answers["nosuchcommand"]
    assert (missing["exitCode"], missing["output"]) == (
        127,
        "fish: Unknown command: nosuchcommand\n",
    )
    assert answers["status filename"]["output"] == "Standard input\n"  # not a command file
    unclosed = answers["echo 'unclosed"]
    assert [r["action"] for r in unclosed["recoveries"]] == ["incomplete_command"]
    assert unclosed["output"] == ""
    # With SIGINT trapped away, each is still abandoned (a Ctrl-C that fish's editor did
    # not read yet is pressed again), never left waiting at the continuation prompt.
    for i in range(5):
        deaf = answers[f"echo 'unclosed while SIGINT is ignored {i}"]
        assert deaf["status"] == "completed", deaf
        assert [r["action"] for r in deaf["recoveries"]] == ["incomplete_command"]
    assert answers["kill %1; wait; echo waited"]["output"].endswith("waited\n")
    exited = answers["exit 3"]
    assert (exited["status"], exited["exitCode"]) == ("interrupted", 3)
    assert answers['echo "back $KEEP"']["output"] == "back kept\n"  # the same shell, restarted


async def test_fish_prompt_drawing_never_lands_in_an_output(tmp_path: Path) -> None:
    """The two ways a fish command's end comes from its prompt rather than its end hook: the
    hooks were erased (the terminal recovers without them), or fish refused an `exit` while a
    job runs. fish's "missing newline" line and the prompt are not the command's output."""
    exe = _fish()
    async with await Terminal.start(
        shell=exe, cwd=str(tmp_path), env={"HOME": str(tmp_path)}, state_dir=tmp_path / "s"
    ) as term:
        refused = await term.execute("sleep 30 &\nexit 3", timeout=20)
        assert refused.output.startswith("There are still jobs active:\n")
        assert refused.output.endswith("without terminating them.\n")
        after = await term.execute("echo still here; kill %1; wait", timeout=20)
        assert after.output.startswith("still here\n")
        assert after.output.endswith(
            "'sleep 30 &' terminated by signal SIGTERM (Polite quit request)\n"
        )
        erased = await term.execute(
            "echo before; functions -e __lb_preexec __lb_postexec __lb_prompt; echo after",
            timeout=20,
            idle_timeout=5,  # what finds a shell back at its prompt without an end mark
        )
        assert (erased.output, erased.exit_code) == ("before\nafter\n", 0)
        assert [r.action for r in erased.recoveries] == ["no_shell_integration"]
        assert (await term.execute("printf x", timeout=20)).output == "x"
