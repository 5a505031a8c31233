"""The `lapce-bridge` command line.

Subcommands live beside the code they drive and are imported only when invoked, so
`lapce-bridge exec` does not pay for importing the server, and each area owns its command.
"""

from __future__ import annotations

import importlib
import sys
from typing import BinaryIO, TextIO

import click

from lapce_bridge import __version__

# name -> "module:attribute" of a click.Command
COMMANDS: dict[str, str] = {
    "serve": "lapce_bridge.ipc.serve_cmd:serve",
    "exec": "lapce_bridge.terminal.exec_cmd:exec_command",
    "osc-dump": "lapce_bridge.cli:osc_dump",
    "bench": "lapce_bridge.bench.runner:bench",
    "chaos": "lapce_bridge.chaos.runner:chaos",
    "mcp": "lapce_bridge.mcp.cmd:mcp_command",
    "schema": "lapce_bridge.schema.document:schema_command",
}

HELP: dict[str, str] = {
    "serve": "Run the JSON-RPC server (Unix socket, stdio or TCP).",
    "exec": "Run one command in a shell-integrated terminal and exit with its code.",
    "osc-dump": "Show the shell-integration markers in a recorded PTY byte stream.",
    "bench": "Measure the figures of BENCHMARKS.md on this machine.",
    "chaos": "Inject faults and measure recovery (RTO, RPO).",
    "mcp": "Run the MCP server (stdio, or Streamable HTTP with --http).",
    "schema": "Print the OpenRPC document of the protocol (every method's params and result).",
}


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
def main() -> None:
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
    except OSError as exc:
        raise click.ClickException(f"cannot read the stream: {exc}") from exc
    sys.exit(code)


if __name__ == "__main__":  # pragma: no cover
    main()
