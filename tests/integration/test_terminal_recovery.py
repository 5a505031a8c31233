"""Shell deaths, crash loops, fallback modes and user rc files, with real shells."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from lapce_bridge.core.errors import ShellCrashed
from lapce_bridge.terminal.recovery import CrashLoopPolicy
from lapce_bridge.terminal.result import Mode, Status
from lapce_bridge.terminal.terminal import Terminal, TerminalExited
from lapce_bridge.terminal.tracker import EndDetection


async def _restarted(term: Terminal, count: int) -> None:
    for _ in range(1000):
        if term.restarts >= count and (term.restarting is None or term.restarting.done()):
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"terminal did not restart {count} times")


async def each_export_survives_a_kill(
    term: Terminal, changes: list[tuple[str, str, str]], echo: Callable[[str], str]
) -> None:
    """For each (command, expected value, name): run it, then a command that changes
    nothing, kill the shell and read the variable (`echo(name)`) in the restarted one."""
    for kills, (command, expected, name) in enumerate(changes, start=1):
        changed = await term.execute(command, timeout=10)
        assert changed.status is Status.COMPLETED, (command, changed)
        # A command that changes nothing, after it: the save must not depend on it.
        assert (await term.execute("echo test", timeout=10)).output == "test\n"
        term.kill()
        await _restarted(term, kills)
        after = await term.execute(echo(name), timeout=10)
        assert after.output == f"{expected}\n", command


async def _kill_mid_command(term: Terminal) -> None:
    """A death nobody asked for, while a command runs (its result carries the recovery)."""
    running = asyncio.ensure_future(term.execute("sleep 30", timeout=20))
    for _ in range(500):
        if term.busy and term.proc is not None and term.proc.foreground_pgrp() != term.pid:
            break
        await asyncio.sleep(0.01)
    term.kill()
    await running


async def _gone(term: Terminal) -> None:
    for _ in range(1000):
        if term.failed is not None:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("terminal did not give up")


async def test_exits_the_user_asked_for_keep_the_shell_cwd_and_env(tmp_path: Path) -> None:
    exits: list[TerminalExited] = []
    async with await Terminal.start(
        shell="bash",
        cwd=str(tmp_path),
        env={"HOME": str(tmp_path)},
        state_dir=tmp_path / "state",
        on_exit=exits.append,
        crash_policy=CrashLoopPolicy(max_deaths=2, window_s=60),
    ) as term:
        await term.execute("cd /usr; export VAR=kept", timeout=10)
        shell = term.shell
        for command, code in (("exec false", 1), ("set -e; false", 1), ("exit 3", 3)):
            result = await term.execute(command, timeout=10)
            assert (result.status, result.exit_code) == (Status.INTERRUPTED, code)
            assert [r.action for r in result.recoveries] == ["recreate_terminal"]
            assert "the command ended the shell" in result.recoveries[0].reason
            await _restarted(term, len(exits))
            after = await term.execute('pwd; echo "$VAR"', timeout=10)
            assert after.output == "/usr\nkept\n"
            assert term.shell == shell
            assert term.mode is Mode.SHELL_INTEGRATION
        assert term.deaths == []  # none of them counts toward the crash loop
        assert [e.will_recover for e in exits] == [True, True, True]


async def test_shell_killed_mid_command_is_recovered_with_cwd_and_env(tmp_path: Path) -> None:
    exits: list[TerminalExited] = []
    work = tmp_path / "work"
    work.mkdir()
    async with await Terminal.start(
        shell="bash",
        cwd=str(tmp_path),
        env={"HOME": str(tmp_path)},
        state_dir=tmp_path / "state",
        on_exit=exits.append,
    ) as term:
        await term.execute(f"cd {work}; export KEPT='a b'; unexported=1", timeout=10)
        first_pid = term.pid
        running = asyncio.ensure_future(term.execute("echo before; sleep 30", timeout=20))
        for _ in range(500):
            if term.busy and term.proc is not None and term.proc.foreground_pgrp() != term.pid:
                break
            await asyncio.sleep(0.01)
        term.kill()
        result = await running
        assert result.status is Status.INTERRUPTED
        assert result.exit_code is None
        assert result.output.startswith("before\n")
        assert [r.action for r in result.recoveries] == ["recreate_terminal"]
        assert "-9" in result.recoveries[0].reason
        assert exits == [TerminalExited(term.terminal_id, -9, True)]
        after = await term.execute('pwd; echo "$KEPT|${unexported-}"', timeout=10)
        assert after.output == f"{work}\na b|\n"
        assert after.exit_code == 0
        assert term.pid != first_pid
        assert term.restarts == 1
        assert term.last_recovery_ms is not None
        assert term.last_recovery_ms < 5000


async def test_exit_reports_its_code_and_the_terminal_comes_back(tmp_path: Path) -> None:
    async with await Terminal.start(
        shell="bash", cwd=str(tmp_path), env={"HOME": str(tmp_path)}, state_dir=tmp_path
    ) as term:
        result = await term.execute("echo bye; exit 4", timeout=10)
        # As typed: bash says `exit` as it leaves.
        assert (result.status, result.exit_code) == (Status.INTERRUPTED, 4)
        assert result.output == "bye\nexit\n"
        assert (await term.execute("echo back", timeout=10)).output == "back\n"


async def test_crash_loop_moves_to_another_shell_then_gives_up(tmp_path: Path) -> None:
    exits: list[TerminalExited] = []
    async with await Terminal.start(
        shell="bash",
        cwd=str(tmp_path),
        env={"HOME": str(tmp_path)},
        state_dir=tmp_path,
        on_exit=exits.append,
        crash_policy=CrashLoopPolicy(max_deaths=2, window_s=60, fallback_shells=("bash", "sh")),
    ) as term:
        # Deaths nobody asked for (an exit a command asks for is not a crash).
        await term.execute("export LB_KEEP='it'\\''s kept'; cd /", timeout=10)
        await _kill_mid_command(term)
        await _restarted(term, 1)
        await _kill_mid_command(term)
        await _restarted(term, 2)
        assert term.mode is Mode.ALTERNATIVE_SHELL
        assert term.detection is EndDetection.END_MARKER
        result = await term.execute("echo $0; false", timeout=10)
        assert result.exit_code == 1
        assert result.mode is Mode.ALTERNATIVE_SHELL
        assert [r.action for r in result.recoveries] == ["alternative_shell"]
        assert result.output.strip() in ("sh", "/bin/sh", "/usr/bin/sh")
        # The exported environment and the cwd came along into sh.
        kept = await term.execute('echo "$LB_KEEP"; pwd', timeout=10)
        assert kept.output == "it's kept\n/\n"
        await _kill_mid_command(term)
        await _restarted(term, 3)
        await _kill_mid_command(term)
        await _gone(term)
        assert [e.will_recover for e in exits] == [True, True, True, False]
        with pytest.raises(ShellCrashed, match="no other shell"):
            await term.execute("echo never", timeout=10)


async def test_interrupt_right_after_sending_never_hangs(tmp_path: Path) -> None:
    async with await Terminal.start(
        shell="bash", cwd=str(tmp_path), env={"HOME": str(tmp_path)}, state_dir=tmp_path
    ) as term:
        for _ in range(5):
            running = asyncio.ensure_future(term.execute("sleep 30", timeout=20))
            await asyncio.sleep(0)
            await term.interrupt()
            result = await asyncio.wait_for(running, 10)
            assert result.status is Status.INTERRUPTED
            assert result.exit_code == 130
        assert (await term.execute("echo fine", timeout=10)).output == "fine\n"


async def test_user_rc_prompt_command_debug_trap_and_colour_prompt_keep_working(
    tmp_path: Path,
) -> None:
    (tmp_path / ".bashrc").write_text(
        "PS1='\\[\\e[32m\\]\\u@\\h\\[\\e[0m\\] \\$ '\n"
        "PROMPT_COMMAND='LB_PC=$((LB_PC+1))'\n"
        "trap 'LB_DBG=$((LB_DBG+1))' DEBUG\n"
        "alias from_rc='echo rc-alias'\n"
    )
    async with await Terminal.start(
        shell="bash", cwd=str(tmp_path), env={"HOME": str(tmp_path)}, state_dir=tmp_path / "s"
    ) as term:
        assert term.mode is Mode.SHELL_INTEGRATION
        first = await term.execute('echo "$LB_PC $LB_DBG"', timeout=10)
        second = await term.execute('echo "$LB_PC $LB_DBG"; from_rc', timeout=10)
        pc1, dbg1 = map(int, first.output.split())
        pc2, dbg2 = map(int, second.output.splitlines()[0].split())
        assert pc2 == pc1 + 1  # the user's PROMPT_COMMAND ran once more, after one command
        assert dbg2 > dbg1  # and their DEBUG trap saw the commands
        assert second.output.splitlines()[1] == "rc-alias"
        ps1 = await term.execute('printf "%s" "$PS1"', timeout=10)
        # Theirs, between our prompt-start and prompt-end marks.
        assert ps1.output.startswith("\\[${__lb_mark}\\e]633;A\\a\\]\\[\\e[32m\\]\\u@\\h")
        status = await term.execute("(exit 5)", timeout=10)
        assert status.exit_code == 5  # $? reaches our hook through theirs


async def test_rc_that_replaces_the_shell_falls_back_to_end_markers(tmp_path: Path) -> None:
    # A .bashrc that execs another shell (as some users do to reach their favourite shell)
    # means our hooks never load: the terminal must not wait for them forever.
    (tmp_path / ".bashrc").write_text("exec bash --norc --noprofile -i\n")
    async with await Terminal.start(
        shell="bash",
        cwd=str(tmp_path),
        env={"HOME": str(tmp_path)},
        state_dir=tmp_path / "s",
        startup_timeout=0.5,
    ) as term:
        assert term.mode is Mode.NO_SHELL_INTEGRATION
        result = await term.execute("cd /; echo hi; (exit 3)", timeout=10)
        assert (result.output, result.exit_code, result.cwd) == ("hi\n", 3, "/")
        assert [r.action for r in result.recoveries] == ["no_shell_integration"]
        again = await term.execute("echo again", timeout=10)
        assert (again.output, again.exit_code, again.recoveries) == ("again\n", 0, ())


async def test_missing_shell_runs_in_an_alternative(tmp_path: Path) -> None:
    async with await Terminal.start(
        shell="no-such-shell-here",
        cwd=str(tmp_path),
        env={"HOME": str(tmp_path)},
        state_dir=tmp_path,
    ) as term:
        assert term.mode is Mode.ALTERNATIVE_SHELL
        assert term.shell.endswith("bash")
        result = await term.execute("(exit 2)", timeout=10)
        assert result.exit_code == 2
        assert result.recoveries[0].action == "alternative_shell"
        assert "no-such-shell-here" in result.recoveries[0].reason


@pytest.mark.parametrize("shell", ["dash", "sh"])
async def test_posix_shells_run_with_end_markers(tmp_path: Path, shell: str) -> None:
    async with await Terminal.start(
        shell=shell, cwd=str(tmp_path), env={"HOME": str(tmp_path)}, state_dir=tmp_path
    ) as term:
        assert term.mode is Mode.NO_SHELL_INTEGRATION
        for code in (0, 1, 2, 127, 255):
            assert (await term.execute(f"(exit {code})", timeout=10)).exit_code == code
        result = await term.execute("cd /tmp && echo in; pwd", timeout=10)
        assert (result.output, result.cwd) == ("in\n/tmp\n", "/tmp")
        syntax = await term.execute("echo a\nif then fi (", timeout=10)
        assert syntax.exit_code == 2
        assert (await term.execute("printf 'x\\ny'", timeout=10)).output == "x\ny"
        multi = await term.execute("cat <<EOF\nline $((1+2))\nEOF", timeout=10)
        assert multi.output == "line 3\n"
        spoof = await term.execute("printf '\\033]633;P;LbEnd=0:bad\\007'; echo real", timeout=10)
        assert spoof.output == "real\n"


async def test_shell_that_cannot_print_marks_runs_in_raw_output_mode(tmp_path: Path) -> None:
    # An rc file (dash reads $ENV) that replaces printf: no end mark can ever be printed.
    rc = tmp_path / "rc.sh"
    rc.write_text("printf() { :; }\n")
    async with await Terminal.start(
        shell="dash",
        cwd=str(tmp_path),
        env={"HOME": str(tmp_path), "ENV": str(rc)},
        state_dir=tmp_path / "s",
        probe_timeout=0.5,
    ) as term:
        assert term.mode is Mode.RAW_OUTPUT
        result = await term.execute("echo raw; echo out", timeout=10)
        assert result.output == "raw\nout\n"
        assert result.exit_code is None
        assert result.status is Status.COMPLETED
        assert [r.action for r in result.recoveries] == ["raw_output_mode"]


async def test_chatty_command_is_answered_running_after_max_wait(tmp_path: Path) -> None:
    async with await Terminal.start(
        shell="bash", cwd=str(tmp_path), env={"HOME": str(tmp_path)}, state_dir=tmp_path
    ) as term:
        result = await term.execute(
            "for i in $(seq 1 400); do echo tick $i; sleep 0.05; done",
            idle_timeout=1.0,
            max_wait=0.6,
        )
        assert result.status is Status.RUNNING
        assert result.output.startswith("tick 1\n")
        assert result.exit_code is None
        assert term.busy
        await term.interrupt()
        final = await term.wait(result.execution_id, within=10)
        assert final.status is Status.INTERRUPTED
        assert final.output.startswith(result.output)


async def test_rc_that_swallows_the_terminal_falls_back_to_a_minimal_shell(tmp_path: Path) -> None:
    # The rc hands the terminal to another program: neither our hooks nor end marks can run,
    # so the terminal restarts the shell without the user's rc files.
    (tmp_path / ".bashrc").write_text("exec cat\n")
    async with await Terminal.start(
        shell="bash",
        cwd=str(tmp_path),
        env={"HOME": str(tmp_path)},
        state_dir=tmp_path / "s",
        startup_timeout=0.5,
        probe_timeout=0.5,
    ) as term:
        assert term.mode is Mode.MINIMAL_PTY
        assert term.detection is EndDetection.INTEGRATION
        result = await term.execute("echo minimal; (exit 6)", timeout=10)
        assert (result.output, result.exit_code) == ("minimal\n", 6)
        assert [r.action for r in result.recoveries] == ["minimal_pty"]


async def test_large_input_and_large_commands_are_delivered_whole(tmp_path: Path) -> None:
    async with await Terminal.start(
        shell="bash", cwd=str(tmp_path), env={"HOME": str(tmp_path)}, state_dir=tmp_path
    ) as term:
        body = "".join(f"{i:07d} " + "x" * 91 + "\n" for i in range(3000))  # 300 KB
        big = await term.execute(f"wc -c <<'EOF'\n{body}EOF", timeout=20)
        assert big.output.strip() == str(len(body))
        reader = await term.execute(
            "python3 -c 'import sys; d = sys.stdin.read(); print(len(d), d.count(\"\\n\"))'",
            idle_timeout=0.5,
        )
        assert reader.status is Status.WAITING_FOR_INPUT
        lines = "".join("y" * 99 + "\n" for _ in range(2000))  # 200 KB through the PTY
        term.send_text(lines + "\x04")
        done = await term.wait(reader.execution_id, within=30)
        assert done.output.splitlines()[-1] == "200000 2000"


@pytest.mark.shells
@pytest.mark.parametrize("shell", ["zsh", "fish"])
async def test_exits_asked_for_in_zsh_and_fish(tmp_path: Path, shell: str) -> None:
    async with await Terminal.start(
        shell=shell, cwd=str(tmp_path), env={"HOME": str(tmp_path)}, state_dir=tmp_path / "s"
    ) as term:
        export = "set -gx VAR kept" if shell == "fish" else "export VAR=kept"
        await term.execute(f"cd /usr; {export}", timeout=10)
        steps = [("exec false", 1), ("exit 3", 3), ("echo bye; exit 4", 4)]
        if shell == "zsh":
            steps.append(("setopt err_exit; false", 1))
        for restarts, (command, code) in enumerate(steps, start=1):
            result = await term.execute(command, timeout=10)
            # fish runs its end hooks before `exec` ends it: that command completes.
            ended = (
                (Status.INTERRUPTED, Status.COMPLETED)
                if shell == "fish" and command.startswith("exec")
                else (Status.INTERRUPTED,)
            )
            assert (result.status in ended, result.exit_code) == (True, code)
            await _restarted(term, restarts)
            after = await term.execute('pwd; echo "$VAR"', timeout=10)
            assert after.output == "/usr\nkept\n"
        assert term.deaths == []


async def test_a_shell_that_exits_at_once_falls_back(tmp_path: Path) -> None:
    broken = tmp_path / "brokensh"
    broken.write_text("#!/bin/sh\necho 'cannot start' >&2\nexit 2\n")
    broken.chmod(0o755)
    exits: list[TerminalExited] = []
    async with await Terminal.start(
        shell=str(broken),
        cwd=str(tmp_path),
        env={"HOME": str(tmp_path)},
        state_dir=tmp_path / "state",
        on_exit=exits.append,
        crash_policy=CrashLoopPolicy(fallback_shells=("zsh", "bash")),
    ) as term:
        assert term.mode is Mode.ALTERNATIVE_SHELL
        assert term.shell.endswith("zsh")
        result = await term.execute("echo up; (exit 4)", timeout=10)
        assert (result.output, result.exit_code) == ("up\n", 4)
        assert [r.action for r in result.recoveries] == ["alternative_shell"]
        assert "exits at once (status 2)" in result.recoveries[0].reason
        assert exits == []  # start-up failures are not deaths of a running terminal
        assert term.deaths == []


@pytest.mark.parametrize(
    ("user_shell", "expected"), [("/usr/bin/zsh", "zsh"), ("/no/such/shell", "sh")]
)
async def test_missing_shell_without_fallbacks_uses_shell_then_bin_sh(
    tmp_path: Path, user_shell: str, expected: str
) -> None:
    """Spec 2.2: no configured fallback runs, so the user's $SHELL, else /bin/sh."""
    base = {**os.environ, "SHELL": user_shell}
    async with await Terminal.start(
        shell="no-such-shell-here",
        cwd=str(tmp_path),
        env={"HOME": str(tmp_path)},
        state_dir=tmp_path,
        base_env=base,
        crash_policy=CrashLoopPolicy(fallback_shells=("no-such-fallback",)),
    ) as term:
        assert term.mode is Mode.ALTERNATIVE_SHELL
        assert os.path.basename(term.shell) == expected
        result = await term.execute("(exit 2)", timeout=10)
        assert result.exit_code == 2
        assert result.recoveries[0].action == "alternative_shell"


