"""How each shell is started, and what is typed into it to run a command, per detection.

Theory of operation: a command is written to a file in the terminal's own private folder
(the command file), so its text never passes through the tty's line discipline, and the
shell gets it one of two ways:

- typed (bash, zsh and fish with integration): the bridge types a key and the command's
  nonce at the prompt. Our key binding (readline `bind -x`, a zle widget, a fish `bind`
  function) takes the nonce (bash and zsh read it after their new-command key, fish from the
  edit line, where it is typed in a bind mode of ours after its new-command key), puts the
  command's first line in the edit line and accepts it, exactly as if it had been typed;
  each time the shell asks for another line (its next prompt, or the continuation prompt
  inside a block, a quote or a heredoc) the next line is loaded the same way. So the shell's
  own reader runs every line: job control and its notices, `$0`, error messages naming the
  shell, a syntax error on one line not dropping the next, `exit` ending the shell. The line
  editor never interprets the text (a tab, a `!`, a 100 KiB line arrive whole); the tty
  carries only the nonce and the keys.
  bash and zsh load a multi-line command's next lines themselves, with no round trip: bash
  types the load and accept keys into its own line editor (a readline macro the new-command
  function binds, one load per group of lines), zsh loads from its `zle-line-init` hook. The
  groups come first in the command file: a line of their sizes (`typed_text`), one line
  each, except a here-document's body with its delimiter line, which the shell reads as
  text and gets in one load. A command the bridge stops (`halt`) has its later lines
  dropped: the bridge makes the file `halt` in the terminal's folder before the first
  SIGINT, and the shells look for it before each load. Their prompt then marks
  `633;P;LbNext` (hidden, nothing to do) and, at a continuation prompt after the last line,
  `633;P;LbCont`: the command is incomplete, and the bridge abandons it as a user would.
  fish, whose editor can be given text only from a key binding, asks for each line that runs
  (`633;P;LbMore`, the bridge types the load key); the lines of a block or a quote it takes
  in one go, as Enter adds each to the buffer.
- sourced (every fallback mode): one short line sources the file (`source file` in fish,
  `. file` in sh); `$?` is the status of its last command.

The nonce reaches the shell only as typed text, never through an environment (which every
child could read in `/proc/<pid>/environ`) or a file, and each command has its own. Our hooks
print it back in `633;E` and `633;D`.

Without integration (sh, dash, unknown shells, or integration that stopped answering) the
line also prints a start mark and an end mark carrying a per-command random token, `$?` and
`$PWD`: `printf` of `\\033` written as text in the line, so the tty's echo of the line holds no
escape and output cannot spoof the end without knowing the token.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from lapce_bridge.terminal.files import private_dir, read_private, write_private
from lapce_bridge.terminal.tracker import EndDetection

SCRIPTS = resources.files("lapce_bridge.terminal") / "scripts"

INTEGRATED = ("bash", "zsh", "fish")
TERMINAL_ENV = {"PAGER": "cat", "GIT_PAGER": "cat", "GIT_EDITOR": ":"}
_CONTROL_VARS = (
    "LAPCE_BRIDGE_NONCE",
    "LAPCE_BRIDGE_DIR",
    "LAPCE_BRIDGE_RC",
    "LAPCE_BRIDGE_RESTORE",
    "LAPCE_BRIDGE_ZDOTDIR",
)


def shell_kind(shell: str) -> str:
    """'bash', 'zsh', 'fish' or 'posix' (sh, dash, ksh and anything unknown)."""
    name = os.path.basename(shell)
    for kind in INTEGRATED:
        if name == kind or name.startswith((kind + "-", kind + "5")):
            return kind
    return "posix"


def resolve_shell(shell: str, path: str | None) -> str | None:
    """The executable for `shell` (a name or a path), or None when it cannot be run."""
    if os.sep in shell:
        return shell if os.access(shell, os.X_OK) and os.path.isfile(shell) else None
    return shutil.which(shell, path=path)


def default_shell(env: dict[str, str] | None = None) -> str:
    shell = (env or os.environ).get("SHELL") or "bash"
    return shell if resolve_shell(shell, os.environ.get("PATH")) else "bash"


@dataclass(frozen=True, slots=True)
class Launch:
    argv: tuple[str, ...]
    env: dict[str, str]
    kind: str
    integration: bool  # the shell was started with our hooks


def _script(name: str) -> str:
    return str(SCRIPTS / name)


def zdotdir(base: Path) -> Path:
    """A ZDOTDIR holding our .zshenv/.zshrc (zsh only looks for those exact names), in the
    verified private folder `base`: zsh sources these files, so nobody else may write them.
    The folder is named after their content, so that two versions of the bridge running at
    once never start each other's zsh with the wrong hooks."""
    files = [
        (dst, (SCRIPTS / src).read_bytes())
        for src, dst in (("lapce-bridge.zshenv", ".zshenv"), ("lapce-bridge.zshrc", ".zshrc"))
    ]
    digest = hashlib.sha256(b"".join(text for _, text in files)).hexdigest()[:12]
    folder = private_dir(base / f"zdotdir-{digest}")
    for dst, text in files:
        target = folder / dst
        if read_private(target) != text:
            write_private(target, text)
    return folder


