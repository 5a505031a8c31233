"""Multi-line commands, real shells: bash and zsh load a command's next lines themselves (no
round trip to the bridge per line), still as typed; a stopped command runs none of its later
lines; a line that reads the terminal gets only what is sent to it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from lapce_bridge.terminal.result import Status
from lapce_bridge.terminal.terminal import Terminal

# Twenty lines: plain ones, a block over three lines, a here-document, an error.
TWENTY = "\n".join(
    [f"echo line{i}" for i in range(10)]
    + ["for i in 1 2; do", "echo in$i", "done"]
    + ["cat <<'EOF'", "body $x", "EOF"]
    + ["false; echo status=$?", "echo a; echo b", "cd /", "pwd"]
)
TWENTY_OUT = "".join(f"line{i}\n" for i in range(10)) + "in1\nin2\nbody $x\nstatus=1\na\nb\n/\n"


@pytest_asyncio.fixture(params=["bash", "zsh", "fish"])
async def term(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Terminal]:
    async with await Terminal.start(
        shell=str(request.param),
        cwd=str(tmp_path),
        env={"HOME": str(tmp_path)},
        state_dir=tmp_path / "state",
    ) as t:
        yield t


def _count_writes(term: Terminal) -> list[bytes]:
    """What the bridge writes to the shell's PTY from now on (the real write still happens)."""
    shell = term.shell_proc
    assert shell is not None
    proc = shell.proc
    real = proc.write
    written: list[bytes] = []

    def write(data: bytes) -> None:
        written.append(data)
        real(data)

    proc.write = write  # type: ignore[method-assign]
    return written


@pytest.mark.parametrize("term", ["bash", "zsh"], indirect=True)
async def test_bash_and_zsh_get_a_multi_line_command_in_one_write(term: Terminal) -> None:
    # Each further line used to cost a round trip: the shell's prompt asked for it, the
    # bridge typed the load key. Now the shell loads them all itself.
    written = _count_writes(term)
    result = await term.execute(TWENTY, timeout=30)
    assert (result.output, result.exit_code, result.cwd) == (TWENTY_OUT, 0, "/")
    assert len(written) == 1, written
    # The next command (one line, then several) is typed as usual.
    again = await term.execute("echo x\necho y", timeout=30)
    assert (again.output, again.exit_code) == ("x\ny\n", 0)
    assert len(written) == 2


async def test_a_multi_line_command_runs_as_typed_in_every_shell(term: Terminal) -> None:
    fish = term.kind == "fish"
    command = TWENTY.replace("for i in 1 2; do", "for i in 1 2") if fish else TWENTY
    command = command.replace("done", "end") if fish else command
    if fish:  # fish has no here-documents, and `$?` is `$status`
        command = command.replace("cat <<'EOF'\nbody $x\nEOF", "echo 'body $x'")
        command = command.replace("$?", "$status")
    result = await term.execute(command, timeout=30)
    assert (result.output, result.exit_code, result.cwd) == (TWENTY_OUT, 0, "/")


async def test_a_stopped_multi_line_command_runs_none_of_its_later_lines(
    term: Terminal, tmp_path: Path
) -> None:
    command = "echo first\nsleep 30\necho after > after.txt\necho later"
    result = await term.execute(command, timeout=0.5)
    assert result.status is Status.TIMED_OUT
    done = await term.wait(result.execution_id, within=10)
    assert done.output.startswith("first\n")
    assert "later" not in done.output
    assert not (tmp_path / "after.txt").exists()
    # Interrupted on purpose, from another task, while its second line runs.
    task = asyncio.create_task(term.execute(command, timeout=30))
    for _ in range(500):
        current = term.current
        if current is not None and "first" in current.spool.read(0, 100)[0]:
            break
        await asyncio.sleep(0.01)
    await term.interrupt()
    stopped = await asyncio.wait_for(task, 10)
    assert stopped.status is Status.INTERRUPTED
    assert "later" not in stopped.output
    assert not (tmp_path / "after.txt").exists()
    # The next commands run every line again.
    for _ in range(2):
        after = await term.execute("echo one\necho two\necho three", timeout=30)
        assert (after.output, after.exit_code) == ("one\ntwo\nthree\n", 0)


@pytest.mark.parametrize("term", ["bash", "zsh"], indirect=True)
async def test_a_line_reading_the_terminal_gets_only_what_is_sent(term: Terminal) -> None:
    # The later lines never pass through the terminal: `read` sees only the text sent to it.
    first = await term.execute("read -r x\necho got=$x\necho end", timeout=30, idle_timeout=0.5)
    assert first.status is Status.WAITING_FOR_INPUT
    term.send_text("hello\n")
    result = await term.wait(first.execution_id, within=10)
    assert (result.output.splitlines()[-2:], result.exit_code) == (["got=hello", "end"], 0)


@pytest.mark.parametrize("term", ["fish"], indirect=True)
async def test_fish_commands_that_end_in_the_load_key_leave_the_next_output_clean(
    term: Terminal,
) -> None:
    # Their end mark came from the load key's function, where no line ran, and no prompt
    # followed it: the echo of the next command's keys was kept as its output.
    for command, output in (
        ("echo a\necho (", "a\n"),  # a syntax error on the last line
        ("echo b\n\n\n", "b\n"),  # only empty lines after the last that runs
    ):
        result = await term.execute(command, timeout=30)
        assert result.output.startswith(output)
        after = await term.execute("echo one\necho two", timeout=30)
        assert (after.output, after.exit_code) == ("one\ntwo\n", 0)