@pytest.mark.shells
@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
async def test_a_command_the_dying_shell_never_started_runs_on_the_new_one(
    tmp_path: Path, shell: str
) -> None:
    """The shell is stopped (so it provably reads nothing), handed a command, then killed:
    the command is not lost as "interrupted" but runs on the restarted shell."""
    async with await Terminal.start(
        shell=shell, cwd=str(tmp_path), env={"HOME": str(tmp_path)}, state_dir=tmp_path / "s"
    ) as term:
        export = "set -gx VAR kept" if shell == "fish" else "export VAR=kept"
        await term.execute(f"cd /usr; {export}", timeout=10)
        assert term.pid is not None
        os.kill(term.pid, signal.SIGSTOP)
        running = asyncio.ensure_future(term.execute('echo "ran $VAR"; pwd', timeout=20))
        for _ in range(1000):
            if term.current is not None:
                break
            await asyncio.sleep(0.005)
        term.kill()
        result = await asyncio.wait_for(running, 20)
        assert (result.status, result.exit_code) == (Status.COMPLETED, 0)
        assert (result.output, result.cwd) == ("ran kept\n/usr\n", "/usr")
        assert any("before the command started" in r.reason for r in result.recoveries)
        assert (await term.execute("echo next", timeout=10)).output == "next\n"


async def test_a_command_that_cannot_be_written_is_refused_and_frees_the_terminal(
    tmp_path: Path,
) -> None:
    async with await Terminal.start(
        shell="bash", cwd=str(tmp_path), env={"HOME": str(tmp_path)}, state_dir=tmp_path
    ) as term:
        cmd_file = term._cmd_file
        assert cmd_file is not None
        fd, cmd_file.fd = cmd_file.fd, -1  # the command file's descriptor is gone
        with pytest.raises(ShellCrashed, match="could not write to the shell"):
            await term.execute("echo lost", timeout=10)
        assert not term.busy
        cmd_file.fd = fd
        result = await term.execute("echo next", timeout=10)
        assert (result.output, result.exit_code) == ("next\n", 0)
