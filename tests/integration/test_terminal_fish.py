"""fish terminals: the exported environment saved only when it changed, a user's own title
kept out of command output, and no man page parser started for a fresh HOME (real fish).

The hooks save the environment after a command only when an exported variable changed (our
`--on-variable` handler watches every name exported at the last save) or a name was exported
since (their count). Each way of changing an exported variable is followed by the kill of the
shell, so a change whose save was skipped shows as a variable missing from the restarted
shell.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lapce_bridge.terminal.modes import resolve_shell
from lapce_bridge.terminal.recovery import CrashLoopPolicy
from lapce_bridge.terminal.terminal import Terminal
from tests.integration.test_terminal_recovery import each_export_survives_a_kill

pytestmark = pytest.mark.skipif(
    resolve_shell("fish", os.environ.get("PATH")) is None, reason="fish is not installed"
)

# The user's config: a function that exports (as `nvm use` or a venv's activate does).
CONFIG = "function usenode; set -gx BY_FUNCTION function; end\n"

# (command, what `echo "$NAME"` prints in the restarted shell, NAME)
CHANGES = [
    ("set -gx PLAIN one", "one", "PLAIN"),  # a name exported for the first time
    ("set PLAIN two", "two", "PLAIN"),  # an exported variable assigned without -x
    ("usenode", "function", "BY_FUNCTION"),
    ("source ./vars.fish", "sourced", "BY_SOURCE"),
    ("export EXPORTED=exported", "exported", "EXPORTED"),
    ("set -e PLAIN", "", "PLAIN"),
    ("set -gx LIST a b; set -gu LIST; set -gx LATER later", "later", "LATER"),
]


def _home(tmp_path: Path, config: str = "") -> dict[str, str]:
    (tmp_path / ".config" / "fish").mkdir(parents=True)
    (tmp_path / ".config" / "fish" / "config.fish").write_text(config)
    return {"HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path / ".config")}


async def test_every_way_of_exporting_survives_a_kill(tmp_path: Path) -> None:
    (tmp_path / "vars.fish").write_text("set -gx BY_SOURCE sourced\n")
    async with await Terminal.start(
        shell="fish",
        cwd=str(tmp_path),
        env=_home(tmp_path, CONFIG),
        state_dir=tmp_path / "state",
        crash_policy=CrashLoopPolicy(max_deaths=len(CHANGES) + 1),
    ) as term:
        await each_export_survives_a_kill(term, CHANGES, lambda name: f'echo "${name}"')


async def test_a_command_that_cannot_export_leaves_the_saved_environment_alone(
    tmp_path: Path,
) -> None:
    async with await Terminal.start(
        shell="fish", cwd=str(tmp_path), env=_home(tmp_path), state_dir=tmp_path / "state"
    ) as term:
        saved = term.dir / "env.fish"
        await term.execute("echo warm", timeout=10)
        assert "HOME" in saved.read_text()
        saved.write_text("# untouched\n")
        for command, output in (
            ("echo test", "test\n"),
            ("set -l local 1; set -g plain 2; echo 'a;b'", "a;b\n"),
            ("git --version >/dev/null; or true", ""),
            ("for i in 1 2\necho $i\nend", "1\n2\n"),
        ):
            result = await term.execute(command, timeout=10)
            assert result.output == output, command
            assert saved.read_text() == "# untouched\n", command
        await term.execute("set -gx NOW 1", timeout=10)
        assert "NOW" in saved.read_text()


async def test_a_users_own_title_leaves_no_carriage_return_in_the_output(
    tmp_path: Path,
) -> None:
    # fish prints a title, then a carriage return, after each line's preexec event.
    config = "function fish_title; echo mine $argv; end\n"
    async with await Terminal.start(
        shell="fish", cwd=str(tmp_path), env=_home(tmp_path, config), state_dir=tmp_path / "state"
    ) as term:
        for command, output in (
            ("echo test", "test\n"),
            ("echo a\necho b\necho c", "a\nb\nc\n"),
            ("for i in 1 2\necho $i\nend\necho done", "1\n2\ndone\n"),
            ("printf 'x\\n'; echo y", "x\ny\n"),
        ):
            result = await term.execute(command, timeout=10)
            assert result.output == output, command
        # The user's title is still theirs (the bridge only holds it back while it runs a
        # command).
        title = await term.execute("__lb_title x", timeout=10)
        assert title.output == "mine x\n"


def _children(pid: int) -> list[str]:
    """The command lines of the processes whose parent is `pid`."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            if ppid != pid:
                continue
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                found.append(f.read().replace(b"\0", b" ").decode(errors="replace"))
        except (OSError, ValueError, IndexError):
            continue
    return found


async def test_a_fresh_home_starts_no_man_page_parser(tmp_path: Path) -> None:
    env = _home(tmp_path)
    async with await Terminal.start(
        shell="fish", cwd=str(tmp_path), env=env, state_dir=tmp_path / "state"
    ) as term:
        # fish's first prompt has run its interactive set-up by now.
        result = await term.execute("echo $__fish_user_data_dir", timeout=10)
        assert result.output == f"{tmp_path}/.local/share/fish\n"
        assert term.pid is not None
        assert not [c for c in _children(term.pid) if "manpage" in c]
        # The user's folder is left as it was: their own fish makes the completions.
        assert not (tmp_path / ".local" / "share" / "fish" / "generated_completions").exists()


async def test_bracketed_paste_is_left_off(tmp_path: Path) -> None:
    # fish turns it on at each prompt and off before each command; no terminal of ours pastes.
    async with await Terminal.start(
        shell="fish", cwd=str(tmp_path), env=_home(tmp_path), state_dir=tmp_path / "state"
    ) as term:
        result = await term.execute(
            "functions -q __fish_enable_bracketed_paste; echo $status", timeout=10, ansi="keep"
        )
        assert result.output.endswith("1\n")
        assert "\x1b[?2004" not in result.output


@pytest.mark.parametrize(
    ("config", "mode"), [("", "default"), ("fish_vi_key_bindings\n", "insert")]
)
async def test_the_nonce_is_typed_in_a_mode_of_ours_and_the_users_mode_is_back(
    tmp_path: Path, config: str, mode: str
) -> None:
    # The nonce is 22 keys in a bind mode with two bindings of ours (fish matched each of 32 against
    # every binding of the user's mode); each command, one line or several, ends in theirs.
    async with await Terminal.start(
        shell="fish", cwd=str(tmp_path), env=_home(tmp_path, config), state_dir=tmp_path / "s"
    ) as term:
        for command, output in (
            ("bind --user -M __lb_nonce_default | count", "2\n"),  # (+ fish's 4 presets)
            ("echo $fish_bind_mode", f"{mode}\n"),
            ("echo a\nfor i in 1 2\necho $i\nend", "a\n1\n2\n"),
            ("echo $fish_bind_mode", f"{mode}\n"),
        ):
            result = await term.execute(command, timeout=10)
            assert (result.output, result.exit_code) == (output, 0)
