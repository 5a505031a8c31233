"""What terminals report: `ExecResult` with its statuses and modes, exits and statistics.

`ExecResult.to_wire()` is PROTOCOL.md's camelCase `ExecResult`; nothing else in the package
spells the wire names.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from lapce_bridge.terminal.frozen import quick_init


class Status(StrEnum):
    COMPLETED = "completed"
    TIMED_OUT = "timed_out"
    INTERRUPTED = "interrupted"
    WAITING_FOR_INPUT = "waiting_for_input"
    RUNNING = "running"


class Mode(StrEnum):
    """How a terminal learns where a command's output ends (best first)."""

    SHELL_INTEGRATION = "shell_integration"  # our OSC 633 hooks: exit code, cwd, env
    NO_SHELL_INTEGRATION = "no_shell_integration"  # a tokened end marker after each command
    ALTERNATIVE_SHELL = "alternative_shell"  # the requested shell failed; another one runs
    MINIMAL_PTY = "minimal_pty"  # the shell without the user's rc files
    RAW_OUTPUT = "raw_output"  # no markers at all: output until idle, exit code unknown


@dataclass(frozen=True, slots=True)
class Recovery:
    action: str
    reason: str

    def to_wire(self) -> dict[str, str]:
        return {"action": self.action, "reason": self.reason}


_INCOMPLETE = (
    "the command was still incomplete after its last line (an unclosed quote, bracket, block "
    "or heredoc); its continuation prompt was abandoned "
)
# How: as a user would, or, in a shell that ignores SIGINT, from inside it.
_BY_CTRL_C = "with Ctrl-C"
_BY_LOAD_KEY = (
    "from inside the shell, which ignores SIGINT (Ctrl-C did nothing there): the bridge's "
    "abandon key cleared the SIGINT trap and had the shell send itself SIGINT, as Ctrl-C "
    "would; the trap was set again at the next prompt"
)


def incomplete_command() -> Recovery:
    """A command still incomplete after its last line, abandoned with Ctrl-C."""
    return Recovery("incomplete_command", _INCOMPLETE + _BY_CTRL_C)


def abandoned_inside(recoveries: list[Recovery]) -> None:
    """The incomplete command's prompt was abandoned from inside the shell after all (its
    Ctrl-C was not heard): its recovery says so."""
    for i, recovery in enumerate(recoveries):
        if recovery == incomplete_command():
            recoveries[i] = Recovery(recovery.action, _INCOMPLETE + _BY_LOAD_KEY)


@quick_init
@dataclass(frozen=True, slots=True)
class ExecResult:
    execution_id: str
    terminal_id: str
    exit_code: int | None
    output: str
    output_bytes: int
    truncated: bool
    cwd: str | None
    duration_ms: float
    status: Status
    mode: Mode
    shell: str
    recoveries: tuple[Recovery, ...] = field(default=())

    def to_wire(self) -> dict[str, Any]:
        return {
            "executionId": self.execution_id,
            "terminalId": self.terminal_id,
            "exitCode": self.exit_code,
            "output": self.output,
            "outputBytes": self.output_bytes,
            "truncated": self.truncated,
            "cwd": self.cwd,
            "durationMs": round(self.duration_ms, 3),
            "status": self.status.value,
            "mode": self.mode.value,
            "shell": self.shell,
            "recoveries": [r.to_wire() for r in self.recoveries],
        }


@dataclass(frozen=True, slots=True)
class TerminalExited:
    terminal_id: str
    exit_code: int
    will_recover: bool


@dataclass(frozen=True, slots=True)
class TerminalStats:
    terminal_id: str
    shell: str
    pid: int | None
    mode: str
    busy: bool
    executions: int
    deaths: int
    restarts: int
    last_recovery_ms: float | None
    bytes_read: int
    markers: int
    parser_overflows: int