def build_env(base: dict[str, str] | None, extra: dict[str, str] | None) -> dict[str, str]:
    env = dict(os.environ if base is None else base)
    for var in _CONTROL_VARS:
        env.pop(var, None)
    env.update(TERMINAL_ENV)
    # The terminal the shell runs in is ours, whatever the server itself was started from.
    env["TERM"] = "xterm-256color"
    if extra:
        env.update(extra)
    return env


def launch(
    executable: str,
    *,
    env: dict[str, str],
    term_dir: Path,
    zdotdir_base: Path,
    integration: bool,
    user_rc: bool,
    restore: Path | None,
) -> Launch:
    kind = shell_kind(executable)
    env = dict(env)
    if kind == "posix" and restore is not None:
        env["ENV"] = str(restore)  # what an interactive sh reads first: the restored exports
    if not integration or kind == "posix":
        argv: tuple[str, ...] = (executable, "-i")
        if kind == "bash" and not user_rc:
            argv = (executable, "--norc", "--noprofile", "-i")
        elif kind == "zsh" and not user_rc:
            argv = (executable, "-f", "-i")
        elif kind == "fish" and not user_rc:
            argv = (executable, "--no-config", "-i")
        return Launch(argv, env, kind, False)
    env["LAPCE_BRIDGE_DIR"] = str(term_dir)
    env["LAPCE_BRIDGE_RC"] = "1" if user_rc else "0"
    if restore is not None:
        env["LAPCE_BRIDGE_RESTORE"] = str(restore)
    if kind == "bash":
        if user_rc:
            argv = (executable, "--init-file", _script("lapce-bridge.bash"), "-i")
        else:
            env["ENV"] = _script("lapce-bridge.bash")
            argv = (executable, "--posix", "--noprofile", "-i")
    elif kind == "zsh":
        if "ZDOTDIR" in env:
            env["LAPCE_BRIDGE_ZDOTDIR"] = env["ZDOTDIR"]
        env["ZDOTDIR"] = str(zdotdir(zdotdir_base))
        argv = (executable, "-i")
    else:
        # The data folder our hooks show fish's first prompt (lapce-bridge.fish says why).
        (term_dir / "fish" / "generated_completions").mkdir(parents=True, exist_ok=True)
        init = f"source {_fish_quote(_script('lapce-bridge.fish'))}"
        argv = (executable, "-i", "--init-command", init)
        if not user_rc:
            argv = (executable, "--no-config", "-i", "--init-command", init)
    return Launch(argv, env, kind, True)


