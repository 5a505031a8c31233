"""Bringing up a shell that answers: the start-up ladder, and what a replacement restores.

Theory of operation: `climb` starts a shell and climbs down a ladder, each rung with a bound
on the clock, until one answers:
1. our integration with the user's rc files: ready at the first 633 prompt or cwd mark;
2. the same process with a tokened end mark after each command (`no_shell_integration`),
   when the rc files broke the hooks but the shell runs commands;
3. our integration without the user's rc files (`minimal_pty`);
4. a plain shell without rc files and no marks at all (`raw_output`), when the recovery
   matrix's terminal/recoverable fallback is `raw_output_mode` (`Plan.unmarked`).
sh, dash and unknown shells start at rung 2. Each rung taken is returned as a recovery for the
terminal's next result. The ladder takes its collaborators explicitly (`Rungs`: how to spawn,
probe and stop a shell), so it knows nothing of the terminal that uses it.

`choose_shell` picks the executable (missing: the first runnable fallback shell, reported as
`alternative_shell`). `restore_file` turns the environment a dead shell's hooks last saved
into a file its replacement sources (in the replacement's syntax when the kind of shell
changes), minus the variables that describe the dead process itself.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from lapce_bridge.core.errors import ShellCrashed, TerminalError
from lapce_bridge.core.matrix import Strategy
from lapce_bridge.terminal import modes
from lapce_bridge.terminal.files import read_private, write_private
from lapce_bridge.terminal.modes import Launch, resolve_shell, shell_kind
from lapce_bridge.terminal.recovery import next_shell
from lapce_bridge.terminal.result import Mode, Recovery
from lapce_bridge.terminal.shell import ShellProcess
from lapce_bridge.terminal.tracker import EndDetection

__all__ = ["Outcome", "Plan", "Rungs", "choose_shell", "climb", "restore_file"]

_VOLATILE = re.compile(r"^(?:declare -\S+|export|typeset -\S+|set -gx) (?:PWD|OLDPWD|SHLVL|_)\b")


@dataclass(frozen=True, slots=True)
class Plan:
    """What to start, where, and how long each rung may take."""

    exe: str
    env: dict[str, str]
    cwd: str
    term_dir: Path
    zdotdir_base: Path
    integration: bool
    restore: Path | None
    alternative: bool
    startup_timeout: float
    probe_timeout: float
    unmarked: Strategy = Strategy.RAW_OUTPUT_MODE  # the matrix's fallback for the last rung


@dataclass(frozen=True, slots=True)
class Rungs:
    """The ladder's collaborators: how to spawn, probe and stop a shell process."""

    spawn: Callable[[Launch, str, EndDetection], ShellProcess]
    probe: Callable[[ShellProcess], Awaitable[bool]]
    stop: Callable[[ShellProcess], Awaitable[None]]
    wait_ready: Callable[[ShellProcess], Awaitable[bool]]


@dataclass(slots=True)
class Outcome:
    shell: ShellProcess
    detection: EndDetection
    mode: Mode  # what results report
    recoveries: list[Recovery] = field(default_factory=list)


def choose_shell(
    requested: str, path: str | None, tried: list[str], fallbacks: Sequence[str]
) -> tuple[str, Recovery | None]:
    """The executable to start for `requested`, and the recovery when it is a fallback."""
    exe = resolve_shell(requested, path)
    if exe is not None:
        return exe, None
    alt = next_shell(requested, tried, fallbacks, lambda s: resolve_shell(s, path) is not None)
    alt_exe = None if alt is None else resolve_shell(alt, path)
    if alt_exe is None:
        raise TerminalError(f"shell {requested!r} cannot be run and no fallback shell can")
    tried.append(requested)
    return alt_exe, Recovery("alternative_shell", f"shell {requested!r} not found; using {alt}")


def _label(alternative: bool, label: Mode) -> Mode:
    # Results name the most important departure: another shell than asked for, first.
    return Mode.ALTERNATIVE_SHELL if alternative else label


