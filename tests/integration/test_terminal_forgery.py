"""Programs inside a terminal that fake their own completion, in bash, zsh and fish.

A child process cannot learn the nonce (it is in no environment and no file); code sourced
into the shell can read the nonce of the command it belongs to and end that command early
(the residual risk the README states), but never the next command: each one's result is
its own output, exit code and cwd.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from lapce_bridge.terminal.result import Mode, Status
from lapce_bridge.terminal.terminal import Terminal

pytestmark = [pytest.mark.shells, pytest.mark.asyncio(loop_scope="module")]

# A child reading its parent's starting environment and the shell's files for anything that
# looks like a nonce, then printing end marks with each candidate, then carrying on.
CHILD = r"""
import os, re, sys, time
found = set()
# 22 url-safe base64 characters (fish), and a digit (bash, zsh); 32 hex digits (before).
NONCE = rb"[0-9a-f]{32}|[0-9A-Za-z_-]{22,23}"
ppid = os.getppid()
for path in (f"/proc/{ppid}/environ", f"/proc/{ppid}/cmdline"):
    with open(path, "rb") as f:
        found.update(re.findall(NONCE, f.read()))
folder = os.environ.get("LB_SCAN", "")
for root, _, files in os.walk(folder):
    for name in files:
        try:
            with open(os.path.join(root, name), "rb") as f:
                found.update(re.findall(NONCE, f.read()))
        except OSError:
            pass
out = sys.stdout.buffer
out.write(b"\x1b]633;D;0\x07\x1b]633;D;0;\x07")
for nonce in found:
    out.write(b"\x1b]633;P;Cwd=/forged\x07\x1b]633;D;0;" + nonce + b"\x07\x1b]633;A\x07")
out.flush()
time.sleep(0.3)
print("after", len(found) >= 0)
sys.exit(3)
"""

FORGE_OWN = {
    "bash": "printf '\\033]633;D;0;%s\\007' \"$__lb_n\"; sleep 0.5; echo late; false",
    "zsh": "printf '\\033]633;D;0;%s\\007' \"$__lb_n\"; sleep 0.5; echo late; false",
    "fish": "printf '\\e]633;D;0;%s\\a' $__lb_n; sleep 0.5; echo late; false",
}
SAVE_NONCE = {
    "bash": 'echo "$__lb_n" > nonce.txt',
    "zsh": 'echo "$__lb_n" > nonce.txt',
    "fish": "echo $__lb_n > nonce.txt",
}
# A process outside the shell's jobs (no job notices) that prints to the terminal later.
REPLAY_LATER = (
    'sh -c \'(sleep 0.3; printf "\\033]633;P;Cwd=/forged\\007\\033]633;D;0;%s\\007" '
    '"$(cat nonce.txt)" >/dev/tty) </dev/null >/dev/null 2>&1 &\''
)


@pytest.fixture(scope="module", params=["bash", "zsh", "fish"])
def shell(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def term(shell: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Terminal]:
    home = tmp_path_factory.mktemp("home")
    state = tmp_path_factory.mktemp("state")
    async with await Terminal.start(
        shell=shell, cwd=str(home), env={"HOME": str(home)}, state_dir=state
    ) as t:
        assert t.mode is Mode.SHELL_INTEGRATION
        yield t


async def test_a_child_finds_no_nonce_and_cannot_end_its_command(term: Terminal) -> None:
    script = Path(str(term.dir) + "-child.py")
    await asyncio.to_thread(script.write_text, CHILD)
    try:
        result = await term.execute(
            f"LB_SCAN={term.dir} python3 {script}"
            if term.kind != "fish"
            else f"env LB_SCAN={term.dir} python3 {script}",
            timeout=20,
        )
    finally:
        await asyncio.to_thread(script.unlink)
    assert result.status is Status.COMPLETED
    assert result.exit_code == 3
    assert result.output.endswith("after True\n")
    assert result.cwd != "/forged"


async def test_sourced_code_can_end_only_its_own_command(term: Terminal) -> None:
    await term.execute(FORGE_OWN[term.kind], timeout=20)
    here = (await term.execute("pwd", timeout=20)).output.strip()
    for command, output, code in (
        ("echo mine", "mine\n", 0),
        ("false", "", 1),
        ("echo two; echo lines", "two\nlines\n", 0),
    ):
        result = await term.execute(command, timeout=20)
        assert (result.output, result.exit_code, result.cwd) == (output, code, here)


async def test_an_old_nonce_replayed_by_a_background_child_is_ignored(term: Terminal) -> None:
    await term.execute(SAVE_NONCE[term.kind], timeout=20)
    saved = (await term.execute("cat nonce.txt", timeout=20)).output.strip()
    # url-safe base64; bash and zsh: and the digit of `exports.may_export`.
    assert len(saved) == (22 if term.kind == "fish" else 23)
    await term.execute(REPLAY_LATER, timeout=20)
    result = await term.execute("sleep 1; echo three; false", timeout=20)
    assert (result.output, result.exit_code) == ("three\n", 1)
    assert result.cwd != "/forged"
    assert (await term.execute("echo four", timeout=20)).output == "four\n"
