"""Commands behave as if typed: a differential test against a plain interactive shell.

A corpus of commands of the kinds agents run (navigation, reading, editing with `sed -i` and
heredocs, a test run, git, background servers and `kill %1`, job notices, `$0`, errors, a
syntax error on line 2 of a multi-line command, `set -e`, pipes, quoting, unicode) goes, in
order, through our terminal (`Terminal.execute`) and, typed line by line, into the same shell
started plainly in a real PTY of the same size (each line pasted, then Enter, once the shell
asks for it). Output, exit code and cwd must agree for every command, in bash and zsh.

Normalised on both sides, and nothing else: the prompts and the echo of the typed lines
(which a result never holds), ANSI/OSC sequences and carriage returns, job PIDs, and the two
working folders' paths. The one setting the plain shell is given is ours: history expansion
off (`set +H`, `no_bang_hist`), since commands come from programs, not from a person's history.
A job notice printed while the shell waits at its prompt (zsh reports a job's end at once)
belongs to the next command on both sides, as a typed session shows it before that command.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from lapce_bridge.ipc.client import BridgeClient
from lapce_bridge.terminal.modes import resolve_shell
from lapce_bridge.terminal.result import Mode
from lapce_bridge.terminal.service import TerminalService
from lapce_bridge.terminal.terminal import Terminal
from lapce_bridge.testing.memory import MemoryServer
from tests.integration.serve_process import serve

pytestmark = [pytest.mark.shells, pytest.mark.asyncio(loop_scope="function")]

COLS, ROWS = 120, 30
QUIET_S = 0.3  # after each command, on both sides: a job's notice has arrived by then

SEED_FILES = {
    "notes.txt": "alpha\nbeta\ngamma\n",
    "test_calc.py": "def test_add():\n    assert 1 + 1 == 2\n",
}

# (command, shells it runs in): each is what an agent sends in one terminal/execute.
CORPUS: list[tuple[str, tuple[str, ...]]] = [
    ("echo hello", ("bash", "zsh")),
    ("pwd", ("bash", "zsh")),
    ("ls", ("bash", "zsh")),
    ("cat notes.txt", ("bash", "zsh")),
    ("mkdir -p src/pkg && cd src/pkg && pwd", ("bash", "zsh")),
    ("cd ../..", ("bash", "zsh")),
    ("cat > app.py <<'EOF'\nimport sys\nprint('hi', *sys.argv[1:])\nEOF", ("bash", "zsh")),
    ("python3 app.py one two", ("bash", "zsh")),
    ("sed -i 's/hi/hello/' app.py && cat app.py", ("bash", "zsh")),
    ("grep -n beta notes.txt", ("bash", "zsh")),
    ("echo one\necho (two\necho three\necho four", ("bash",)),
    ("echo one\nif then fi\necho three\necho four", ("bash", "zsh")),
    ("echo $0", ("bash", "zsh")),
    ("nosuchcommand --flag", ("bash", "zsh")),
    ("false", ("bash", "zsh")),
    ("(exit 3)", ("bash", "zsh")),
    ("ls does-not-exist", ("bash", "zsh")),
    ("cd /does/not/exist", ("bash", "zsh")),
    ("export GREETING='hi there'", ("bash", "zsh")),
    ('echo "$GREETING"; unset GREETING; echo "[$GREETING]"', ("bash", "zsh")),
    ("(set -e; false; echo not reached)", ("bash", "zsh")),
    ("bash -c 'set -e; echo before; false; echo after'", ("bash", "zsh")),
    ("printf 'b\\na\\nc\\n' | sort | head -n 2", ("bash", "zsh")),
    ("false | true; echo $?", ("bash", "zsh")),
    ('seq 3 | while read n; do echo "n=$n"; done', ("bash", "zsh")),
    ('for i in 1 2 3\ndo\n  echo "item $i"\ndone', ("bash", "zsh")),
    ("if [ -f app.py ]; then\n  echo exists\nelse\n  echo missing\nfi", ("bash", "zsh")),
    ('greet() {\n  echo "hi $1"\n}', ("bash", "zsh")),
    ("greet bob", ("bash", "zsh")),
    ("echo 'single $x' \"double $HOME\" \\$PATH", ("bash", "zsh")),
    ("echo 'héllo wörld ✓ 日本語'", ("bash", "zsh")),
    ("echo err >&2; echo out", ("bash", "zsh")),
    ("python3 -c 'import sys; print(\"out\"); sys.exit(4)'", ("bash", "zsh")),
    ("echo " + "x" * 300, ("bash", "zsh")),
    ("true && echo yes || echo no", ("bash", "zsh")),
    ("read -r word <<< 'value'; echo \"$word\"", ("bash", "zsh")),
    ("echo $((6 * 7))", ("bash", "zsh")),
    (
        "git -c init.defaultBranch=main init -q repo && cd repo && git status --short"
        " && git rev-parse --abbrev-ref HEAD; cd ..",
        ("bash", "zsh"),
    ),
    (
        "python3 -m pytest -q -p no:cacheprovider test_calc.py 2>&1 | tail -n 1 | sed 's/ in .*//'",
        ("bash", "zsh"),
    ),
    ("sleep 30 > server.log 2>&1 &", ("bash", "zsh")),
    ("jobs", ("bash", "zsh")),
    # `wait` makes the notice's place certain (without it, whether the job has died by the next
    # prompt is a race, typed or not); 143: `kill %1` stopped the server, not another job.
    ("kill %1; wait %1", ("bash", "zsh")),
    ("echo after the server", ("bash", "zsh")),
    # A job that ends only when a later command lets it (a FIFO), so that its notice comes
    # during that command on both sides, never at an idle prompt at a moment load decides.
    ("mkfifo gate && cat gate > /dev/null &", ("bash", "zsh")),
    ("echo go > gate; wait; echo waited", ("bash", "zsh")),
    # Jobs whose end is not waited for, in commands of builtins only (after a foreground
    # process bash reports other jobs at once): the notice comes before the next prompt,
    # after the command's output. One started and ended within a command; one started by an
    # earlier command. (The loop ends once the shell has reaped the job: the notice is certain.)
    (
        "mkfifo g2; cat g2 > /dev/null & echo go > g2; while kill -0 $! 2>/dev/null; do :; done;"
        " echo gone",
        ("bash", "zsh"),
    ),
    ("cat g2 > /dev/null &", ("bash", "zsh")),
    ("echo go > g2; while kill -0 $! 2>/dev/null; do :; done; echo gone", ("bash", "zsh")),
    # A command still incomplete after its last line is abandoned with exit 130 and an
    # `incomplete_command` recovery in every shell (checked below); zsh typed by a person
    # reports 1 for Ctrl-C at its line editor, a difference the result's recovery names.
    ("echo 'unclosed", ("bash",)),
    ("echo still here", ("bash", "zsh")),
    ("cat <<EOF\nline with  two spaces\n  indented $HOME\nEOF", ("bash", "zsh")),
    ("type cd", ("bash", "zsh")),
]

_ESCAPES = re.compile(
    rb"\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)"  # OSC
    rb"|\x1b\[[0-?]*[ -/]*[@-~]"  # CSI
    rb"|\x1b[()][0-9A-Za-z]|\x1b[=>78]"  # charset, keypad, cursor save
)


def clean(text: str, folder: str) -> str:
    """What both sides are compared on: no escapes, no carriage returns, no PIDs, no paths."""
    data = _ESCAPES.sub(b"", text.encode("utf-8", "surrogateescape"))
    text = data.decode("utf-8", "replace").replace("\r\n", "\n").replace("\r", "")
    text = re.sub(r"^(\[\d+\]) \d+$", r"\1 PID", text, flags=re.MULTILINE)
    return text.replace(folder, "<W>")


@dataclass(frozen=True)
class Answer:
    output: str
    exit_code: int | None
    cwd: str | None


class TypedShell:
    """A shell started plainly in a PTY; each command's lines are typed at its prompts."""

    def __init__(self, exe: str, kind: str, cwd: Path, home: Path) -> None:
        self.token = secrets.token_hex(6)
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
        argv = [exe, "-i"]  # started as ours is: the same executable path, so the same $0
        if kind == "zsh":
            env["ZDOTDIR"] = str(home)
        self.proc = subprocess.Popen(
            argv,
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
        tok = self.token
        # The prompts: a unique marker with $? and $PWD (PS1), another for continuation lines.
        if kind == "bash":
            setup = f"set +H; PS1='@@P{tok}:$?:$PWD@@'; PS2='@@C{tok}@@'; PROMPT_COMMAND=\n"
        else:
            setup = (
                "setopt prompt_subst no_bang_hist no_prompt_sp; unset RPROMPT; "
                f"PS1='@@P{tok}:%?:$PWD@@'; PS2='@@C{tok}@@'\n"
            )
        self.prompt = re.compile(rb"@@P" + tok.encode() + rb":(-?\d+):(.*?)@@")
        self.cont = b"@@C" + tok.encode() + b"@@"
        self._buf = b""
        self.last = setup
        self.write(setup.encode())
        self._until_prompt(20.0)
        self.quiet(0.5)  # a redrawn first prompt
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

    def _until_prompt(self, timeout: float) -> tuple[bytes, re.Match[bytes] | None]:
        """Read until a primary or a continuation prompt: the text before it, and the primary
        prompt's match (None: a continuation prompt)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            m = self.prompt.search(self._buf)
            c = self._buf.find(self.cont)
            if m is not None and (c < 0 or m.start() < c):
                text, self._buf = self._buf[: m.start()], self._buf[m.end() :]
                return text, m
            if c >= 0:
                text, self._buf = self._buf[:c], self._buf[c + len(self.cont) :]
                return text, None
            self._buf += self._read(0.05)
        raise AssertionError(
            f"no prompt from the typed shell after {self.last!r}; got {self._buf[-300:]!r}"
        )

    def _until_editing(self, timeout: float) -> None:
        """Wait until the shell's line editor reads the terminal: canonical mode is off (the
        master shares the terminal's settings on Linux)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if not termios.tcgetattr(self.master)[3] & termios.ICANON:
                return
            self._buf += self._read(0.002)

    def quiet(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self._buf += self._read(max(0.0, end - time.monotonic()))

    def run(self, command: str) -> Answer:
        self.last = command
        lines = command.split("\n")
        # Printed at the prompt since the last command (a job's notice): after the prompt's
        # own line, and without the prompt redrawn under it.
        pending = self.prompt.sub(b"", self._buf)
        self._buf = b""
        output = pending[pending.find(b"\n") + 1 :]
        match: re.Match[bytes] | None = None
        for line in lines:
            # Pasted (so a tab or a `{` is taken literally, as typed characters would be), then
            # Enter; the echo of the line ends at the first newline.
            self.write(b"\x1b[200~" + line.encode() + b"\x1b[201~\r")
            text, match = self._until_prompt(30.0)
            nl = text.find(b"\n")
            output += text[nl + 1 :] if nl >= 0 else b""
        if match is None:
            # Still at a continuation prompt after the last line: abandon it, as a user would,
            # who presses Ctrl-C at a prompt the line editor reads (a SIGINT between the prompt
            # being printed and the editor starting leaves `$?` as it was in zsh).
            self._until_editing(2.0)
            self.write(b"\x03")
            while match is None:
                _, match = self._until_prompt(30.0)
        assert match is not None
        return Answer(
            output.decode("utf-8", "replace"), int(match.group(1)), match.group(2).decode()
        )

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        os.close(self.master)


def _compared(answer: Answer, root: Path) -> tuple[str, int | None, str]:
    return (
        clean(answer.output, str(root)),
        answer.exit_code,
        clean(answer.cwd or "", str(root)),
    )


def _folder(root: Path, name: str) -> tuple[Path, Path]:
    work = root / name / "w"
    home = root / name / "home"
    work.mkdir(parents=True)
    home.mkdir(parents=True)
    for rel, content in SEED_FILES.items():
        (work / rel).write_text(content)
    return work, home


@pytest.mark.parametrize("shell", ["bash", "zsh"])
async def test_commands_behave_as_typed_into_a_plain_shell(shell: str, tmp_path: Path) -> None:
    exe = resolve_shell(shell, os.environ.get("PATH"))
    if exe is None or shutil.which("git") is None:
        pytest.skip(f"{shell} or git is not installed")
    ours_dir, ours_home = _folder(tmp_path, "ours")
    ref_dir, ref_home = _folder(tmp_path, "ref")
    commands = [cmd for cmd, shells in CORPUS if shell in shells]
    typed = await asyncio.to_thread(TypedShell, exe, shell, ref_dir, ref_home)
    mismatches: list[str] = []
    try:
        async with await Terminal.start(
            shell=exe,
            cwd=str(ours_dir),
            env={"HOME": str(ours_home), "ZDOTDIR": str(ours_home)},
            state_dir=tmp_path / "state",
            cols=COLS,
            rows=ROWS,
        ) as term:
            assert term.mode is Mode.SHELL_INTEGRATION
            for command in commands:
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
    assert not mismatches, f"{len(mismatches)} of {len(commands)} differ:\n" + "\n".join(mismatches)


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
async def test_an_interrupted_command_gains_no_blank_line(shell: str, tmp_path: Path) -> None:
    """bash and zsh end the line a typed ^C was echoed on; ours is a signal, never echoed."""
    async with await Terminal.start(
        shell=shell, cwd=str(tmp_path), env={"HOME": str(tmp_path)}, state_dir=tmp_path / "s"
    ) as term:
        for command, output in (
            ("echo a; sleep 30", "a\n"),
            ("sleep 30", ""),
            # bash and zsh end an unfinished line (that newline is kept); fish does not.
            ("printf 'no newline'; sleep 30", "no newline" + ("" if shell == "fish" else "\n")),
        ):
            running = asyncio.ensure_future(term.execute(command, timeout=20))
            for _ in range(1000):  # execute() hands the command over after a few awaits
                if term.current is not None:
                    break
                await asyncio.sleep(0.005)
            assert term.current is not None
            await asyncio.wait_for(asyncio.shield(term.current.began), 10)  # it runs
            await asyncio.sleep(0.2)
            await term.interrupt()
            result = await asyncio.wait_for(running, 10)
            assert (result.output, result.exit_code) == (output, 130), command


@pytest.mark.parametrize("shell", ["bash", "zsh"])
async def test_a_job_notice_is_shown_once_whenever_the_job_ends(shell: str, tmp_path: Path) -> None:
    """A background job ends while quick commands keep coming: its notice is in exactly one
    command's output, wherever the shell printed it (during a command, before a prompt, after
    zsh's precmd, while zle waited at its prompt or read the next command's keys)."""
    async with await Terminal.start(
        shell=shell, cwd=str(tmp_path), env={"HOME": str(tmp_path)}, state_dir=tmp_path / "s"
    ) as term:
        for _ in range(8):
            await term.execute("sleep 0.1 &", timeout=10)
            outputs = []
            started = time.monotonic()
            while time.monotonic() - started < 0.3:  # commands across the job's end
                outputs.append((await term.execute("echo x", timeout=10)).output)
            outputs.append((await term.execute("echo end", timeout=10)).output)
            shown = "".join(outputs)
            assert shown.count("sleep 0.1") == 1, shown
            assert re.search(r"(?i)\bdone\b", shown), shown


def _check_typed_answers(shell: str, answers: dict[str, dict[str, Any]]) -> None:
    """What a user relies on from "as typed", as it comes over the protocol."""
    started = answers["sleep 30 > server.log 2>&1 &"]
    assert re.fullmatch(r"\[1\] \d+\n", started["output"]), started
    stopped = answers["kill %1; wait %1"]
    # The server, job 1, was the one stopped. zsh (option NOTIFY) reports a job's end as soon
    # as it learns of it, also between `kill` and `wait`, and forgets the job: then `wait`
    # finds no job, typed at a plain zsh's prompt as well (a few runs in a hundred here).
    if stopped["exitCode"] == 127 and shell == "zsh":
        assert stopped["output"].endswith("wait: %1: no such job\n"), stopped
    else:
        assert stopped["exitCode"] == 143, stopped
    assert "erminated" in stopped["output"]
    assert "sleep 30" in stopped["output"]
    lines = answers["echo one\nif then fi\necho three"]
    assert lines["output"].startswith("one\n")
    assert lines["output"].endswith("three\n")
    assert "/cmd" not in lines["output"]  # the error names the shell, not a file
    assert answers["echo $0"]["output"].strip().endswith(shell)
    missing = answers["nosuchcommand"]
    assert (missing["exitCode"], "/cmd" in missing["output"]) == (127, False)
    assert missing["output"].startswith(f"{shell}:")
    unclosed = answers["echo 'unclosed"]
    assert unclosed["exitCode"] == 130
    assert [r["action"] for r in unclosed["recoveries"]] == ["incomplete_command"]
    assert unclosed["recoveries"][0]["reason"].endswith("abandoned with Ctrl-C")
    # A shell that ignores SIGINT is deaf to Ctrl-C: its continuation prompt is abandoned
    # all the same (bash 130 as for Ctrl-C, zsh 1 as for any aborted line), and the user's
    # trap is still set afterwards.
    deaf = answers["echo 'unclosed while SIGINT is ignored"]
    assert (deaf["status"], deaf["output"]) == ("completed", ""), deaf
    assert deaf["exitCode"] == (130 if shell == "bash" else 1), deaf
    assert [r["action"] for r in deaf["recoveries"]] == ["incomplete_command"]
    # ... and says how: not by Ctrl-C, which the shell did not hear.
    reason = deaf["recoveries"][0]["reason"]
    assert "with Ctrl-C" not in reason
    assert "ignores SIGINT" in reason, reason
    assert answers["trap"]["output"] in ("trap -- '' SIGINT\n", "trap -- '' INT\n")


TYPED_CHECKS = [
    "sleep 30 > server.log 2>&1 &",
    "kill %1; wait %1",
    "echo one\nif then fi\necho three",
    "echo $0",
    "nosuchcommand",
    "echo 'unclosed",
    "trap '' INT",
    "echo 'unclosed while SIGINT is ignored",
    "trap",
]


@pytest.mark.parametrize("shell", ["bash", "zsh"])
async def test_as_typed_through_the_dispatcher(shell: str, tmp_path: Path) -> None:
    async with TerminalService(
        workspace=tmp_path, state_dir=tmp_path / "state", default_shell=shell
    ) as svc:
        client = MemoryServer(svc.methods(), clock=svc.clock).connect()
        answers = {
            cmd: await client.request("terminal/execute", {"command": cmd}) for cmd in TYPED_CHECKS
        }
    _check_typed_answers(shell, answers)


@pytest.mark.parametrize("shell", ["bash", "zsh"])
async def test_as_typed_through_a_real_serve(shell: str, tmp_path: Path) -> None:
    async with serve(tmp_path) as srv, BridgeClient(srv.socket) as client:
        tid = (await client.request("terminal/create", {"shell": shell}))["terminalId"]
        answers = {
            cmd: await client.request("terminal/execute", {"terminalId": tid, "command": cmd})
            for cmd in TYPED_CHECKS
        }
    _check_typed_answers(shell, answers)