async def climb(plan: Plan, rungs: Rungs) -> Outcome:
    exe = plan.exe
    kind = shell_kind(exe)

    def launch(integration: bool, user_rc: bool, restore: Path | None) -> Launch:
        return modes.launch(
            exe,
            env=plan.env,
            term_dir=plan.term_dir,
            zdotdir_base=plan.zdotdir_base,
            integration=integration,
            user_rc=user_rc,
            restore=restore,
        )

    alt = plan.alternative
    spawned: list[ShellProcess] = []
    spawn = rungs.spawn

    def tracked(launch: Launch, exe: str, detection: EndDetection) -> ShellProcess:
        shell = spawn(launch, exe, detection)
        spawned.append(shell)
        return shell

    rungs = Rungs(tracked, rungs.probe, rungs.stop, rungs.wait_ready)
    if plan.integration and kind != "posix":
        shell = rungs.spawn(launch(True, True, plan.restore), exe, EndDetection.INTEGRATION)
        if await rungs.wait_ready(shell):
            return Outcome(shell, EndDetection.INTEGRATION, _label(alt, Mode.SHELL_INTEGRATION))
        reason = f"shell integration did not start within {plan.startup_timeout:g} s"
        if await rungs.probe(shell):
            return Outcome(
                shell,
                EndDetection.END_MARKER,
                _label(alt, Mode.NO_SHELL_INTEGRATION),
                [Recovery("no_shell_integration", reason)],
            )
        await rungs.stop(shell)
        shell = rungs.spawn(launch(True, False, plan.restore), exe, EndDetection.INTEGRATION)
        if await rungs.wait_ready(shell):
            return Outcome(
                shell,
                EndDetection.INTEGRATION,
                _label(alt, Mode.MINIMAL_PTY),
                [Recovery("minimal_pty", reason + " with the user's rc files; started without")],
            )
        await rungs.stop(shell)
    else:
        shell = rungs.spawn(launch(False, True, plan.restore), exe, EndDetection.END_MARKER)
        if await rungs.probe(shell):
            return Outcome(shell, EndDetection.END_MARKER, _label(alt, Mode.NO_SHELL_INTEGRATION))
        await rungs.stop(shell)
    codes = [s.exited.result() for s in spawned if s.exited.done() and not s.stopping]
    if spawned and len(codes) == len(spawned):
        # Every rung's shell ended by itself, before we stopped it: this shell cannot run here.
        raise ShellCrashed(f"{exe} exits at once (status {codes[-1]}), with or without rc files")
    if plan.unmarked is not Strategy.RAW_OUTPUT_MODE:
        raise TerminalError(
            f"{exe} answered no end marker within the bounds, and the recovery matrix's "
            f"fallback for it is {plan.unmarked.value}, not raw_output_mode",
            retryable=False,
        )
    plain = launch(False, False, None)
    # No rc files and no prompt, so nothing but the command's output follows our line.
    raw_env = {k: v for k, v in plain.env.items() if k not in ("ENV", "BASH_ENV")}
    raw_env.update(PS1="", PS2="", PROMPT_COMMAND="")
    raw = Launch(plain.argv, raw_env, plain.kind, False)
    shell = rungs.spawn(raw, exe, EndDetection.RAW)
    if not shell.alive:
        raise ShellCrashed(f"{exe} exits at once; no terminal can be started")
    return Outcome(
        shell,
        EndDetection.RAW,
        _label(alt, Mode.RAW_OUTPUT),
        [Recovery("raw_output_mode", f"{exe} answered no end marker within the bounds")],
    )


def restore_file(term_dir: Path, kind: str, into: str | None = None) -> Path | None:
    """The dead shell's exported variables as a file its replacement sources, or None when
    none were saved. `kind` is the dead shell's; `into`, the replacement's when the ladder
    moved to another kind of shell (bash <-> zsh <-> fish <-> sh): the variables are read
    from the one syntax and written in the other."""
    into = into or kind
    data = read_private(term_dir / ("env.fish" if kind == "fish" else "env"))
    if data is None:
        return None
    text = data.decode("utf-8", "surrogateescape")
    if kind == into and kind != "posix":  # sh saves nothing: the file is an earlier shell's
        if kind == "fish":
            # `set -xL` lists "NAME escaped-value(s)": valid fish words after `set -gx`.
            text = "".join("set -gx " + line for line in text.splitlines(keepends=True))
        kept = [line for line in text.splitlines(keepends=True) if not _VOLATILE.match(line)]
        out = "".join(kept)
    else:
        env = {k: v for k, v in saved_env(kind, text).items() if k not in _VOLATILE_NAMES}
        out = "".join(export_line(into, k, v) for k, v in env.items())
    target = term_dir / "restore"
    write_private(target, out.encode("utf-8", "surrogateescape"))
    return target


_VOLATILE_NAMES = frozenset(("PWD", "OLDPWD", "SHLVL", "_"))
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def saved_env(kind: str, text: str) -> dict[str, str]:
    """The variables in what a shell's hook saved: bash `declare -x NAME="value"`, zsh
    `export NAME=value` (bare, '...' or $'...'), fish `set -xL` ("NAME value..."; fish does
    not quote a value with a quote in it, so only plain values and lists are read there).
    An entry that does not parse is skipped."""
    env: dict[str, str] = {}
    if kind == "fish":
        for line in text.splitlines():
            try:
                words = shlex.split(line, posix=True)
            except ValueError:
                continue
            if words and _NAME.match(words[0]):
                # A list, joined as fish exports it: path lists with ':', others with ' '.
                sep = ":" if words[0].endswith("PATH") else " "
                env[words[0]] = sep.join(words[1:])
        return env
    for m in _ENTRY.finditer(text):
        name, dq, sq, ansi, bare = m.group(1, 2, 3, 4, 5)
        if dq is not None:
            env[name] = re.sub(r'\\([\\"$`])', r"\1", dq)
        elif sq is not None:
            env[name] = sq.replace("'\\''", "'")
        elif ansi is not None:
            env[name] = _ansi_c(ansi)
        elif bare is not None:
            env[name] = re.sub(r"\\(.)", r"\1", bare)
    return env


# One `declare -x NAME="..."` / `export NAME=...` entry; values may span lines.
_ENTRY = re.compile(
    r"^(?:declare -\S+|export|typeset -\S+) ([A-Za-z_][A-Za-z0-9_]*)="
    r'(?:"((?:[^"\\]|\\.)*)"'  # bash: double quotes, \ escapes
    r"|'((?:[^']|'\\'')*)'(?=\s|$)"  # zsh: single quotes, '\'' for a quote
    r"|\$'((?:[^'\\]|\\.)*)'"  # zsh: $'...' for control characters
    r"|((?:[^\s\\]|\\.)*))",  # zsh: a bare word
    re.MULTILINE | re.DOTALL,
)


def _ansi_c(body: str) -> str:
    """The value of a $'...' string (the escapes zsh writes)."""
    try:
        return body.encode("latin-1", "backslashreplace").decode("unicode_escape")
    except UnicodeDecodeError:
        return body


def export_line(kind: str, name: str, value: str) -> str:
    """One exported variable in `kind`'s syntax."""
    if kind == "fish":
        quoted = "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
        return f"set -gx {name} {quoted}\n"
    return f"export {name}='" + value.replace("'", "'\\''") + "'\n"