def _fish_quote(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _sh_quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


TYPED = ("bash", "zsh", "fish")  # the shells whose integration takes commands line by line
# The keys our bindings answer: sequences no terminal sends. bash binds load and accept apart
# (a `bind -x` function cannot accept the line itself); zsh's widget and fish's function
# accept as they load.
LOAD_KEY = b"\x1b[7799~"
_ACCEPT_KEY = b"\x1b[7798~"
# bash: what accepts a multi-line command's first line and then loads and accepts the rest
# (the macro its new-command function binds to this key for that command).
_CHAIN_KEY = b"\x1b[7796~"
INTERRUPT_KEY = b"\x03"  # Ctrl-C: what a user presses to abandon a continuation prompt
HALT_FILE = "halt"  # in the terminal's folder: the command in flight was stopped


# What fish draws at its prompt that lands in a command's output when the command's end mark
# came from the prompt (our end hook was removed, or fish refused an `exit` with jobs running)
# or never came: the line it draws to end a line the output left open ("⏎" dim, spaces to the
# margin, a carriage return, "⏎ ", a carriage return, a clear to the end of the line), and the
# text of our minimal prompt after its prompt-start mark (with the cursor moves of its redraw).
# Each comes in one write.
_FISH_PROMPT_DRAWING = re.compile(
    rb"\xe2\x8f\x8e(?:\x1b[\[(][0-9;]*[A-Za-z])* *\r\xe2\x8f\x8e \r(?:\x1b\[K)?"
    rb"|(\x1b\]633;A\x07)\$ (?:\x1b\[K)?(?:\r(?:\x1b\[C)*)?"
)


def _without_fish_prompt(data: bytes) -> bytes:
    if b"\xe2\x8f\x8e" not in data and b"633;A" not in data:
        return data
    return _FISH_PROMPT_DRAWING.sub(lambda m: m.group(1) or b"", data)


def prompt_filter(kind: str) -> Callable[[bytes], bytes] | None:
    """What removes, from what this shell writes, the drawing of its prompt that is never a
    command's output (the prompt marks stay; a read holds one write whole unless the buffer
    splits it: rare)."""
    return _without_fish_prompt if kind == "fish" else None


def typed(kind: str, detection: EndDetection) -> bool:
    """Whether commands reach this shell typed line by line (else the command file is sourced)."""
    return detection is EndDetection.INTEGRATION and kind in TYPED


def load_keys(kind: str, before: str = "") -> bytes:
    """What the bridge types to hand the shell the command's next line: `before` ("-" to
    drop the rest of the command, "!" to abandon a continuation prompt in a shell deaf to
    Ctrl-C) and the load key."""
    keys = before.encode() + LOAD_KEY
    return keys + _ACCEPT_KEY if kind == "bash" else keys


# The shells that load a multi-line command's lines themselves, in groups (`typed_text`), and
# whose load key takes "!" (abandon a continuation prompt from inside the shell).
SELF_LOADING = ("bash", "zsh")
# A here-document's operator and delimiter word: `<<EOF`, `<<-EOF`, `<< 'EOF'`, `<<"EOF"`,
# `<<\EOF` (not the here-string `<<<`).
_HEREDOC = re.compile(
    r"(?<!<)<<(?!<)(-?)[ \t]*(?:'([^'\n]*)'|\"([^\"\n]*)\"|\\?([^\s;&|<>()'\"`]+))"
)


def load_groups(lines: list[str]) -> list[int]:
    """How many of the command's lines each load hands the shell (typed delivery), in order:
    one, except a here-document's body with its delimiter line, in one go. The shell reads those
    as text, never as commands, so they need no prompt and no load each (a 500-line heredoc
    would cost 500). A delimiter that never comes (or an operator that was not one, inside
    quotes or `$((1<<2))`) groups nothing: each line is loaded alone."""
    groups: list[int] = []
    i, n = 0, len(lines)
    while i < n:
        groups.append(1)
        delimiters = _HEREDOC.findall(lines[i])
        i += 1
        j = i
        for dash, single, double, bare in delimiters:
            word = single or double or bare
            while j < n and (lines[j].lstrip("\t") if dash else lines[j]) != word:
                j += 1
            if j == n:
                break  # no delimiter line: not a here-document we can group
            j += 1
        else:
            if j > i:
                groups.append(j - i)
                i = j
    return groups


def typed_text(kind: str, text: str) -> str:
    """The command file of a typed command (`text`: its lines, each ending in a newline). For
    a multi-line command in a self-loading shell, a first line gives the sizes of the groups
    of lines after the first (`load_groups`), which the shell loads one group at a time."""
    if kind not in SELF_LOADING or text.count("\n") < 2:
        return text
    groups = load_groups(text.split("\n")[:-1])
    return " ".join(map(str, groups[1:])) + "\n" + text


# bash's and zsh's new-command key: the nonce comes after it and their function reads it
# (readline and zle would insert a nonce typed into the edit line and draw it a character at
# a time; zle with a write each).
NEW_KEY = b"\x1b[7797~"


def integration_line(kind: str, nonce: str, lines: int = 1) -> bytes:
    """What runs the command file under our hooks, handing them the nonce: typed, its lines
    given to the line editor one by one (`lines`: how many the command has). fish's
    new-command key switches to a bind mode of ours for the nonce, its load key back."""
    if kind == "bash":
        return NEW_KEY + nonce.encode() + (_CHAIN_KEY if lines > 1 else _ACCEPT_KEY)
    if kind == "zsh":
        return NEW_KEY + nonce.encode()
    return NEW_KEY + load_keys(kind, nonce)


def typed_secret(kind: str, secret: str) -> str:
    """The form of a command's secret (32 hex digits: 128 bits) this shell is given: the typed
    shells get the same bits in 22 url-safe base64 characters (fish matches each typed key
    against its bindings and inserts it: ten keys fewer save about a twentieth of its work a
    command; bash's and zsh's `read` take a byte a system call from a terminal). bash's and
    zsh's nonce then ends with the digit of `exports.may_export`, which their hooks read."""
    if kind not in TYPED:
        return secret
    return base64.urlsafe_b64encode(bytes.fromhex(secret)).rstrip(b"=").decode()


def raw_line(kind: str, cmd_file: str) -> bytes:
    if kind == "fish":
        return ("source " + _fish_quote(cmd_file) + "\n").encode()
    return (". " + _sh_quote(cmd_file) + "\n").encode()


def probe_line(kind: str, cmd_file: str, token: str) -> bytes:
    """A line that sources `cmd_file` between a tokened start and end mark."""
    start = f"printf '\\033]633;P;LbStart={token}\\007'"
    end = "printf '\\033]633;P;Cwd=%s\\007\\033]633;P;LbEnd=%s:" + token + "\\007'"
    if kind == "fish":
        return f'{start}; source {_fish_quote(cmd_file)}; {end} "$PWD" $status\n'.encode()
    if kind == "posix":
        # Two lines: dash abandons the rest of a line when a sourced file has a syntax error,
        # and without line editing the tty echoes both lines before either runs.
        return f'{start}; . {_sh_quote(cmd_file)}\n{end} "$PWD" "$?"\n'.encode()
    return f'{start}; . {_sh_quote(cmd_file)}; {end} "$PWD" "$?"\n'.encode()


def status_line(kind: str, token: str) -> bytes:
    """A line that prints the last command's status and the cwd in a tokened mark, and
    nothing else (for a shell found at its prompt without our hooks)."""
    mark = "printf '\\033]633;P;Cwd=%s\\007\\033]633;P;LbEnd=%s:" + token + "\\007'"
    if kind == "fish":
        return f'{mark} "$PWD" $status\n'.encode()
    return f'{mark} "$PWD" "$?"\n'.encode()


class AsTypedErrors:
    """What turns the messages a shell gives for a sourced command file (the fallback modes)
    into those it gives the same command typed at its prompt: they name the file and its line
    (`bash: <file>: line 1: syntax error ...`, `<file>:1: command not found: x` in zsh), and
    bash, fish and zsh print more around them (the offending line again, `from sourcing
    file`). Fed the command's normalised output chunk by chunk (shells write a message in
    several writes, which two reads can split): a last line that begins as such a message
    does (`bash: `, the file's path, ...) is held until its end comes, or until `flush`. The
    path is this terminal's own, so nothing a command prints by chance is rewritten; `name`
    is the shell's, as its messages begin (bash, dash, sh)."""

    __slots__ = ("_heads", "_held", "_path", "_rules")

    def __init__(self, kind: str, cmd_file: str, name: str) -> None:
        self._path = cmd_file
        self._held = ""
        heads = {
            "bash": (f"{name}: ",),
            "zsh": (cmd_file,),
            "fish": (cmd_file, "from sourcing file ", "\tcalled on line ", "source: Error"),
        }
        self._heads = heads.get(kind, (f"{name}: ",))
        path = re.escape(cmd_file)
        rules: list[tuple[re.Pattern[str], str | Callable[[re.Match[str]], str]]]
        if kind == "bash":
            rules = [
                (re.compile(rf"^[^\s:]+: {path}: line \d+: `[^\n]*'\n", re.M), ""),
                (re.compile(rf"^([^\s:]+): {path}: line \d+: ", re.M), r"\1: "),
            ]
        elif kind == "zsh":
            rules = [
                (
                    re.compile(rf"{path}:(?:([^\s:]+):)?\d+: "),
                    lambda m: f"{m.group(1) or 'zsh'}: ",
                )
            ]
        elif kind == "fish":
            rules = [
                (
                    re.compile(
                        rf"^(?:from sourcing file {path}|\tcalled on line \d+ of file {path}"
                        rf"|source: Error while reading file '{path}')\n",
                        re.M,
                    ),
                    "",
                ),
                (re.compile(rf"{path} \(line \d+\): "), "fish: "),
            ]
        else:
            rules = [(re.compile(rf"^([^\s:]+: \d+: ){path}: ", re.M), r"\1")]
        self._rules = rules

    def __call__(self, text: str) -> str:
        if self._held:
            text, self._held = self._held + text, ""
        line = text.rfind("\n") + 1
        last = text[line:]
        if last and any(h.startswith(last) or last.startswith(h) for h in self._heads):
            text, self._held = text[:line], last
        return self._rename(text) if self._path in text else text

    def flush(self) -> str:
        held, self._held = self._held, ""
        return self._rename(held)

    def _rename(self, text: str) -> str:
        for pattern, replacement in self._rules:
            text = pattern.sub(replacement, text)
        return text


def run_line(
    kind: str, detection: EndDetection, cmd_file: str, secret: str, lines: int = 1
) -> bytes:
    """The one line sent to the shell to run the command waiting in `cmd_file`; `secret` is
    the command's nonce (integration) or end-marker token; `lines`: how many it has."""
    if detection is EndDetection.INTEGRATION:
        return integration_line(kind, secret, lines)
    if detection is EndDetection.RAW:
        return raw_line(kind, cmd_file)
    return probe_line(kind, cmd_file, secret)
