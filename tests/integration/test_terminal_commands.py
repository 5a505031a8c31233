"""Commands through a real bash on a real PTY with our shell integration."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from lapce_bridge.core.errors import InvalidParams, TerminalError
from lapce_bridge.terminal.result import Mode, Status
from lapce_bridge.terminal.terminal import Terminal

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("home")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def term(home: Path, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Terminal]:
    state = tmp_path_factory.mktemp("state")
    async with await Terminal.start(
        shell="bash", cwd=str(home), env={"HOME": str(home)}, state_dir=state
    ) as t:
        yield t


async def test_starts_with_integration(term: Terminal) -> None:
    assert term.mode is Mode.SHELL_INTEGRATION
    assert term.pid is not None
    assert term.pid > 0
    assert term.shell.endswith("bash")
    assert not term.busy


@pytest.mark.parametrize("code", [0, 1, 2, 127, 130, 255])
async def test_exit_codes(term: Terminal, code: int) -> None:
    result = await term.execute(f"(exit {code})", timeout=10)
    assert result.exit_code == code
    assert result.status is Status.COMPLETED


async def test_unknown_command_is_127_with_its_message(term: Terminal) -> None:
    result = await term.execute("no-such-command-xyz", timeout=10)
    assert result.exit_code == 127
    assert "no-such-command-xyz" in result.output


async def test_echo_output_is_exactly_what_was_printed(term: Terminal) -> None:
    result = await term.execute("echo test", timeout=10)
    assert result.output == "test\n"
    assert result.output_bytes == 5
    assert not result.truncated
    wire = result.to_wire()
    assert wire["exitCode"] == 0
    assert wire["output"] == "test\n"
    assert wire["status"] == "completed"
    assert wire["mode"] == "shell_integration"
    assert wire["recoveries"] == []


async def test_empty_output(term: Terminal) -> None:
    result = await term.execute("true", timeout=10)
    assert (result.output, result.exit_code, result.output_bytes) == ("", 0, 0)


async def test_output_without_trailing_newline(term: Terminal) -> None:
    result = await term.execute("printf 'a\\nb'", timeout=10)
    assert result.output == "a\nb"


async def test_cd_persists_and_is_reported(term: Terminal, tmp_path: Path) -> None:
    target = tmp_path / "dir with space;semi"
    target.mkdir()
    result = await term.execute(f"cd '{target}'", timeout=10)
    assert result.cwd == str(target)
    again = await term.execute("pwd", timeout=10)
    assert again.output == f"{target}\n"
    assert term.cwd == str(target)


async def test_cwd_parameter_runs_there(term: Terminal, tmp_path: Path) -> None:
    result = await term.execute("pwd", cwd=str(tmp_path), timeout=10)
    assert result.output == f"{tmp_path}\n"
    missing = await term.execute("echo never", cwd=str(tmp_path / "missing"), timeout=10)
    assert missing.exit_code == 1
    assert "never" not in missing.output


async def test_export_function_and_alias_persist(term: Terminal) -> None:
    await term.execute("export LB_VAR='x y'; greet() { echo \"hi $1\"; }; alias ll='echo L'")
    result = await term.execute('echo "$LB_VAR"; greet you; ll', timeout=10)
    assert result.output == "x y\nhi you\nL\n"


async def test_multiline_heredoc_python_and_quotes(term: Terminal) -> None:
    command = (
        "x=1\n"
        "if [ $x = 1 ]; then\n  echo one\nfi\n"
        "cat <<'EOF'\n$HOME is literal\n  indented \"dq\" 'sq'\nEOF\n"
        "python3 -c 'import sys\nprint(\"py\", 6 * 7)\nsys.exit(3)'"
    )
    result = await term.execute(command, timeout=20)
    assert result.output == ("one\n$HOME is literal\n  indented \"dq\" 'sq'\npy 42\n")
    assert result.exit_code == 3


async def test_all_quote_kinds_and_backslashes(term: Terminal) -> None:
    result = await term.execute(
        "printf '%s|' \"dq $((1+1))\" 'sq $x' $'ansi\\tc' `echo bt` 'a\\b' \"semi;colon\"",
        timeout=10,
    )
    assert result.output == "dq 2|sq $x|ansi\tc|bt|a\\b|semi;colon|"


async def test_unicode_output(term: Terminal) -> None:
    result = await term.execute("echo 'héllo wörld 日本語 🎉'", timeout=10)
    assert result.output == "héllo wörld 日本語 🎉\n"
    assert result.output_bytes == len("héllo wörld 日本語 🎉\n".encode())


async def test_multibyte_char_split_across_reads(term: Terminal) -> None:
    # The first half of the euro sign, a pause long enough for its own read, then the rest.
    result = await term.execute("printf '\\342'; sleep 0.2; printf '\\202\\254\\n'", timeout=10)
    assert result.output == "€\n"
    assert "\ufffd" not in result.output


async def test_ansi_is_stripped_by_default_and_kept_on_request(term: Terminal) -> None:
    command = "printf '\\033[31mred\\033[0m\\n'"
    stripped = await term.execute(command, timeout=10)
    assert stripped.output == "red\n"
    kept = await term.execute(command, ansi="keep", timeout=10)
    assert kept.output == "\x1b[31mred\x1b[0m\n"


async def test_pager_does_not_take_over(term: Terminal, home: Path) -> None:
    result = await term.execute(
        'echo "$PAGER $GIT_PAGER $GIT_EDITOR $TERM"; printf "l1\\nl2\\n" | ${PAGER}', timeout=10
    )
    assert result.output == "cat cat : xterm-256color\nl1\nl2\n"
    repo = home / "repo"
    repo.mkdir()
    git = await term.execute(
        f"cd '{repo}' && git init -q && git -c user.email=a@b -c user.name=n commit -q "
        "--allow-empty -m first && git log --format=%s && cd -",
        timeout=20,
    )
    assert "first\n" in git.output
    assert git.exit_code == 0


async def test_spoofed_end_marker_does_not_end_the_command(term: Terminal) -> None:
    result = await term.execute("printf '\\033]633;D;0\\007'; echo after", timeout=10)
    assert result.output.endswith("after\n")
    assert result.exit_code == 0


async def test_nonce_is_hidden_from_commands(term: Terminal) -> None:
    result = await term.execute("env | grep -c LAPCE_BRIDGE_ || true", timeout=10)
    assert result.output == "0\n"
    # Neither the shell's starting environment nor a child's holds the command's nonce.
    nonces: list[str] = []

    def grab(_text: str) -> None:
        if term.current is not None:
            nonces.append(term.current.token)

    for command in ("tr '\\0' '\\n' </proc/$$/environ", "env"):
        result = await term.execute(command, timeout=10, on_data=grab)
        assert nonces
        assert nonces[-1] not in result.output
        assert "NONCE" not in result.output
        assert "__lb_" not in result.output


async def test_timeout_interrupts_and_terminal_stays_usable(term: Terminal) -> None:
    result = await term.execute("echo started; sleep 30", timeout=0.5)
    assert result.status is Status.TIMED_OUT
    # bash ends the line of a job killed by SIGINT, as it does in any terminal
    assert result.output.rstrip("\n") == "started"
    assert result.exit_code == 130
    after = await term.execute("echo next", timeout=10)
    assert (after.output, after.exit_code, after.status) == ("next\n", 0, Status.COMPLETED)


async def test_timeout_escalates_when_sigint_is_ignored(term: Terminal) -> None:
    term.interrupt_grace = 0.3
    try:
        result = await term.execute(
            "python3 -c 'import signal,time; signal.signal(signal.SIGINT, signal.SIG_IGN); "
            'print("up", flush=True); time.sleep(30)\'',
            timeout=1.0,
        )
    finally:
        term.interrupt_grace = 1.0
    assert result.status is Status.TIMED_OUT
    assert result.output.startswith("up\n")
    assert "Terminated" in result.output  # bash reports the job's end, as in any terminal
    assert result.exit_code == 128 + signal.SIGTERM
    assert (await term.execute("echo ok", timeout=10)).output == "ok\n"


async def test_waiting_for_input_then_answered(term: Terminal) -> None:
    result = await term.execute("printf 'name? '; read x; echo \"got $x\"", idle_timeout=0.3)
    assert result.status is Status.WAITING_FOR_INPUT
    assert result.output == "name? "
    assert result.exit_code is None
    assert term.busy
    with pytest.raises(TerminalError, match="busy"):
        await term.execute("echo no", timeout=5)
    term.send_text("bob\n")
    final = await term.wait(result.execution_id, within=10)
    assert final.status is Status.COMPLETED
    assert final.exit_code == 0
    assert final.output == "name? bob\ngot bob\n"
    assert not term.busy


async def test_interrupt_stops_the_command(term: Terminal) -> None:
    import asyncio

    task = asyncio.ensure_future(term.execute("sleep 30; echo never", timeout=20))
    for _ in range(200):
        if term.busy and term.proc is not None and term.proc.foreground_pgrp() != term.pid:
            break
        await asyncio.sleep(0.01)
    await term.interrupt()
    result = await task
    assert result.status is Status.INTERRUPTED
    assert result.exit_code == 130
    assert "never" not in result.output


async def test_large_output_is_truncated_but_fully_readable(term: Terminal) -> None:
    result = await term.execute("seq 1 200000", max_output_bytes=1000, timeout=30)
    expected = "".join(f"{i}\n" for i in range(1, 200001))
    assert result.truncated
    assert result.output_bytes == len(expected)
    assert result.output.startswith("1\n2\n3\n")
    assert result.output.endswith("199999\n200000\n")
    assert "bytes omitted" in result.output
    assert len(result.output.encode()) < 1200
    data, offset, eof, chunks = "", 0, False, 0
    while not eof:
        piece, offset, eof = term.read_output(result.execution_id, offset, 300_000)
        data += piece
        chunks += 1
    assert data == expected
    assert chunks >= 4


async def test_bad_parameters_are_refused(term: Terminal) -> None:
    with pytest.raises(InvalidParams):
        await term.execute("echo", ansi="purple")
    with pytest.raises(InvalidParams):
        await term.execute("echo", timeout=-1)
    with pytest.raises(InvalidParams):
        term.read_output("nope", 0, 10)
    assert not term.busy


async def test_resize_reaches_the_shell(term: Terminal) -> None:
    term.resize(77, 22)
    result = await term.execute("stty size", timeout=10)
    assert result.output == "22 77\n"


async def test_statistics(term: Terminal) -> None:
    stats = term.statistics()
    assert stats.executions > 10
    assert stats.mode == "shell_integration"
    assert stats.bytes_read > 0
    assert stats.pid == term.pid
    assert stats.deaths == 0


async def test_cancelled_request_stops_its_command_and_frees_the_terminal(term: Terminal) -> None:
    running = asyncio.ensure_future(term.execute("sleep 30; echo never", timeout=60))
    await asyncio.sleep(0.3)
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    # The next command is not refused as "busy": the cancelled one was stopped.
    result = await term.execute("echo next", timeout=10)
    assert result.output == "next\n"
    assert result.exit_code == 0
