"""Integration removed or replaced mid-session, five ways per shell: the terminal recovers in
place (same shell process, cwd and env kept), answers the breaking command with its exit
code, lists the step in `recoveries`, and answers the next three commands correctly."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from lapce_bridge.terminal.result import Mode, Status
from lapce_bridge.terminal.terminal import Terminal

pytestmark = [pytest.mark.shells, pytest.mark.asyncio(loop_scope="function")]

BREAKS = {
    "bash": [
        "PROMPT_COMMAND=true",
        "exec bash --norc",
        "exec zsh -f",
        "trap - DEBUG",
        "unset PROMPT_COMMAND",
    ],
    "zsh": [
        "precmd_functions=()",
        "exec zsh -f",
        "exec bash --norc",
        "unfunction __lb_precmd",
        "preexec_functions=(); precmd_functions=()",
    ],
    "fish": [
        "functions -e __lb_postexec",
        "exec bash --norc",
        "exec zsh -f",
        "functions -e __lb_preexec",
        "exec fish --no-config",
        # All three, as the chaos suite does: nothing re-installs them; the prompt mark of our
        # fish_prompt, with fish reading at its line editor, says the command is over.
        "functions -e __lb_preexec __lb_postexec __lb_prompt",
    ],
}
CASES = [(shell, i) for shell, breaks in BREAKS.items() for i in range(len(breaks))]


@pytest_asyncio.fixture
async def home(tmp_path: Path) -> AsyncIterator[Path]:
    home = tmp_path / "home"
    (home / "sub").mkdir(parents=True)
    yield home


@pytest.mark.parametrize(("shell", "index"), CASES, ids=[f"{s}-{i}" for s, i in CASES])
async def test_integration_broken_mid_session_recovers_in_place(
    shell: str, index: int, home: Path, tmp_path: Path
) -> None:
    breaker = BREAKS[shell][index]
    async with await Terminal.start(
        shell=shell, cwd=str(home), env={"HOME": str(home)}, state_dir=tmp_path / "state"
    ) as term:
        assert term.mode is Mode.SHELL_INTEGRATION
        export = "set -gx LB_KEEP kept" if shell == "fish" else "export LB_KEEP=kept"
        await term.execute(f"{export}; cd sub", timeout=10, idle_timeout=5)
        pid = term.pid
        broken = await term.execute(breaker, timeout=20, idle_timeout=5)
        assert broken.status is Status.COMPLETED
        assert broken.exit_code in (0, None) if "exec" in breaker else broken.exit_code == 0
        assert term.pid == pid  # recovered in place: the same process
        assert not term.busy
        assert broken.output == ""  # not the prompt the shell drew after it
        after = [
            await term.execute(command, timeout=20, idle_timeout=5)
            for command in ('echo "v=$LB_KEEP"', "false", "pwd")
        ]
        sub = str(home / "sub")
        assert [(r.output, r.exit_code, r.cwd) for r in after] == [
            ("v=kept\n", 0, sub),
            ("", 1, sub),
            (sub + "\n", 0, sub),
        ]
        # A syntax error names the shell, as typed, not the command file it was sourced from.
        bad = await term.execute("echo )", timeout=20, idle_timeout=5)
        assert bad.exit_code != 0 or term.kind == "fish"  # (fish keeps $status, as typed)
        assert bad.output.startswith(f"{term.kind}: "), bad.output
        assert term.cmd_path not in bad.output
        steps = [r.action for r in broken.recoveries] + [
            r.action for res in after for r in res.recoveries
        ]
        if steps:  # hooks that still answer (trap - DEBUG) or re-install need no recovery
            assert steps == ["no_shell_integration"]
            assert term.mode.value == "no_shell_integration"
            assert term.last_integration_recovery_ms is not None
            print(f"\nRECOVERY {shell} {breaker!r}: {term.last_integration_recovery_ms:.0f} ms")


async def test_a_quiet_process_that_reads_nothing_is_running(tmp_path: Path) -> None:
    sleeper = (
        "python3 -c 'import signal,time; signal.signal(signal.SIGINT, signal.SIG_IGN); "
        'print("up", flush=True); time.sleep(3)\''
    )
    async with await Terminal.start(
        shell="bash", cwd=str(tmp_path), env={"HOME": str(tmp_path)}, state_dir=tmp_path / "s"
    ) as term:
        quiet = await term.execute(sleeper, idle_timeout=0.5, timeout=20)
        assert (quiet.status, quiet.output) == (Status.RUNNING, "up\n")
        asking = await term.wait(quiet.execution_id, within=20)
        assert asking.status is Status.COMPLETED
        reader = await term.execute("read -p 'name? ' x; echo \"hi $x\"", idle_timeout=0.5)
        assert (reader.status, reader.output) == (Status.WAITING_FOR_INPUT, "name? ")
        term.send_text("bob\n")
        assert (await term.wait(reader.execution_id, within=20)).output == "name? bob\nhi bob\n"


@pytest.mark.parametrize("shell", ["bash", "zsh"])
async def test_a_shell_whose_output_goes_nowhere_is_replaced(
    shell: str, home: Path, tmp_path: Path
) -> None:
    """`exec >/dev/null 2>&1`: at its prompt, reading, and nothing it prints arrives, so no
    end mark or status answer can come. Without an idle timeout or a hard one, the terminal
    is not left busy: the shell is replaced (cwd and exported env restored), the command is
    answered, and never run again."""
    async with await Terminal.start(
        shell=shell, cwd=str(home), env={"HOME": str(home)}, state_dir=tmp_path / "state"
    ) as term:
        await term.execute("export LB_KEEP=kept; cd sub", timeout=10, idle_timeout=5)
        pid = term.pid
        deaf = await term.execute("exec >/dev/null 2>&1")
        assert deaf.status is Status.INTERRUPTED
        assert [r.action for r in deaf.recoveries] == ["no_shell_integration", "recreate_terminal"]
        assert "redirected away" in deaf.recoveries[0].reason
        assert term.pid != pid
        after = await term.execute('echo "v=$LB_KEEP"; echo err >&2; pwd', timeout=20)
        sub = str(home / "sub")
        assert (after.output, after.exit_code, after.cwd) == (f"v=kept\nerr\n{sub}\n", 0, sub)
