"""The exported environment a restarted shell gets back, saved only after commands that may
have changed it (bash, zsh: real shells, real kills).

The hooks save the environment after a command only when its text could change it (an
assignment, `export`, `source`, `cd`, a loop variable, ...) or names one of the user's
functions or aliases, which may do anything. Each way of changing an exported variable is
followed by the kill of the shell, so a change whose save was skipped shows as a variable
missing from the restarted shell.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from lapce_bridge.terminal.recovery import CrashLoopPolicy
from lapce_bridge.terminal.result import Status
from lapce_bridge.terminal.terminal import Terminal
from tests.integration.test_terminal_recovery import _restarted, each_export_survives_a_kill

# The user's rc: a function and an alias that export (as `nvm use` or `pyenv shell` do).
RC = """
usenode() { export BY_FUNCTION=function; }
alias activate='export BY_ALIAS=alias'
"""

# (command, what `echo "$NAME"` prints in the restarted shell, NAME)
CHANGES = [
    ("export PLAIN=one", "one", "PLAIN"),
    ("PLAIN=two", "two", "PLAIN"),  # an exported variable assigned without `export`
    ("usenode", "function", "BY_FUNCTION"),
    ("activate", "alias", "BY_ALIAS"),
    (". ./vars.sh", "sourced", "BY_SOURCE"),
    ("for PLAIN in loop; do :; done", "loop", "PLAIN"),
    ("unset PLAIN", "", "PLAIN"),
    ("declare -x DECLARED=declared", "declared", "DECLARED"),
]


async def _start(shell: str, home: Path, deaths: int = 3) -> Terminal:
    """A terminal with `home` as HOME and cwd, surviving `deaths` kills."""
    return await Terminal.start(
        shell=shell,
        cwd=str(home),
        env={"HOME": str(home)},
        state_dir=home / "state",
        crash_policy=CrashLoopPolicy(max_deaths=deaths),
    )


@pytest.mark.parametrize("shell", ["bash", "zsh"])
async def test_every_way_of_exporting_survives_a_kill(shell: str, tmp_path: Path) -> None:
    (tmp_path / (".bashrc" if shell == "bash" else ".zshrc")).write_text(RC)
    (tmp_path / "vars.sh").write_text("export BY_SOURCE=sourced\n")
    async with await _start(shell, tmp_path, deaths=len(CHANGES) + 1) as term:
        await each_export_survives_a_kill(term, CHANGES, lambda name: f'echo "${{{name}-}}"')


@pytest.mark.parametrize("shell", ["bash", "zsh"])
async def test_a_command_that_cannot_export_leaves_the_saved_environment_alone(
    shell: str, tmp_path: Path
) -> None:
    async with await _start(shell, tmp_path) as term:
        saved = term.dir / "env"
        await term.execute("echo warm", timeout=10)
        saved.write_text("# untouched\n")
        for command, output in (
            ("echo test", "test\n"),
            ("echo \"${HOME}\" >/dev/null && echo 'a;b'", "a;b\n"),
            ("git --version >/dev/null || true", ""),
            ("grep -c x missing.txt", "grep: missing.txt: No such file or directory\n"),
        ):
            result = await term.execute(command, timeout=10)
            assert result.output == output, command
            assert saved.read_text() == "# untouched\n", command
        await term.execute("export NOW=1", timeout=10)
        assert "NOW" in saved.read_text()


# Functions and aliases that commands define (not the rc): the hooks list the names again
# after a command that may define some, so a later command naming one is watched as well.
# (command that defines, command that uses it, the value, NAME)
DEFINED = [
    ("later() { export LATER=function; }", "later", "function", "LATER"),
    ("alias aliased='export ALIASED=alias'", "aliased", "alias", "ALIASED"),
    (". ./defs.sh", "fromfile", "sourced", "FROMFILE"),  # nothing in the text but `.`
]


@pytest.mark.parametrize("shell", ["bash", "zsh"])
async def test_functions_and_aliases_defined_by_commands_are_watched_too(
    shell: str, tmp_path: Path
) -> None:
    (tmp_path / "defs.sh").write_text("fromfile() { export FROMFILE=sourced; }\n")
    async with await _start(shell, tmp_path, deaths=len(DEFINED) + 1) as term:
        for kills, (define, use, expected, name) in enumerate(DEFINED, start=1):
            assert (await term.execute(define, timeout=10)).status is Status.COMPLETED
            assert (await term.execute("echo test", timeout=10)).output == "test\n"
            assert (await term.execute(use, timeout=10)).status is Status.COMPLETED, use
            assert (await term.execute("echo test", timeout=10)).output == "test\n"
            term.kill()
            await _restarted(term, kills)
            after = await term.execute(f'echo "${{{name}-}}"', timeout=10)
            assert after.output == f"{expected}\n", define


# A function of the user's that adds a prompt hook exporting a variable (a version manager's
# `use` command, say): from then on the environment is saved after every command.
ADD_HOOK = {
    "bash": "addhook() { PROMPT_COMMAND+=$'\\n''export HOOKED=$((HOOKED+1))'; }\n",
    "zsh": "addhook() { precmd() { export HOOKED=$((HOOKED+1)); }; }\n",
}


@pytest.mark.parametrize("shell", ["bash", "zsh"])
async def test_a_hook_the_user_adds_later_has_the_environment_saved_after_every_command(
    shell: str, tmp_path: Path
) -> None:
    (tmp_path / (".bashrc" if shell == "bash" else ".zshrc")).write_text(ADD_HOOK[shell])
    async with await _start(shell, tmp_path) as term:
        assert (await term.execute("addhook", timeout=10)).status is Status.COMPLETED
        saved = []
        for _ in range(3):
            assert (await term.execute("echo test", timeout=10)).output == "test\n"
            env = (term.dir / "env").read_text()
            found = re.search(r"HOOKED=\"?([0-9]+)", env)
            assert found is not None, env
            saved.append(int(found.group(1)))
        assert saved == sorted(set(saved))  # a newer value after each command
