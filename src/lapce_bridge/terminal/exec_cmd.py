"""`lapce-bridge exec`: run one command through a shell-integrated terminal and exit with its code.

The command runs exactly as it would through `terminal/execute` (same shell integration,
output normalisation and fallbacks), in a terminal of its own that is closed afterwards.
Exit status: the command's; 124 when it timed out; 130 when it was interrupted; 1 when no exit
code could be known (fallback modes). With `--json` the ExecResult is printed as PROTOCOL.md's
wire dict.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import click

from lapce_bridge.terminal.result import ExecResult, Status


def exit_status(result: ExecResult) -> int:
    if result.status is Status.TIMED_OUT:
        return 124
    if result.exit_code is not None:
        return result.exit_code & 0xFF
    return 130 if result.status is Status.INTERRUPTED else 1


async def run_once(
    command: str, *, shell: str | None, cwd: str | None, limit: float | None, stream: bool
) -> ExecResult:
    from lapce_bridge.terminal.terminal import Terminal

    out = sys.stdout

    def on_data(text: str) -> None:
        out.write(text)
        out.flush()

    with tempfile.TemporaryDirectory(prefix="lapce-bridge-exec-") as state:
        async with await Terminal.start(shell=shell, cwd=cwd, state_dir=Path(state)) as term:
            return await term.execute(command, timeout=limit, on_data=on_data if stream else None)


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on POSIX
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


@click.command(
    "exec",
    context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False},
)
@click.option("--shell", default=None, help="Shell to run in (default: $SHELL, else bash).")
@click.option(
    "--cwd",
    default=None,
    type=click.Path(exists=True, file_okay=False),
    help="Directory to start in.",
)
@click.option("--timeout", default=None, type=click.FloatRange(min=0, min_open=True),
              help="Interrupt the command after this many seconds (exit status 124).")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print the ExecResult as JSON.")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def exec_command(
    shell: str | None,
    cwd: str | None,
    timeout: float | None,
    as_json: bool,
    command: tuple[str, ...],
) -> None:
    """Run COMMAND (all remaining words, joined by spaces) and exit with its exit code."""
    text = " ".join(command)
    try:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            result = runner.run(
                run_once(text, shell=shell, cwd=cwd, limit=timeout, stream=not as_json)
            )
    except Exception as exc:
        click.echo(f"lapce-bridge exec: {exc}", err=True)
        sys.exit(1)
    if as_json:
        import orjson

        sys.stdout.buffer.write(orjson.dumps(result.to_wire()) + b"\n")
        sys.stdout.flush()
    sys.exit(exit_status(result))
