"""The click command group behind `lapce-bridge` (every command but the `serve` fast path).

Subcommands live beside the code they drive and are imported only when invoked, so
`lapce-bridge exec` does not pay for importing the server, and each area owns its command.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Mapping
from typing import Any, BinaryIO, TextIO

import click

from lapce_bridge import __version__


class LazyGroup(click.Group):
    """Commands named by "module:attribute" in a table, imported when invoked."""

    def __init__(
        self, commands: Mapping[str, str], help_lines: Mapping[str, str], **kw: Any
    ) -> None:
        super().__init__(**kw)
        self.table = commands
        self.help_lines = help_lines

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(self.table)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = self.table.get(cmd_name)
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
        rows = [(name, self.help_lines.get(name, "")) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


def build(commands: Mapping[str, str], help_lines: Mapping[str, str]) -> click.Group:
    """The `lapce-bridge` group over the command table (`lapce_bridge.cli.COMMANDS`)."""

    @click.version_option(__version__, prog_name="lapce-bridge")
    def lapce_bridge() -> None:
        """A resilient backend for AI coding assistants: terminals, files, JSON-RPC."""

    return LazyGroup(
        commands,
        help_lines,
        name="lapce-bridge",
        callback=lapce_bridge,
        help=lapce_bridge.__doc__,
        params=getattr(lapce_bridge, "__click_params__", []),
        context_settings={"help_option_names": ["-h", "--help"]},
    )


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


__all__ = ["LazyGroup", "build", "osc_dump", "serve"]
