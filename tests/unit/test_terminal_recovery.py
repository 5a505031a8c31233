"""The crash-loop decision, on plain numbers."""

from __future__ import annotations

from dataclasses import replace

from lapce_bridge.core.errors import ErrorCategory, ErrorSeverity
from lapce_bridge.core.matrix import DEFAULT_MATRIX, Strategy
from lapce_bridge.terminal.recovery import (
    CrashLoopPolicy,
    RestartAction,
    decide_restart,
    next_shell,
    recent_deaths,
)

POLICY = CrashLoopPolicy(max_deaths=3, window_s=10.0, fallback_shells=("bash", "sh"))


def can_run(shell: str) -> bool:
    return shell in ("bash", "sh", "zsh")


def test_the_matrix_row_names_the_remedies_and_decides_whether_they_run() -> None:
    policy = CrashLoopPolicy.from_matrix(DEFAULT_MATRIX)
    assert policy.remedy is Strategy.RECREATE_TERMINAL
    assert policy.fallback is Strategy.ALERT_USER
    assert policy.recreates
    row = DEFAULT_MATRIX.lookup(ErrorCategory.TERMINAL, ErrorSeverity.CRITICAL)
    never = CrashLoopPolicy.from_matrix(DEFAULT_MATRIX.with_row(replace(row, max_retries=0)))
    assert not never.recreates
    decision = decide_restart([0.0], 0.0, shell="zsh", tried=[], policy=never, can_run=can_run)
    assert decision.action is RestartAction.GIVE_UP  # the first death, no crash loop needed
    assert "recreate_terminal" in decision.reason
    # How many times: the critical row's retries re-create; the recoverable row's re-run a
    # command the dying shell never started.
    assert (policy.recreations, policy.rerun, policy.reruns) == (1, Strategy.RETRY_COMMAND, 3)
    lost = DEFAULT_MATRIX.lookup(ErrorCategory.TERMINAL, ErrorSeverity.RECOVERABLE)
    tuned = DEFAULT_MATRIX.with_row(replace(row, max_retries=4)).with_row(
        replace(lost, primary=Strategy.ALERT_USER)  # a one-shot strategy re-runs nothing
    )
    assert (
        CrashLoopPolicy.from_matrix(tuned).recreations,
        CrashLoopPolicy.from_matrix(tuned).reruns,
    ) == (4, 0)


def test_deaths_outside_the_window_do_not_count() -> None:
    assert recent_deaths([0.0, 5.0, 15.0], 15.0, 10.0) == 2
    assert recent_deaths([0.0, 5.0, 15.0], 25.0, 10.0) == 1
    assert recent_deaths([0.0], 10.0, 10.0) == 1  # the window's edge is inside


def test_restart_while_under_the_limit() -> None:
    decision = decide_restart(
        [0.0, 1.0], 1.0, shell="zsh", tried=[], policy=POLICY, can_run=can_run
    )
    assert decision.action is RestartAction.RESTART
    assert decision.shell == "zsh"


def test_spread_out_deaths_never_loop() -> None:
    deaths: list[float] = []
    for t in range(0, 100, 6):
        deaths.append(float(t))
        decision = decide_restart(
            deaths, float(t), shell="zsh", tried=[], policy=POLICY, can_run=can_run
        )
        assert decision.action is RestartAction.RESTART


def test_loop_moves_to_the_first_other_runnable_shell() -> None:
    decision = decide_restart(
        [0.0, 1.0, 2.0], 2.0, shell="/usr/bin/zsh", tried=[], policy=POLICY, can_run=can_run
    )
    assert decision.action is RestartAction.ALTERNATIVE_SHELL
    assert decision.shell == "bash"
    assert "3 times" in decision.reason


def test_same_shell_by_another_path_is_not_an_alternative() -> None:
    assert next_shell("/usr/bin/bash", [], ("bash", "sh"), can_run) == "sh"
    assert next_shell("/usr/bin/bash", ["/bin/sh"], ("bash", "sh"), can_run) is None
    assert next_shell("zsh", [], ("fish", "sh"), can_run) == "sh"  # fish cannot run here


def test_gives_up_when_every_shell_was_tried() -> None:
    decision = decide_restart(
        [0.0, 1.0, 2.0], 2.0, shell="sh", tried=["zsh", "bash"], policy=POLICY, can_run=can_run
    )
    assert decision.action is RestartAction.GIVE_UP
    assert decision.shell is None
    assert "no other shell" in decision.reason
