"""`lapce-bridge serve`: a thin command around `run_server`, as uvicorn wraps its server.

The command parses options, sets up logging (stderr: stdout may be the stdio transport) and
the event loop (uvloop when installed), raises the open-file limit to its hard cap (a server
with a thousand clients needs a thousand descriptors), and runs `run_server` until a
`shutdown` request, SIGTERM/SIGINT (handlers restored afterwards; a second signal skips the
drain) or, on stdio, the end of stdin. It prints one line to stderr when ready:
`lapce-bridge: listening on <where>`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import importlib
import logging
import signal
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from lapce_bridge.core.errors import BridgeError
from lapce_bridge.ipc.framing import DEFAULT_MAX_MESSAGE_BYTES
from lapce_bridge.ipc.journal import JOURNAL_FILE, IdempotencyJournal
from lapce_bridge.ipc.paths import default_socket_path, default_state_dir, state_dir_ready

log = logging.getLogger("lapce_bridge.serve")


@dataclass(frozen=True, slots=True)
class ServeOptions:
    socket: Path | None = None
    stdio: bool = False
    listen: tuple[str, int] | None = None
    token: str | None = None
    allow_remote: bool = False
    workspace: Path | None = None
    state_dir: Path | None = None
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    shell: str | None = None
    extra_methods: tuple[str, ...] = ()
    shutdown_grace: float = 10.0
    metrics_port: int | None = None  # Prometheus /metrics on 127.0.0.1 (0: any free port)
    timeouts: tuple[tuple[str, float], ...] = ()  # (method, seconds): the dispatcher's limits


def journal_path(state_dir: Path, where: str) -> Path:
    # One journal per endpoint: two servers on different sockets never share running rows.
    digest = hashlib.sha256(where.encode()).hexdigest()[:12]
    stem, _, suffix = JOURNAL_FILE.partition(".")
    return state_dir / f"{stem}-{digest}.{suffix}"


def load_extra_methods(spec: str) -> Any:
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise click.BadParameter(f"expected MODULE:ATTRIBUTE, got {spec!r}")
    return getattr(importlib.import_module(module_name), attr)


async def run_server(opts: ServeOptions, *, announce: Callable[[str], None] | None = None) -> None:
    from lapce_bridge.app import App
    from lapce_bridge.ipc.server import BridgeServer

    # Private in every mode, --stdio included: spools hold command output (secrets too).
    state_dir = state_dir_ready(opts.state_dir or default_state_dir(), chosen=bool(opts.state_dir))
    socket_path = None
    if opts.stdio:
        where = "stdio"
        journal = IdempotencyJournal(None)  # a pipe has one client and dies with it
    elif opts.listen is not None:
        where = f"tcp:{opts.listen[0]}:{opts.listen[1]}"
        journal = IdempotencyJournal(journal_path(state_dir, where))
    else:
        socket_path = (opts.socket or default_socket_path()).absolute()
        where = f"unix:{socket_path}"
        journal = IdempotencyJournal(journal_path(state_dir, where))

    extras = [load_extra_methods(spec) for spec in opts.extra_methods]

    def extra_methods(app: Any) -> dict[str, Any]:
        table: dict[str, Any] = {}
        for extra in extras:
            table.update(extra(app) if callable(extra) else extra)
        return table

    from lapce_bridge.core.timeouts import TimeoutManager

    timeouts = TimeoutManager()
    for name, seconds in opts.timeouts:
        timeouts.set_override(name, seconds)
    async with App(
        workspace=opts.workspace,
        state_dir=state_dir,
        default_shell=opts.shell,
        extra_methods=extra_methods,
        timeouts=timeouts,
    ) as app:
        server = BridgeServer(
            app,
            max_message_bytes=opts.max_message_bytes,
            token=opts.token,
            journal=journal,
            shutdown_grace=opts.shutdown_grace,
        )
        stop_exporter: Callable[[], None] | None = None
        if opts.metrics_port is not None:
            from lapce_bridge.metrics_export import start_exporter

            port, stop_exporter = start_exporter(app.metrics, opts.metrics_port)
            log.info("Prometheus metrics on http://127.0.0.1:%d/metrics", port)
        # Signals stay captured through the drain in aclose(): a second one cuts it short.
        with capture_signals(server.request_shutdown), _finally(stop_exporter):
            try:
                if opts.stdio:
                    await server.serve_stdio()
                elif opts.listen is not None:
                    host, port = await server.listen_tcp(
                        *opts.listen, allow_remote=opts.allow_remote
                    )
                    where = f"tcp:{host}:{port}"
                else:
                    assert socket_path is not None
                    await server.listen_unix(socket_path)
                (announce or _announce)(where)
                await server.wait_for_shutdown()
            finally:
                await server.aclose()


@contextlib.contextmanager
def _finally(action: Callable[[], None] | None) -> Iterator[None]:
    try:
        yield
    finally:
        if action is not None:
            action()


def _announce(where: str) -> None:
    sys.stderr.write(f"lapce-bridge: listening on {where}\n")
    sys.stderr.flush()


@contextlib.contextmanager
def capture_signals(on_signal: Callable[[str], None]) -> Iterator[None]:
    """Turn SIGINT/SIGTERM into `on_signal(name)` on the loop; restore the old handlers."""
    loop = asyncio.get_running_loop()
    saved: dict[signal.Signals, Any] = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        saved[sig] = signal.getsignal(sig)
        loop.add_signal_handler(sig, on_signal, f"signal {sig.name}")
    try:
        yield
    finally:
        for sig, handler in saved.items():
            loop.remove_signal_handler(sig)
            signal.signal(sig, handler)


def raise_open_file_limit() -> None:
    with contextlib.suppress(ImportError, ValueError, OSError):
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        target = hard if hard != resource.RLIM_INFINITY else 65536
        if soft < target:
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(target, 1 << 20), hard))


def run(coro: Any) -> None:
    try:
        import uvloop

        uvloop.run(coro)
    except ImportError:  # pragma: no cover - uvloop is a dependency on POSIX
        asyncio.run(coro)


def _parse_listen(value: str | None) -> tuple[str, int] | None:
    if value is None:
        return None
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise click.BadParameter(f"expected HOST:PORT, got {value!r}", param_hint="--listen")
    return (host.strip("[]") or "127.0.0.1", int(port))


def _parse_timeouts(values: tuple[str, ...]) -> tuple[tuple[str, float], ...]:
    parsed: list[tuple[str, float]] = []
    for value in values:
        name, sep, seconds = value.rpartition("=")
        try:
            limit = float(seconds)
        except ValueError:
            limit = -1.0
        if not sep or not name or not 0 < limit < float("inf"):
            raise click.BadParameter(
                f"expected METHOD=SECONDS, got {value!r}", param_hint="--timeout"
            )
        parsed.append((name, limit))
    return tuple(parsed)


def _read_token(path: Path | None) -> str | None:
    if path is None:
        return None
    try:
        token = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise click.BadParameter(f"cannot read {path}: {exc.strerror}") from exc
    if not token:
        raise click.BadParameter(f"{path} is empty", param_hint="--token-file")
    if path.stat().st_mode & 0o077:
        log.warning("token file %s is readable by other users", path)
    return token


@click.command("serve")
@click.option(
    "--socket",
    "socket_path",
    type=click.Path(path_type=Path),
    default=None,
    help="Unix socket path (default: $XDG_RUNTIME_DIR/lapce-bridge/bridge.sock).",
)
@click.option("--stdio", is_flag=True, help="Serve one client over stdin/stdout.")
@click.option("--listen", default=None, metavar="HOST:PORT", help="Listen on TCP (needs a token).")
@click.option("--token-file", type=click.Path(path_type=Path, dir_okay=False), default=None)
@click.option("--allow-remote", is_flag=True, help="Allow a non-loopback TCP address.")
@click.option(
    "--workspace",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Workspace root (default: the current directory).",
)
@click.option(
    "--state-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Where the idempotency journal lives (default: $XDG_STATE_HOME/lapce-bridge).",
)
@click.option(
    "--max-message-bytes",
    type=click.IntRange(min=1024),
    default=DEFAULT_MAX_MESSAGE_BYTES,
    show_default=True,
)
@click.option("--shell", default=None, help="Default shell for terminals.")
@click.option(
    "--extra-methods",
    multiple=True,
    metavar="MODULE:ATTR",
    help="Also serve the methods of a table or factory(app) in MODULE.",
)
@click.option(
    "--shutdown-grace",
    type=click.FloatRange(min=0),
    default=10.0,
    show_default=True,
    help="Seconds in-flight work may take to finish on shutdown.",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    default=None,
    help="Serve Prometheus metrics on 127.0.0.1:PORT/metrics.",
)
@click.option(
    "--timeout",
    "timeouts",
    multiple=True,
    metavar="METHOD=SECONDS",
    help="The dispatcher's limit for METHOD (a command's own timeoutMs/maxWaitMs may extend it).",
)
@click.option(
    "--log-level",
    default="warning",
    show_default=True,
    type=click.Choice(["debug", "info", "warning", "error"]),
)
def serve(
    socket_path: Path | None,
    stdio: bool,
    listen: str | None,
    token_file: Path | None,
    allow_remote: bool,
    workspace: Path | None,
    state_dir: Path | None,
    max_message_bytes: int,
    shell: str | None,
    extra_methods: tuple[str, ...],
    shutdown_grace: float,
    metrics_port: int | None,
    timeouts: tuple[str, ...],
    log_level: str,
) -> None:
    """Run the JSON-RPC server (Unix socket, stdio or TCP)."""
    logging.basicConfig(
        level=log_level.upper(), stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s"
    )
    modes = sum((stdio, listen is not None, socket_path is not None))
    if modes > 1:
        raise click.UsageError("choose one of --socket, --stdio and --listen")
    parsed = _parse_listen(listen)
    token = _read_token(token_file)
    if parsed is not None and token is None:
        raise click.UsageError("--listen needs --token-file")
    opts = ServeOptions(
        socket=socket_path,
        stdio=stdio,
        listen=parsed,
        token=token,
        allow_remote=allow_remote,
        workspace=workspace,
        state_dir=state_dir,
        max_message_bytes=max_message_bytes,
        shell=shell,
        extra_methods=extra_methods,
        shutdown_grace=shutdown_grace,
        metrics_port=metrics_port,
        timeouts=_parse_timeouts(timeouts),
    )
    raise_open_file_limit()
    try:
        run(run_server(opts))
    except BridgeError as exc:
        raise click.ClickException(exc.detail) from exc


__all__ = ["ServeOptions", "capture_signals", "journal_path", "run_server", "serve"]
