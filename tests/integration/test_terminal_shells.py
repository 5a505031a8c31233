"""The behaviours bash has, in zsh and fish too (our own integration scripts for each)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from lapce_bridge.terminal.result import Mode, Status
from lapce_bridge.terminal.terminal import Terminal

pytestmark = [pytest.mark.shells, pytest.mark.asyncio(loop_scope="module")]

SHELLS = ["bash", "zsh", "fish"]

# The same ideas in each shell's syntax.
SET_VAR = {
    "bash": "export LB_V='x y'; lbf() { echo \"f:$1\"; }",
    "zsh": "export LB_V='x y'; lbf() { echo \"f:$1\"; }",
    "fish": "set -gx LB_V 'x y'; function lbf; echo \"f:$argv[1]\"; end",
}
MULTILINE = {
    "bash": "for i in 1 2; do\n  echo \"n$i\"\ndone\ncat <<'E'\nq'\"$x\nE",
    "zsh": "for i in 1 2; do\n  echo \"n$i\"\ndone\ncat <<'E'\nq'\"$x\nE",
    "fish": "for i in 1 2\n  echo \"n$i\"\nend\nprintf '%s\\n' 'q\\'\"$x'",
}
READ = {
    "bash": "printf 'v? '; read v; echo \"got $v\"",
    "zsh": "printf 'v? '; read v; echo \"got $v\"",
    "fish": "read -P 'v? ' v; echo \"got $v\"",
}


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("home")
    # The user's own configuration must keep working under our hooks.
    (home / ".zshrc").write_text(
        "PS1='%F{green}%n%f %# '\nprecmd() { LB_PRECMD=$((LB_PRECMD+1)) }\nalias zal='echo zal'\n"
    )
    (home / ".zshenv").write_text("export LB_ZSHENV=1\n")
    fish_conf = home / ".config" / "fish"
    fish_conf.mkdir(parents=True)
    (fish_conf / "config.fish").write_text(
        "set -gx LB_FISHCONF 1\nfunction fish_prompt; printf '> '; end\n"
    )
    return home


@pytest_asyncio.fixture(scope="module", loop_scope="module", params=SHELLS)
async def term(
    request: pytest.FixtureRequest, home: Path, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Terminal]:
    shell: str = request.param
    async with await Terminal.start(
        shell=shell,
        cwd=str(home),
        env={"HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config")},
        state_dir=tmp_path_factory.mktemp("state"),
    ) as t:
        yield t


def kind(term: Terminal) -> str:
    return term.kind


async def test_integration_is_active(term: Terminal) -> None:
    assert term.mode is Mode.SHELL_INTEGRATION
    assert term.kind in SHELLS


@pytest.mark.parametrize("code", [0, 1, 2, 127, 255])
async def test_exit_codes(term: Terminal, code: int) -> None:
    command = f"sh -c 'exit {code}'"
    assert (await term.execute(command, timeout=10)).exit_code == code


async def test_output_and_empty_output(term: Terminal) -> None:
    assert (await term.execute("echo test", timeout=10)).output == "test\n"
    empty = await term.execute("true", timeout=10)
    assert (empty.output, empty.exit_code) == ("", 0)
    assert (await term.execute("printf 'no newline'", timeout=10)).output == "no newline"


async def test_cd_persists(term: Terminal, tmp_path: Path) -> None:
    target = tmp_path / "a dir"
    target.mkdir()
    result = await term.execute(f"cd '{target}'", timeout=10)
    assert result.cwd == str(target)
    assert (await term.execute("pwd", timeout=10)).output == f"{target}\n"


async def test_variables_and_functions_persist(term: Terminal) -> None:
    await term.execute(SET_VAR[kind(term)], timeout=10)
    result = await term.execute('echo "$LB_V"; lbf z', timeout=10)
    assert result.output == "x y\nf:z\n"


async def test_multiline_and_quotes(term: Terminal) -> None:
    result = await term.execute(MULTILINE[kind(term)], timeout=10)
    assert result.output == "n1\nn2\nq'\"$x\n"


async def test_python_with_newlines(term: Terminal) -> None:
    result = await term.execute("python3 -c 'a = 6\nprint(a * 7)'", timeout=20)
    assert (result.output, result.exit_code) == ("42\n", 0)


async def test_unicode(term: Terminal) -> None:
    result = await term.execute("echo 'ünï 日本 🎉'", timeout=10)
    assert result.output == "ünï 日本 🎉\n"


async def test_user_configuration_still_applies(term: Terminal) -> None:
    if term.kind == "zsh":
        result = await term.execute('echo "$LB_ZSHENV ${LB_PRECMD:-0}"; zal', timeout=10)
        env_flag, precmds = result.output.splitlines()[0].split()
        assert env_flag == "1"
        assert int(precmds) >= 1
        assert result.output.splitlines()[1] == "zal"
        # Theirs, between our prompt-start and prompt-end marks (stripped from the output).
        ps1 = (await term.execute("print -r -- $PS1", timeout=10)).output
        assert ps1.startswith("%{%}%F{green}")
    elif term.kind == "fish":
        assert (await term.execute("echo $LB_FISHCONF", timeout=10)).output == "1\n"
    else:
        assert (await term.execute("echo $PAGER", timeout=10)).output == "cat\n"


async def test_timeout_then_next_command(term: Terminal) -> None:
    result = await term.execute("sleep 30", timeout=0.5)
    assert result.status is Status.TIMED_OUT
    assert (await term.execute("echo next", timeout=10)).output == "next\n"


async def test_waiting_for_input(term: Terminal) -> None:
    result = await term.execute(READ[kind(term)], idle_timeout=0.5)
    assert result.status is Status.WAITING_FOR_INPUT
    assert result.output.endswith("v? ")
    term.send_text("abc\n")
    final = await term.wait(result.execution_id, within=10)
    assert final.output.endswith("got abc\n")
    assert final.exit_code == 0


async def test_killed_shell_recovers_cwd_and_env(term: Terminal, tmp_path: Path) -> None:
    place = tmp_path / "place"
    place.mkdir()
    await term.execute(f"cd {place}", timeout=10)
    await term.execute(SET_VAR[kind(term)], timeout=10)
    restarts = term.restarts
    term.kill()
    for _ in range(500):
        if term.restarts > restarts and not term.busy:
            break
        await asyncio.sleep(0.01)
    result = await term.execute('pwd; echo "$LB_V"', timeout=10)
    assert result.output == f"{place}\nx y\n"
    assert [r.action for r in result.recoveries] == ["recreate_terminal"]


async def _fish_prompt_source(home: Path, state: Path) -> str:
    env = {"HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config")}
    async with Terminal(shell="fish", cwd=str(home), env=env, state_dir=state) as term:
        assert term.mode is Mode.SHELL_INTEGRATION
        result = await term.execute("functions fish_prompt | string collect", timeout=10)
        return result.output


async def test_fish_stock_prompt_is_replaced_but_a_user_prompt_is_kept(tmp_path: Path) -> None:
    stock_home = tmp_path / "stock"
    (stock_home / ".config" / "fish").mkdir(parents=True)
    stock = await _fish_prompt_source(stock_home, tmp_path / "s1")
    assert "fish_vcs_prompt" not in stock
    assert "printf '\\e]633;A\\a$ '" in stock  # ours: a prompt-start mark and "$ "

    user_home = tmp_path / "user"
    (user_home / ".config" / "fish").mkdir(parents=True)
    (user_home / ".config" / "fish" / "config.fish").write_text(
        'function fish_prompt\n    printf "mine> "\nend\n'
    )
    mine = await _fish_prompt_source(user_home, tmp_path / "s2")
    assert 'printf "mine> "' in mine
