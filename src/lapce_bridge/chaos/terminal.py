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


async def run_shell_killed(ctx: ChaosContext) -> list[ChaosResult]:
    return [await shell_killed(ctx, shell) for shell in available_shells(ctx)]


async def run_integration_broken(ctx: ChaosContext) -> list[ChaosResult]:
    return [await integration_broken(ctx, shell) for shell in available_shells(ctx)]


async def run_user_exits(ctx: ChaosContext) -> list[ChaosResult]:
    return [await user_exits(ctx, shell) for shell in available_shells(ctx)]
