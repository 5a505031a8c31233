"""What to do when a terminal's shell dies: the decision, kept pure.

Theory of operation: a shell death is a `ShellCrashed` (terminal, critical); the kernel's
recovery matrix names the remedy, `recreate_terminal`, and its fallback, `alert_user`. This
module adds what the matrix cannot know: crash loops. Deaths are remembered as clock times; a
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

from lapce_bridge.core.errors import ShellCrashed
from lapce_bridge.core.matrix import DEFAULT_MATRIX, Strategy


class RestartAction(StrEnum):
    RESTART = "restart"
    ALTERNATIVE_SHELL = "alternative_shell"
    GIVE_UP = "give_up"


@dataclass(frozen=True, slots=True)
class CrashLoopPolicy:
    max_deaths: int = 3  # deaths within the window that make the shell "crash-looping"
    window_s: float = 30.0
    fallback_shells: tuple[str, ...] = ("bash", "sh")


@dataclass(frozen=True, slots=True)
class RestartDecision:
    action: RestartAction
    shell: str | None
    reason: str


def recreate_strategy() -> Strategy:
    """The matrix's remedy for a dead shell (recreate_terminal)."""
    return DEFAULT_MATRIX.lookup_error(ShellCrashed("shell exited")).primary


def give_up_strategy() -> Strategy:
    return DEFAULT_MATRIX.lookup_error(ShellCrashed("shell exited")).fallback


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
