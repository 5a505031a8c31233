"""The `lapce-bridge` command line: the entry point, and the table of its commands.

Subcommands live beside the code they drive and are imported only when invoked, so
`lapce-bridge exec` does not pay for importing the server, and each area owns its command.
`lapce-bridge serve` does not import click at all (argparse, in `ipc.serve_cmd`): a server
is started by editors on every launch, and its time to the first answer is measured
(`lapce-bridge bench --only startup`). Every other command goes through the click group in
`lapce_bridge.commands`.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import click

# name -> "module:attribute" of a click.Command
COMMANDS: dict[str, str] = {
    "serve": "lapce_bridge.commands:serve",
    "exec": "lapce_bridge.terminal.exec_cmd:exec_command",
    "osc-dump": "lapce_bridge.commands:osc_dump",
    "bench": "lapce_bridge.bench.runner:bench",
    "chaos": "lapce_bridge.chaos.runner:chaos",
    "mcp": "lapce_bridge.mcp.cmd:mcp_command",
    "health": "lapce_bridge.health_cmd:health_command",
    "schema": "lapce_bridge.schema.document:schema_command",
}

HELP: dict[str, str] = {
    "serve": "Run the JSON-RPC server (Unix socket, stdio or TCP).",
    "exec": "Run one command in a shell-integrated terminal and exit with its code.",
    "osc-dump": "Show the shell-integration markers in a recorded PTY byte stream.",
    "bench": "Measure the figures of BENCHMARKS.md on this machine.",
    "chaos": "Inject faults and measure recovery (RTO, RPO).",
    "mcp": "Run the MCP server (stdio, or Streamable HTTP with --http).",
    "health": "Show a running server's health: operations, SLOs, pressure, alerts, incidents.",
    "schema": "Print the OpenRPC document of the protocol (every method's params and result).",
}


def main(argv: Sequence[str] | None = None) -> None:
    """`lapce-bridge [COMMAND] ...`; exits with the command's status."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["serve"]:
        from lapce_bridge.ipc.serve_cmd import main as serve

        sys.exit(serve(args[1:]))
    group().main(args, prog_name="lapce-bridge")


def group() -> click.Group:
    """The click group of every command (for `lapce-bridge COMMAND` and for tests)."""
    from lapce_bridge.commands import build

    return build(COMMANDS, HELP)


if __name__ == "__main__":  # pragma: no cover
    main()
