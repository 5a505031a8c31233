"""What to do when a terminal's shell dies: the decision, kept pure.

Theory of operation: a shell death is a `ShellCrashed` (terminal, critical); the recovery
matrix's row for it names the remedy (`recreate_terminal`), how many times a re-creation is
tried (`max_retries`: none, and the shell is not recreated) and the fallback (`alert_user`).
A command the dying shell never started is a terminal/recoverable failure: that row's primary
(`retry_command`) runs it again on the new shell, at most `max_retries` times; its fallback
is the start-up ladder's last rung (`raw_output_mode`). `CrashLoopPolicy.from_matrix`
carries both rows, so a changed row changes what a terminal does. This module adds what the
matrix cannot know: crash loops. Deaths are remembered as clock times; a
death is answered by a restart of the same shell while fewer than `max_deaths` fall inside the
last `window_s` seconds; past that the next shell of `fallback_shells` that can be run and has
not been tried is started instead (mode `alternative_shell`, with a fresh count); when none is
left the terminal gives up and the error reaches the user.

Invariants: the decision depends only on its arguments (death times, now, the shells tried,
which shells exist), so it is tested on plain numbers; a death older than the window never
counts; a shell is never retried after being given up on for this terminal.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum

from lapce_bridge.core.errors import ErrorCategory, ErrorSeverity
from lapce_bridge.core.matrix import (
    DEFAULT_MATRIX,
    UNBOUNDED_RETRIES,
    RecoveryMatrix,
    Strategy,
)


class RestartAction(StrEnum):
    RESTART = "restart"
    ALTERNATIVE_SHELL = "alternative_shell"
    GIVE_UP = "give_up"


@dataclass(frozen=True, slots=True)
class CrashLoopPolicy:
    max_deaths: int = 3  # deaths within the window that make the shell "crash-looping"
    window_s: float = 30.0
    fallback_shells: tuple[str, ...] = ("bash", "sh")
    # The recovery matrix's terminal/critical row: the remedy, how many times a re-creation
    # is tried after a death (0: the shell is not recreated), the fallback.
    remedy: Strategy = Strategy.RECREATE_TERMINAL
    recreations: int = 1
    fallback: Strategy = Strategy.ALERT_USER
    # The terminal/recoverable row: how a command the dying shell never started is run again
    # (`rerun`, at most `reruns` times), and the fallback for a shell printing no end marker.
    rerun: Strategy = Strategy.RETRY_COMMAND
    reruns: int = 3
    unmarked: Strategy = Strategy.RAW_OUTPUT_MODE

    @property
    def recreates(self) -> bool:
        return self.recreations > 0

    @classmethod
    def from_matrix(cls, matrix: RecoveryMatrix = DEFAULT_MATRIX) -> CrashLoopPolicy:
        """The policy the matrix's terminal rows set (a row without a bound of its own
        allows `UNBOUNDED_RETRIES` tries: the crash loop bound ends them anyway)."""
        critical, recoverable = ErrorSeverity.CRITICAL, ErrorSeverity.RECOVERABLE
        died = matrix.lookup(ErrorCategory.TERMINAL, critical)
        lost = matrix.lookup(ErrorCategory.TERMINAL, recoverable)
        return cls(
            remedy=died.primary,
            recreations=(matrix.attempts(died.category, critical, unbounded=UNBOUNDED_RETRIES) or 1)
            - 1,
            fallback=died.fallback,
            rerun=lost.primary,
            reruns=(matrix.attempts(lost.category, recoverable, unbounded=UNBOUNDED_RETRIES) or 1)
            - 1,
            unmarked=lost.fallback,
        )


@dataclass(frozen=True, slots=True)
class RestartDecision:
    action: RestartAction
    shell: str | None
    reason: str


def recent_deaths(deaths: Sequence[float], now: float, window_s: float) -> int:
    return sum(1 for t in deaths if now - t <= window_s)


def next_shell(
    current: str, tried: Sequence[str], fallbacks: Sequence[str], can_run: Callable[[str], bool]
) -> str | None:
    # Compared by name: "/usr/bin/bash" and "bash" are the same shell.
    skip = {os.path.basename(s) for s in (current, *tried)}
    for shell in fallbacks:
        if shell and os.path.basename(shell) not in skip and can_run(shell):
            return shell
    return None


def decide_restart(
    deaths: Sequence[float],
    now: float,
    *,
    shell: str,
    tried: Sequence[str],
    policy: CrashLoopPolicy,
    can_run: Callable[[str], bool],
) -> RestartDecision:
    """`deaths` includes the one being answered."""
    if not policy.recreates:
        return RestartDecision(
            RestartAction.GIVE_UP, None, f"the recovery matrix allows no {policy.remedy}"
        )
    count = recent_deaths(deaths, now, policy.window_s)
    if count < policy.max_deaths:
        return RestartDecision(
            RestartAction.RESTART, shell, f"shell died ({count} in {policy.window_s:g} s)"
        )
    alternative = next_shell(shell, tried, policy.fallback_shells, can_run)
    reason = f"{shell} died {count} times in {policy.window_s:g} s"
    if alternative is not None:
        return RestartDecision(RestartAction.ALTERNATIVE_SHELL, alternative, reason)
    return RestartDecision(RestartAction.GIVE_UP, None, reason + "; no other shell to try")
