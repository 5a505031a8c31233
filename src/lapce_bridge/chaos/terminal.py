"""Shells that die or break under a real server: killed, integration removed, exited by hand.

Each scenario runs against `lapce-bridge serve` with its default policies, once per shell
named by `--shells`, and checks what a user would: the answer to a command running at the
kill, the output and exit code of the next command, the working directory and an exported
variable set before the fault.

- shell killed between commands: SIGKILL the shell of an idle terminal; RTO runs from the
  kill to the first answer of the next command (retried only while the server answers with
  an error, such as a busy or recovering terminal); that answer must show the cwd and env.
- shell killed mid-command: SIGKILL during `sleep 30`; the running request must be answered
  (not left hanging), then the terminal must work with its cwd and env.
- integration broken: the user's command removes the shell's integration hooks; the next
  commands must still come back with their output and exit code.
- user exits in a row: `exit` typed several times; each is answered and the terminal keeps
  working with the shell it had.
- deaf shells: commands after which the shell no longer hears or says what the bridge relies
  on (Ctrl-C trapped away then a quote left open; its output sent nowhere; a program that
  ignores SIGINT past its timeout); each must be answered, and the next command must come
  back right with its cwd and env, with no timeout of the caller's to end the wait. RTO runs
  from sending the deafening command to that right answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import statistics
import time
from pathlib import Path
from typing import Any

from lapce_bridge.bench.report import figure_row
from lapce_bridge.chaos.harness import ServerUnderTest, Tally, until_ok
from lapce_bridge.chaos.scenario import ChaosContext, ChaosResult
from lapce_bridge.core.errors import BridgeError
from lapce_bridge.ipc.client import BridgeClient
from lapce_bridge.terminal.modes import resolve_shell

# Commands that remove our hooks, as a user's script might (a prompt framework reset, say).
BREAK_INTEGRATION = {
    "bash": "unset PROMPT_COMMAND; trap - DEBUG; PS1='$ '",
    "zsh": "precmd_functions=(); preexec_functions=(); PS1='%# '",
    "fish": "functions -e __lb_preexec __lb_postexec __lb_prompt",
}


# What leaves a shell deaf, per shell: (what the case is, its commands; the last deafens).
# fish cannot `exec` with redirections alone.
_IGNORES_SIGINT = (
    "python3 -c 'import signal,time; signal.signal(2, signal.SIG_IGN); time.sleep(60)'"
)
DEAFENING: dict[str, list[tuple[str, list[str]]]] = {
    shell: [
        ("Ctrl-C trapped, a quote left open", ["trap '' INT", "echo 'unclosed", "trap - INT"]),
        ("a program ignoring SIGINT past its timeout", [_IGNORES_SIGINT]),
        *([("output sent nowhere", ["exec >/dev/null 2>&1"])] if shell != "fish" else []),
    ]
    for shell in ("bash", "zsh", "fish")
}


def available_shells(ctx: ChaosContext) -> list[str]:
    return [s for s in ctx.shells if resolve_shell(s, os.environ.get("PATH")) is not None]


async def execute(client: BridgeClient, tid: str, command: str, timeout_s: float = 10) -> Any:
    return await client.request(
        "terminal/execute",
        {"terminalId": tid, "command": command, "timeoutMs": int(timeout_s * 1000)},
        timeout=timeout_s + 5,
    )


async def shell_pid(client: BridgeClient, tid: str) -> int | None:
    for term in await client.request("terminal/list"):
        if term.get("terminalId") == tid:
            pid = term.get("pid")
            return int(pid) if pid else None
    return None


async def new_terminal(client: BridgeClient, shell: str, cwd: Path) -> str:
    created = await client.request("terminal/create", {"shell": shell, "cwd": str(cwd)})
    return str(created["terminalId"])


async def _state_kept(
    client: BridgeClient, tid: str, sub: Path, value: str, tally: Tally, within: float
) -> None:
    """Sends the next command until one runs; checks its output shows the env and cwd.

    An error answer (a terminal still recovering) is retried; a command answered as
    interrupted without having run, because it was sent into the dead shell, is a lost
    command: a user would have to notice and send it again.
    """
    deadline = time.monotonic() + within
    got: dict[str, Any] = {}
    while time.monotonic() < deadline:
        _, answer = await until_ok(
            lambda: execute(client, tid, 'echo "$CHAOS_KEEP"; pwd'),
            lambda r: isinstance(r, dict),
            max(deadline - time.monotonic(), 0.01),
        )
        if not isinstance(answer, dict):
            break
        if answer.get("status") == "completed":
            got = answer
            break
        tally.check(False, f"command after the kill answered {answer.get('status')}, not run")
    lines = str(got.get("output", "")).splitlines()
    tally.check(bool(got), "terminal not answering after the kill")
    tally.check(lines[:1] == [value], "exported variable lost")
    tally.check(lines[1:2] == [str(sub)], "working directory lost")
    tally.check(got.get("exitCode") == 0, "exit code missing")


async def _kill(client: BridgeClient, tid: str, ctx: ChaosContext) -> bool:
    pid = await shell_pid(client, tid)
    if pid is None:
        return False
    if ctx.break_recovery:  # recovery cannot help a terminal that is closed under it
        with contextlib.suppress(BridgeError):
            await client.request("terminal/close", {"terminalId": tid})
    with contextlib.suppress(ProcessLookupError):  # closing may have ended it already
        os.kill(pid, signal.SIGKILL)
    return True


async def shell_killed(ctx: ChaosContext, shell: str) -> ChaosResult:
    rng = ctx.rng(f"shell-killed:{shell}")
    rounds = ctx.n(10, 2)
    tally = Tally()
    rtos: list[float] = []
    sut = ServerUnderTest(ctx.workdir, f"kill-{shell}")
    async with sut as client:
        for i in range(rounds):
            sub = (sut.workspace / f"sub-{i}").resolve()
            sub.mkdir()
            tid = await new_terminal(client, shell, sut.workspace)
            value = f"v{rng.randrange(10**9)}"
            await execute(client, tid, f"cd {sub}; export CHAOS_KEEP={value}")
            # Between commands: the terminal is idle when its shell dies.
            if not tally.check(await _kill(client, tid, ctx), "no shell pid listed"):
                continue
            killed = time.monotonic()
            await _state_kept(client, tid, sub, value, tally, within=ctx.patience(10))
            rtos.append((time.monotonic() - killed) * 1000)
            # Mid-command: a request is running when the shell dies.
            running = asyncio.ensure_future(execute(client, tid, "sleep 30", timeout_s=60))
            await asyncio.sleep(rng.uniform(0.2, 0.6))
            if not tally.check(await _kill(client, tid, ctx), "no shell pid listed"):
                running.cancel()
                continue
            try:
                answer = await asyncio.wait_for(running, ctx.patience(10))
                tally.check(isinstance(answer, dict), "running command not answered")
            except (BridgeError, TimeoutError) as exc:
                tally.check(False, f"running command: {type(exc).__name__}")
            await _state_kept(client, tid, sub, value, tally, within=ctx.patience(10))
            with contextlib.suppress(BridgeError):  # broken: closed already
                await client.request("terminal/close", {"terminalId": tid})
    rto = statistics.median(rtos) if rtos else float("inf")
    return tally.result(
        f"shell killed ({shell})",
        rto,
        rounds,
        seed_ms=1_000,
        goal_ms=100,
        detail="SIGKILL between and during commands; RTO = kill to the next answer. ",
    )


async def integration_broken(ctx: ChaosContext, shell: str) -> ChaosResult:
    commands = ctx.n(10, 3)
    tally = Tally()
    rto = float("inf")
    sut = ServerUnderTest(ctx.workdir, f"integ-{shell}")
    async with sut as client:
        tid = await new_terminal(client, shell, sut.workspace)
        await execute(client, tid, "echo ready")
        broken = time.monotonic()
        if ctx.break_recovery:  # broken: the terminal is gone, not just its hooks
            await client.request("terminal/close", {"terminalId": tid})
        else:
            try:
                await execute(client, tid, BREAK_INTEGRATION[shell], timeout_s=10)
            except BridgeError as exc:
                tally.check(False, f"breaking command: {exc.detail[:60]}")
        for i in range(commands):
            code = i % 3
            try:
                answer = await execute(client, tid, f"echo chaos-{i}; sh -c 'exit {code}'")
            except BridgeError as exc:
                answer = {"error": exc.detail}
            good_out = tally.check(answer.get("output") == f"chaos-{i}\n", "output")
            good_code = tally.check(answer.get("exitCode") == code, "exit code")
            if good_out and good_code and rto == float("inf"):
                rto = (time.monotonic() - broken) * 1000
    return tally.result(
        f"integration broken ({shell})",
        rto,
        1,
        seed_ms=1_000,
        goal_ms=100,
        detail=f"hooks removed by a command, then {commands} commands with exit codes; "
        f"RTO = break to the first right answer.",
    )


async def user_exits(ctx: ChaosContext, shell: str) -> ChaosResult:
    exits = ctx.n(5, 3)
    tally = Tally()
    rtos: list[float] = []
    sut = ServerUnderTest(ctx.workdir, f"exits-{shell}")
    async with sut as client:
        tid = await new_terminal(client, shell, sut.workspace)
        first = await execute(client, tid, "echo ready")
        for i in range(exits):
            if ctx.break_recovery:
                with contextlib.suppress(BridgeError):
                    await client.request("terminal/close", {"terminalId": tid})
            started = time.monotonic()
            try:
                await execute(client, tid, "exit", timeout_s=10)
                tally.check(True, "exit answered")
            except BridgeError as exc:
                tally.check(False, f"exit: {exc.detail[:60]}")
            command = f"echo alive-{i}"

            async def next_command(command: str = command) -> Any:
                return await execute(client, tid, command)

            _, answer = await until_ok(
                next_command, lambda r: isinstance(r, dict), ctx.patience(10)
            )
            got = answer if isinstance(answer, dict) else {}
            if tally.check(got.get("output") == f"alive-{i}\n", "next command's output"):
                rtos.append((time.monotonic() - started) * 1000)
            tally.check(got.get("exitCode") == 0, "next command's exit code")
            tally.check(got.get("shell") == first.get("shell"), "shell changed")
            tally.check(got.get("mode") == first.get("mode"), "mode changed")
    rto = statistics.median(rtos) if rtos else float("inf")
    return tally.result(
        f"user exits in a row ({shell})",
        rto,
        exits,
        seed_ms=1_000,
        goal_ms=100,
        detail=f"`exit` {exits} times; each answered, the next command works in the same "
        f"shell and mode.",
    )


async def deaf_shell(ctx: ChaosContext, shell: str) -> ChaosResult:
    rounds = ctx.n(3, 1)
    tally = Tally()
    rtos: dict[str, list[float]] = {case: [] for case, _ in DEAFENING[shell]}
    sut = ServerUnderTest(ctx.workdir, f"deaf-{shell}")
    async with sut as client:
        for i in range(rounds):
            for j, (case, commands) in enumerate(DEAFENING[shell]):
                sub = (sut.workspace / f"sub-{i}-{j}").resolve()
                sub.mkdir()
                tid = await new_terminal(client, shell, sut.workspace)
                value = f"deaf-{i}-{j}"
                export = (
                    f"set -gx CHAOS_KEEP {value}"
                    if shell == "fish"
                    else f"export CHAOS_KEEP={value}"
                )
                await execute(client, tid, f"cd {sub}; {export}")
                if ctx.break_recovery:  # broken: the terminal is gone, not just deaf
                    with contextlib.suppress(BridgeError):
                        await client.request("terminal/close", {"terminalId": tid})
                started = time.monotonic()
                for command in commands:
                    # No idle timeout of the caller's: only the terminal can end the wait
                    # (a hard timeout for the program that ignores SIGINT, as its case says).
                    params: dict[str, Any] = {"terminalId": tid, "command": command}
                    if command == _IGNORES_SIGINT:
                        params["timeoutMs"] = 1000
                    try:
                        answer = await client.request(
                            "terminal/execute", params, timeout=ctx.patience(30)
                        )
                        tally.check(
                            answer.get("status") != "waiting_for_input", f"{case}: left waiting"
                        )
                    except (BridgeError, TimeoutError) as exc:
                        tally.check(False, f"{case}: {command!r} unanswered ({exc})"[:120])
                before = tally.lost
                await _state_kept(client, tid, sub, value, tally, within=ctx.patience(10))
                if tally.lost == before:
                    rtos[case].append((time.monotonic() - started) * 1000)
                with contextlib.suppress(BridgeError):
                    await client.request("terminal/close", {"terminalId": tid})
    medians = {case: statistics.median(v) if v else float("inf") for case, v in rtos.items()}
    return tally.result(
        f"deaf shells ({shell})",
        max(medians.values()),
        rounds * len(DEAFENING[shell]),
        seed_ms=10_000,
        goal_ms=5_000,
        detail="; ".join(medians) + "; RTO = the slowest case's median, from the deafening "
        "command sent to the next right answer (cwd, env). ",
        more=[
            figure_row(
                "chaos",
                f"deaf shells ({shell}), {case}: RTO",
                rto,
                "ms",
                higher_is_better=False,
                seed=10_000,
                goal=5_000,
                samples=len(rtos[case]),
            )
            for case, rto in medians.items()
        ],
    )


async def run_deaf_shells(ctx: ChaosContext) -> list[ChaosResult]:
    return [await deaf_shell(ctx, shell) for shell in available_shells(ctx)]


async def run_shell_killed(ctx: ChaosContext) -> list[ChaosResult]:
    return [await shell_killed(ctx, shell) for shell in available_shells(ctx)]


async def run_integration_broken(ctx: ChaosContext) -> list[ChaosResult]:
    return [await integration_broken(ctx, shell) for shell in available_shells(ctx)]


async def run_user_exits(ctx: ChaosContext) -> list[ChaosResult]:
    return [await user_exits(ctx, shell) for shell in available_shells(ctx)]
