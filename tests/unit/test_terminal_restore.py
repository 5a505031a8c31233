"""The exported environment a dead shell saved, read back in another kind of shell's syntax."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from lapce_bridge.private import private_dir
from lapce_bridge.terminal.files import write_private
from lapce_bridge.terminal.startup import export_line, restore_file, saved_env

TRICKY = {"PLAIN": "x", "SPACED": "a b", "QUOTE": 'it\'s "q" $HOME \\ `x`', "MULTI": "1\n2"}
# fish's `set -xL` does not quote a value holding a quote or a newline: plain values only.
PLAIN = {"PLAIN": "x", "SPACED": "a b"}


def _saved_by(shell: str, values: dict[str, str]) -> str:
    """What our hooks write: bash `declare -x`, zsh `export -p`, fish `set -xL`."""
    script = {"bash": "declare -x", "zsh": "export -p", "fish": "set -xL"}[shell]
    env = {"PATH": "/usr/bin:/bin", **values}
    argv = {"bash": ["bash", "--norc", "-c"], "zsh": ["zsh", "-f", "-c"], "fish": ["fish", "-c"]}
    return subprocess.run(
        [*argv[shell], script], env=env, capture_output=True, text=True, check=True
    ).stdout


@pytest.mark.shells
@pytest.mark.parametrize("source", ["bash", "zsh", "fish"])
@pytest.mark.parametrize("target", ["bash", "zsh", "fish", "posix"])
def test_exports_survive_a_change_of_shell_kind(source: str, target: str, tmp_path: Path) -> None:
    folder = private_dir(tmp_path / "t")
    saved = folder / ("env.fish" if source == "fish" else "env")
    values = PLAIN if source == "fish" else TRICKY
    write_private(saved, _saved_by(source, values).encode())
    restore = restore_file(folder, source, target)
    assert restore is not None
    shell = {"bash": ["bash", "--norc"], "zsh": ["zsh", "-f"], "fish": ["fish"], "posix": ["sh"]}
    source_cmd = "source" if target == "fish" else "."
    printer = "; ".join(f"printf '%s|' \"${name}\"" for name in values)
    out = subprocess.run(
        [*shell[target], "-c", f"{source_cmd} {restore}; {printer}"],
        env={"PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out == "".join(v + "|" for v in values.values())


def test_saved_env_reads_each_syntax_and_skips_what_does_not_parse() -> None:
    assert saved_env("bash", 'declare -x A="1 2"\ndeclare -x UNSET\n') == {"A": "1 2"}
    assert saved_env("zsh", "export A='it'\\''s'\nexport B=plain\n") == {"A": "it's", "B": "plain"}
    assert saved_env("fish", "PATH /a /b\nX 'y z'\nbad 'unclosed\n") == {
        "PATH": "/a:/b",
        "X": "y z",
    }
    assert export_line("fish", "A", "it's \\") == "set -gx A 'it\\'s \\\\'\n"
    assert export_line("bash", "A", "it's") == "export A='it'\\''s'\n"
