"""How each shell is started, and how a command is handed to it in each mode.

Theory of operation: a command is never typed into the shell. It is written to a file in the
terminal's own folder and the shell is sent one short line that sources that file
(`. "$__lb_cf"` in bash/zsh, `source $__lb_cf` in fish). So multi-line scripts, heredocs,
`python -c` with newlines and any quoting reach the shell byte for byte, run in the shell
itself (cd, export, functions and aliases persist), and `$?` is the status of the script's
last command; the line editor, the tty's 4 KiB canonical line limit and bracketed paste
never see the command text. Our preexec hook reads the file back for `633;E`.

Without integration (sh, dash, unknown shells, or integration that never activated) the line
also prints a start mark and an end mark carrying a per-command random token, `$?` and `$PWD`:
`printf` of `\\033` written as text in the line, so the tty's echo of the line holds no escape
and output cannot spoof the end without knowing the token.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from lapce_bridge.terminal.result import Mode

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


def zdotdir(state_dir: Path) -> Path:
    """A ZDOTDIR holding our .zshenv/.zshrc (zsh only looks for those exact names)."""
    folder = state_dir / "zdotdir"
    folder.mkdir(parents=True, exist_ok=True)
    for src, dst in (("lapce-bridge.zshenv", ".zshenv"), ("lapce-bridge.zshrc", ".zshrc")):
        text = (SCRIPTS / src).read_text()
        target = folder / dst
        if not target.exists() or target.read_text() != text:
            tmp = folder / (dst + ".tmp")
            tmp.write_text(text)
            os.replace(tmp, target)
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
    state_dir: Path,
    nonce: str,
    integration: bool,
    user_rc: bool,
    restore: Path | None,
) -> Launch:
    kind = shell_kind(executable)
    env = dict(env)
    if not integration or kind == "posix":
        argv: tuple[str, ...] = (executable, "-i")
        if kind == "bash" and not user_rc:
            argv = (executable, "--norc", "--noprofile", "-i")
        elif kind == "zsh" and not user_rc:
            argv = (executable, "-f", "-i")
        elif kind == "fish" and not user_rc:
            argv = (executable, "--no-config", "-i")
        return Launch(argv, env, kind, False)
    env["LAPCE_BRIDGE_NONCE"] = nonce
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
        env["ZDOTDIR"] = str(zdotdir(state_dir))
        argv = (executable, "-i")
    else:
        init = f"source {_fish_quote(_script('lapce-bridge.fish'))}"
        argv = (executable, "-i", "--init-command", init)
        if not user_rc:
            argv = (executable, "--no-config", "-i", "--init-command", init)
    return Launch(argv, env, kind, True)


def _fish_quote(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _sh_quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def run_line(kind: str, mode: Mode, cmd_file: Path, token: str) -> bytes:
    """The one line sent to the shell to run the command waiting in `cmd_file`."""
    if mode is Mode.SHELL_INTEGRATION:
        return b"source $__lb_cf\n" if kind == "fish" else b'. "$__lb_cf"\n'
    if mode is Mode.RAW_OUTPUT:
        if kind == "fish":
            return ("source " + _fish_quote(str(cmd_file)) + "\n").encode()
        return (". " + _sh_quote(str(cmd_file)) + "\n").encode()
    start = f"printf '\\033]633;P;LbStart={token}\\007'"
    end = "printf '\\033]633;P;Cwd=%s\\007\\033]633;P;LbEnd=%s:" + token + "\\007'"
    if kind == "fish":
        return (f'{start}; source {_fish_quote(str(cmd_file))}; {end} "$PWD" $status\n').encode()
    if kind == "posix":
        # Two lines: dash abandons the rest of a line when a sourced file has a syntax error,
        # and without line editing the tty echoes both lines before either runs.
        return f'{start}; . {_sh_quote(str(cmd_file))}\n{end} "$PWD" "$?"\n'.encode()
    return f'{start}; . {_sh_quote(str(cmd_file))}; {end} "$PWD" "$?"\n'.encode()


def write_file(path: str, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)


def runtime_dir(state_dir: Path) -> Path:
    """A private folder for per-command files: $XDG_RUNTIME_DIR, /dev/shm, else state_dir."""
    for base in (os.environ.get("XDG_RUNTIME_DIR"), "/dev/shm"):
        if base and os.path.isdir(base) and os.access(base, os.W_OK | os.X_OK):
            return Path(base) / f"lapce-bridge-{os.getuid()}" / "terminals"
    return state_dir / "terminals"
