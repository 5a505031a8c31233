"""The bridge's test of whether a command may change the exported environment (bash's hooks
save it only then), and the user's names it reads from the shell's list."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from lapce_bridge.terminal.exports import ShellWords, may_export

NAMES = frozenset(("usenode", "activate"))


@pytest.mark.parametrize(
    ("text", "digit"),
    [
        ("echo test\n", "0"),
        ("git status --short\n", "0"),
        ("grep -c x missing.txt || true\n", "0"),
        ("echo \"a;b\" 'c' >/dev/null\n", "0"),
        # anything that may assign or define: the names are listed again after it
        ("FOO=1 make\n", "2"),
        ("f() { :; }\n", "2"),
        ("echo $((1 + 2))\n", "2"),
        ("[ -f x ] && cat x\n", "2"),
        ("echo `pwd`\n", "2"),
        ("ls *.py\n", "2"),
        ("echo a?\n", "2"),
        ("source ./env.sh\n", "2"),
        (". ./env.sh\n", "2"),
        ('eval "$X"\n', "2"),
        ("function g { :; }\n", "2"),
        # a builtin that sets, unsets or reads variables, a loop, `cd`
        ("export PATH\n", "1"),
        ("unset X\n", "1"),
        ("cd /tmp\n", "1"),
        ("read -r line </dev/null\n", "1"),
        ("for x in a b; do echo $x; done\n", "1"),
        ("echo ok;printf x\n", "1"),  # split at `;` as the shell splits
        ("true&&declare -x A\n", "1"),
        # the user's functions and aliases, wherever they stand
        ("usenode\n", "1"),
        ("echo x | activate\n", "1"),
        ("echo usenodes\n", "0"),
        ("echo\n\nusenode\n", "1"),  # a later line of a multi-line command
    ],
)
def test_the_digit_follows_the_text(text: str, digit: str) -> None:
    assert may_export("bash", text, NAMES) == digit


def test_without_the_users_names_every_command_may_export() -> None:
    assert may_export("bash", "echo test\n", None) == "1"
    assert may_export("bash", "echo test\n", frozenset()) == "0"
    assert may_export("bash", "x=1\n", None) == "2"


@pytest.mark.parametrize(
    ("text", "digit"),
    [
        ("echo test\n", "0"),
        ("print -r x\n", "1"),
        ("integer n\n", "1"),
        ("foreach x (a b) echo $x; end\n", "2"),
        ("vared x\n", "1"),
        ("autoload -Uz compinit\n", "2"),
        ("functions -c usenode other\n", "2"),
        ("unalias activate\n", "2"),
        ("mapfile\n", "0"),  # a bash builtin, not zsh's
        ("usenode\n", "1"),
    ],
)
def test_zsh_has_words_of_its_own(text: str, digit: str) -> None:
    assert may_export("zsh", text, NAMES) == digit


def test_the_shells_list_is_read_when_whole_and_again_when_it_changes(tmp_path: Path) -> None:
    path = tmp_path / "words"
    words = ShellWords(str(path))
    assert words.names() is None  # not listed yet
    path.write_text("declare -f usenode\ndeclare -fx shared\ndeclare -f __lb_new\n")
    assert words.names() is None  # no `end`: being written, or cut short
    path.write_text(
        "declare -f usenode\ndeclare -fx shared\ndeclare -f __lb_new\nalias ll\nalias \nend\n"
    )
    assert words.names() == frozenset({"usenode", "shared", "ll"})  # not ours, not an empty name
    # The same size, another timestamp: read again.
    listing = "declare -f {}\nalias ll\nend\n"
    path.write_text(listing.format("usenodf"))
    os.utime(path, ns=(10**18, 10**18))
    assert words.names() == frozenset({"usenodf", "ll"})
    # Rewritten with the same size and timestamp (a coarse clock): an old list is trusted
    # (nothing rewrote it since it was read) ...
    path.write_text(listing.format("usenodg"))
    os.utime(path, ns=(10**18, 10**18))
    assert words.names() == frozenset({"usenodf", "ll"})
    # ... a recent one is read again each time.
    now = time.time_ns()
    os.utime(path, ns=(now, now))
    assert words.names() == frozenset({"usenodg", "ll"})
    path.write_text(listing.format("usenodh"))
    os.utime(path, ns=(now, now))
    assert words.names() == frozenset({"usenodh", "ll"})
    path.unlink()
    assert words.names() is None
