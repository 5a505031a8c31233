"""Whether a command may change the shell's exported environment, decided from its text
before it is typed (bash, zsh).

The hooks save the exported environment (what a replacement shell restores after a crash)
after a command only when it may have changed it. That test ran in the shell after every
command (a function call, a glob, an IFS split and two hash lookups a word: about a sixth of
what bash did for `echo test`); here it costs a regex search, a split and a set lookup, and
the shell is told the answer as one digit typed after the nonce (`may_export`):

- "2": the text holds `=` (any assignment), `(` or `[` (arithmetic, a subshell, a function
  definition), a backquote or a glob, or a word `source`, `.`, `eval`, `function` (zsh also
  `autoload`, `functions`, `unfunction`, `unalias`, `unhash`): the command may also define
  functions or aliases, so the shell lists their names again after it;
- "1": a word is a builtin that sets, unsets or reads variables, `cd` (PWD), a loop (its
  variable), or one of the user's functions or aliases (which may do any of these);
- "0": none of those.

A mere mention counts: a snapshot too many costs microseconds, one too few loses a variable
after a crash. The user's names are those the shell last listed in the file `words` of the
terminal's folder (`ShellWords`); while there is no whole list, every command gets "1".
"""

from __future__ import annotations

import os
import re
import time

__all__ = ["WORDS_FILE", "ShellWords", "may_export"]

WORDS_FILE = "words"  # in the terminal's folder, written by the shell's hooks

# Characters that alone make a command suspect (the words are split at the others, so a
# glob character never has to be expanded to know a word).
_SUSPECT = re.compile(r"[=(\[`*?]")
# The shell's word split: at blanks, newlines, operators, braces, `$`, quotes, `\` and `!`.
_SPLIT = re.compile(r"[ \t\n;&|<>{}$\"'\\!]+")
# Builtins that set, unset or read variables, `cd` (PWD), loops (their variable): both shells'
# and each one's own.
_BOTH = frozenset(
    [
        *("export", "declare", "typeset", "readonly", "local", "unset", "set", "cd", "pushd"),
        *("popd", "read", "getopts", "printf", "let", "for", "select", "wait", "exec", "enable"),
    ]
)
_SETS = {
    "bash": _BOTH | {"mapfile", "readarray"},
    "zsh": _BOTH
    | {"integer", "float", "vared", "zparseopts", "print", "foreach", "repeat", "emulate"},
}
# Words after which the command may also have defined functions or aliases.
_BASH_DEFINES = frozenset(("source", ".", "eval", "function"))
_DEFINES = {
    "bash": _BASH_DEFINES,
    "zsh": _BASH_DEFINES | {"autoload", "functions", "unfunction", "unalias", "unhash"},
}
# A list rewritten this recently is read again whatever its stat says (a file system's
# timestamps can be coarser than two rewrites of a list of the same size).
_RECENT_NS = 100_000_000


def may_export(kind: str, text: str, names: frozenset[str] | None) -> str:
    """The digit for `text` (the command file's lines) in this shell (bash, zsh); `names`:
    the user's function and alias names, None when the shell has not listed them."""
    if _SUSPECT.search(text) is not None:
        return "2"
    words = set(_SPLIT.split(text))
    if not words.isdisjoint(_DEFINES[kind]):
        return "2"
    if names is None or not words.isdisjoint(_SETS[kind]) or not words.isdisjoint(names):
        return "1"
    return "0"


class ShellWords:
    """The names of the user's functions and aliases as the shell last listed them
    (`declare -f NAME` lines, as bash's `declare -F` prints them, `alias NAME` lines, then
    `end`), read again when the file changed."""

    __slots__ = ("_key", "_names", "path")

    def __init__(self, path: str) -> None:
        self.path = path
        self._key: tuple[int, int, int] | None = None
        self._names: frozenset[str] | None = None

    def names(self) -> frozenset[str] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            self._key = self._names = None
            return None
        key = (st.st_ino, st.st_size, st.st_mtime_ns)
        if key != self._key or time.time_ns() - st.st_mtime_ns < _RECENT_NS:
            self._key = key
            self._names = self._read()
        return self._names

    def _read(self) -> frozenset[str] | None:
        try:
            with open(self.path, encoding="utf-8", errors="surrogateescape") as f:
                lines = f.read().split("\n")
        except OSError:
            return None
        if "end" not in lines[-3:]:
            return None  # not a whole list (being written, or cut short)
        names = set()
        for line in lines:
            if line.startswith("declare -"):
                name = line.partition(" ")[2].partition(" ")[2]
            elif line.startswith("alias "):
                name = line[6:]
            else:
                continue
            if name and not name.startswith("__lb_"):
                names.add(name)
        return frozenset(names)
