"""The click command group behind `lapce-bridge` (every command but the `serve` fast path).

Subcommands live beside the code they drive and are imported only when invoked, so
`lapce-bridge exec` does not pay for importing the server, and each area owns its command.
"""

from __future__ import annotations

import importlib
import sys
from typing import BinaryIO, TextIO

import click

from lapce_bridge import __version__
from lapce_bridge.cli import COMMANDS, HELP


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module_name, _, attr = target.partition(":")
        try:
            command = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise click.ClickException(f"{cmd_name} is not available: {exc}") from exc
        if not isinstance(command, click.Command):
            raise click.ClickException(f"{target} is not a command")
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, HELP.get(name, "")) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="lapce-bridge")
def group() -> None:
    """A resilient backend for AI coding assistants: terminals, files, JSON-RPC."""


@click.command("osc-dump")
@click.argument("source", type=click.File("rb"), default="-")
@click.option("--json", "json_lines", is_flag=True, help="One JSON object per marker.")
@click.option("--strip", is_flag=True, help="Write the input with integration sequences removed.")
@click.option("--chunk-size", type=click.IntRange(min=1), default=65536, show_default=True)
@click.option("--nonce", default=None, help="The terminal's nonce, to trust its E markers.")
def osc_dump(
    source: BinaryIO, json_lines: bool, strip: bool, chunk_size: int, nonce: str | None
) -> None:
    """Feed a recorded PTY byte stream (FILE or -) through the OSC 633/133 parser."""
    from lapce_bridge.terminal.osc_dump import run

    out: BinaryIO | TextIO = sys.stdout.buffer if strip else sys.stdout
    try:
        code = run(
            source, out, json_lines=json_lines, strip=strip, chunk_size=chunk_size, nonce=nonce
        )
    except BrokenPipeError:
        from lapce_bridge.terminal.osc_dump import end_on_closed_stdout

        end_on_closed_stdout()
    except OSError as exc:
        raise click.ClickException(f"cannot read the stream: {exc}") from exc
    sys.exit(code)


@click.command(
    "serve",
    context_settings={"ignore_unknown_options": True, "help_option_names": []},
    add_help_option=False,
)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def serve(args: tuple[str, ...]) -> None:
    """Run the JSON-RPC server (Unix socket, stdio or TCP)."""
    from lapce_bridge.ipc.serve_cmd import main

    sys.exit(main(args))


__all__ = ["LazyGroup", "group", "osc_dump", "serve"]
