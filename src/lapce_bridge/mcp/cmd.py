"""`lapce-bridge mcp`: the MCP server over stdio (default) or Streamable HTTP at /mcp.

Over HTTP the server listens on loopback unless `--allow-remote`, and every request must
carry `Authorization: Bearer <token>` with the content of `--token-file` (compared in
constant time; a missing or wrong token is 401 before the MCP layer sees the request). On
loopback the SDK's DNS-rebinding protection is on as well (Host and Origin must be local).
The MCP SDK is imported here, when the command runs, never by `serve`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import logging
import signal
import socket
import sys
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

import click

from lapce_bridge.core.errors import PermissionDenied
from lapce_bridge.ipc.paths import default_state_dir, state_dir_ready
from lapce_bridge.ipc.serve_cmd import (
    UsageError,
    parse_listen,
    raise_open_file_limit,
    read_token,
    run,
)

log = logging.getLogger("lapce_bridge.mcp")

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class BearerGate:
    """ASGI middleware: HTTP requests without the right bearer token get 401."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self._expected = f"Bearer {token}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            given = b""
            for name, value in scope.get("headers", ()):
                if name == b"authorization":
                    given = value
                    break
            if not hmac.compare_digest(given, self._expected):
                await send(
                    {
                        "type": "http.response.start",
                        "status": 401,
                        "headers": [
                            (b"content-type", b"application/json"),
                            (b"www-authenticate", b'Bearer realm="lapce-bridge"'),
                        ],
                    }
                )
                await send(
                    {
                        "type": "http.response.body",
                        "body": b'{"error":"missing or wrong bearer token"}',
                    }
                )
                return
        await self.app(scope, receive, send)


async def serve_stdio(workspace: Path | None, state_dir: Path | None, shell: str | None) -> None:
    from mcp.server.stdio import stdio_server

    from lapce_bridge.mcp.server import Backend, build_server
    from lapce_bridge.mcp.stdio import pipe_stdio, serve_pipes, watchable

    backend = Backend(workspace=workspace, state_dir=state_dir, shell=shell)
    server = build_server(backend)
    try:
        if watchable(0) and watchable(1):
            async with pipe_stdio() as (lines_in, lines_out):
                print("lapce-bridge: MCP on stdio", file=sys.stderr, flush=True)
                await serve_pipes(server, lines_in, lines_out)
        else:
            async with stdio_server() as (read, write):
                print("lapce-bridge: MCP on stdio", file=sys.stderr, flush=True)
                await server.run(read, write, server.create_initialization_options())
    finally:
        await backend.aclose()


async def serve_http(
    host: str,
    port: int,
    token: str,
    *,
    workspace: Path | None,
    state_dir: Path | None,
    shell: str | None,
    allow_remote: bool,
) -> None:
    import uvicorn
    from mcp.server.transport_security import TransportSecuritySettings

    from lapce_bridge.mcp.server import Backend, build_server

    backend = Backend(workspace=workspace, state_dir=state_dir, shell=shell)
    server = build_server(backend)
    security = None
    if allow_remote and not is_loopback(host):
        # Remote clients name this host however they reach it; the token is the guard.
        security = TransportSecuritySettings(enable_dns_rebinding_protection=False)
    app = server.streamable_http_app(host=host, transport_security=security)
    config = uvicorn.Config(
        BearerGate(app, token), host=host, port=port, log_level="warning", lifespan="on"
    )
    web = uvicorn.Server(config)
    # Our handlers, not uvicorn's (which re-raise the signal after serving, before the
    # terminals are closed): a signal ends serving, then everything is closed in order.
    web.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, lambda: setattr(web, "should_exit", True))
    # Bound here, so the address (a port 0 picked by the system) is known before serving.
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise click.ClickException(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
    bound = sock.getsockname()
    shown = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
    try:
        print(f"lapce-bridge: MCP on http://{shown}:{bound[1]}/mcp", file=sys.stderr, flush=True)
        await web.serve(sockets=[sock])
    finally:
        sock.close()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await backend.aclose()


@click.command("mcp")
@click.option(
    "--workspace",
    type=click.Path(path_type=Path, file_okay=False, exists=True),
    default=None,
    help="Workspace root (default: the client's first root, else the current directory).",
)
@click.option("--http", "http", default=None, metavar="HOST:PORT", help="Streamable HTTP at /mcp.")
@click.option("--allow-remote", is_flag=True, help="Allow a non-loopback --http address.")
@click.option("--token-file", type=click.Path(path_type=Path, dir_okay=False), default=None)
@click.option("--shell", default=None, help="Default shell for terminals.")
@click.option(
    "--state-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Where terminal state lives (default: $XDG_STATE_HOME/lapce-bridge).",
)
@click.option(
    "--log-level",
    default="warning",
    show_default=True,
    type=click.Choice(["debug", "info", "warning", "error"]),
)
def mcp_command(
    workspace: Path | None,
    http: str | None,
    allow_remote: bool,
    token_file: Path | None,
    shell: str | None,
    state_dir: Path | None,
    log_level: str,
) -> None:
    """Run the MCP server (stdio, or Streamable HTTP with --http)."""
    logging.basicConfig(
        level=log_level.upper(), stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s"
    )
    raise_open_file_limit()
    # Private as serve's: a chosen folder others can see into is refused, our default tightened.
    try:
        state = state_dir_ready(state_dir or default_state_dir(), chosen=state_dir is not None)
    except PermissionDenied as exc:
        raise click.ClickException(str(exc)) from exc
    ws = workspace.resolve() if workspace is not None else None
    if http is None:
        run(serve_stdio(ws, state, shell))
        return
    try:
        parsed = parse_listen(http)
        token = read_token(token_file)
    except UsageError as exc:
        raise click.UsageError(str(exc)) from exc
    assert parsed is not None
    host, port = parsed
    if not is_loopback(host) and not allow_remote:
        raise click.UsageError(f"{host} is not a loopback address; add --allow-remote")
    if token is None:
        raise click.UsageError("--http needs --token-file (clients send it as a bearer token)")
    run(
        serve_http(
            host, port, token, workspace=ws, state_dir=state, shell=shell,
            allow_remote=allow_remote,
        )
    )  # fmt: skip


__all__ = ["BearerGate", "is_loopback", "mcp_command", "serve_http", "serve_stdio"]
