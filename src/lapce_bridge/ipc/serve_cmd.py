"""`lapce-bridge serve`: a thin command around `run_server`, as uvicorn wraps its server.

The command parses options, sets up logging (stderr: stdout may be the stdio transport) and
the event loop (uvloop when installed), raises the open-file limit to its hard cap (a server
with a thousand clients needs a thousand descriptors), and runs `run_server` until a
`shutdown` request, SIGTERM/SIGINT (handlers restored afterwards; a second signal skips the
drain) or, on stdio, the end of stdin. It prints one line to stderr when ready:
`lapce-bridge: listening on <where>`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import importlib
import logging
import signal
import socket
import sys
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lapce_bridge.core.errors import BridgeError, InvalidParams
from lapce_bridge.ipc.framing import DEFAULT_MAX_MESSAGE_BYTES
from lapce_bridge.ipc.journal import JOURNAL_FILE, IdempotencyJournal
from lapce_bridge.ipc.paths import (
    bind_unix_socket,
    default_socket_path,
    default_state_dir,
    file_identity,
    remove_socket,
    state_dir_ready,
)
from lapce_bridge.slo import SLO_FILE

if TYPE_CHECKING:
    from lapce_bridge.core.matrix import RecoveryMatrix

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
    memory_budget: int | None = None  # bytes the server and its terminals may use
    timeouts: tuple[tuple[str, float], ...] = ()  # (method, seconds): the dispatcher's limits
    terminal_host: bool = True  # terminals in a host process that outlives the server
    matrix: RecoveryMatrix | None = None  # --recovery-matrix's rows; None: the default table
    standby: bool = False  # load everything, then wait for a supervisor's line (ipc.standby)


def journal_path(state_dir: Path, where: str) -> Path:
    # One journal per endpoint: two servers on different sockets never share running rows.
    return endpoint_file(state_dir, where, JOURNAL_FILE)


def endpoint_file(state_dir: Path, where: str, filename: str) -> Path:
    """`filename` in the state directory, made this endpoint's own by a digest of it."""
    digest = hashlib.sha256(where.encode()).hexdigest()[:12]
    stem, _, suffix = filename.partition(".")
    return state_dir / f"{stem}-{digest}.{suffix}"


def load_extra_methods(spec: str) -> Any:
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise UsageError(f"--extra-methods: expected MODULE:ATTRIBUTE, got {spec!r}")
    return getattr(importlib.import_module(module_name), attr)


async def run_server(opts: ServeOptions, *, announce: Callable[[str], None] | None = None) -> None:
    # Private in every mode, --stdio included: spools hold command output (secrets too).
    state_dir = state_dir_ready(opts.state_dir or default_state_dir(), chosen=bool(opts.state_dir))
    socket_path = None
    bound: socket.socket | None = None
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
        # Bound before the server's modules load: a client connecting meanwhile (a
        # supervisor's reconnect after a restart) waits in the kernel's queue and is served
        # the moment the server is up, instead of being refused and retrying on a backoff.
        bound = bind_unix_socket(socket_path)
    identity = file_identity(socket_path) if socket_path is not None else None
    try:
        await _serve(opts, announce, state_dir, where, journal, socket_path, bound)
    except BaseException:
        if socket_path is not None and bound is not None and bound.fileno() >= 0:
            bound.close()  # never served: the socket file is ours to take back
            remove_socket(socket_path, identity)
        raise


async def _serve(
    opts: ServeOptions,
    announce: Callable[[str], None] | None,
    state_dir: Path,
    where: str,
    journal: IdempotencyJournal,
    socket_path: Path | None,
    bound: socket.socket | None,
) -> None:
    from lapce_bridge.app import App
    from lapce_bridge.ipc.server import BridgeServer

    extras = [load_extra_methods(spec) for spec in opts.extra_methods]
    # SLOs outlive the process, per endpoint; a stdio server's die with its pipe.
    slo_path = None if opts.stdio else endpoint_file(state_dir, where, SLO_FILE)

    def extra_methods(app: Any) -> dict[str, Any]:
        table: dict[str, Any] = {}
        for extra in extras:
            table.update(extra(app) if callable(extra) else extra)
        return table

    from lapce_bridge.core.matrix import DEFAULT_MATRIX
    from lapce_bridge.core.timeouts import TimeoutManager

    timeouts = TimeoutManager()
    for name, seconds in opts.timeouts:
        timeouts.set_override(name, seconds)
    app = App(
        workspace=opts.workspace,
        state_dir=state_dir,
        default_shell=opts.shell,
        extra_methods=extra_methods,
        timeouts=timeouts,
        memory_budget=opts.memory_budget,
        slo_path=slo_path,
        terminal_host=opts.terminal_host,
        matrix=opts.matrix or DEFAULT_MATRIX,
    )
    server = BridgeServer(
        app,
        max_message_bytes=opts.max_message_bytes,
        token=opts.token,
        journal=journal,
        shutdown_grace=opts.shutdown_grace,
    )
    # Listening comes first: the services open behind it (`initialize` and `ping` are
    # answered meanwhile, each service's methods from the moment it is open, and what needs
    # a service waits for it), so an editor's first answer does not pay for them.
    server.hold_until_open(app.method_names())
    app.on_open(server.serve_early)
    async with contextlib.AsyncExitStack() as stack:
        opening: asyncio.Task[None] | None = None
        stop_exporter: Callable[[], Awaitable[None]] | None = None
        # Signals stay captured through the drain in aclose(): a second one cuts it short.
        with capture_signals(server.request_shutdown):
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
                    await server.listen_unix(socket_path, bound)
                (announce or _announce)(where)
                opening = asyncio.get_running_loop().create_task(
                    _open_services(app, server, stack), name="open-services"
                )
                if opts.metrics_port is not None:  # after the line clients wait for
                    from lapce_bridge.ipc.metrics_http import serve_metrics

                    metrics_port, stop_exporter = await serve_metrics(
                        app.metrics, opts.metrics_port, gauges=app.gauges
                    )
                    log.info("Prometheus metrics on http://127.0.0.1:%d/metrics", metrics_port)
                await server.wait_for_shutdown()
            finally:
                if stop_exporter is not None:
                    await stop_exporter()
                await server.aclose()
                if opening is not None and not opening.done():
                    opening.cancel()  # shut down while opening: what opened is closed
                    await asyncio.gather(opening, return_exceptions=True)
        # The app's services close after the server (the stack), as they opened after it.
        if opening is not None and not opening.cancelled() and opening.exception() is not None:
            raise opening.exception()  # type: ignore[misc]
    log.info("stopped (%s)", where)


async def _open_services(app: Any, server: Any, stack: contextlib.AsyncExitStack) -> None:
    """Open the app (its services) behind the listener; a failure shuts the server down."""
    try:
        await stack.enter_async_context(app)
    except Exception as exc:
        log.error("the services failed to open: %s", exc)
        server.opened(exc)
        raise
    server.opened()


def stand_by(opts: ServeOptions) -> int | None:
    """`--standby`: load what serving needs, then wait for the supervisor's line (None:
    serve now) or the end of stdin (exit status 0); `standby.STALE` when the package's files
    changed meanwhile (this process would serve the old code)."""
    from lapce_bridge.app import service_modules
    from lapce_bridge.ipc import standby

    modules = ["lapce_bridge.app", "lapce_bridge.ipc.server", "lapce_bridge.core.matrix"]
    modules += ["lapce_bridge.core.timeouts", *service_modules(opts.terminal_host)]
    if opts.metrics_port is not None:
        modules.append("lapce_bridge.ipc.metrics_http")
    standby.load(modules)
    for spec in opts.extra_methods:
        load_extra_methods(spec)
    with contextlib.suppress(ImportError):
        import uvloop  # noqa: F401 - loaded ahead, as the rest
    files = standby.package_files()
    standby.announce_ready()
    if not standby.wait_for_go():
        return 0
    stale = standby.changed(files)
    if stale:
        log.warning(
            "standby: %d file(s) of the package changed since it loaded (%s): not serving "
            "old code; a server is to be started afresh",
            len(stale),
            stale[0],
        )
        return standby.STALE
    return None


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


class UsageError(Exception):
    """A bad option: reported as `lapce-bridge serve: error: ...`, exit status 2."""


def parse_listen(value: str | None) -> tuple[str, int] | None:
    if value is None:
        return None
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise UsageError(f"--listen: expected HOST:PORT, got {value!r}")
    return (host.strip("[]") or "127.0.0.1", int(port))


def _parse_timeouts(values: Sequence[str]) -> tuple[tuple[str, float], ...]:
    parsed: list[tuple[str, float]] = []
    for value in values:
        name, sep, seconds = value.rpartition("=")
        try:
            limit = float(seconds)
        except ValueError:
            limit = -1.0
        if not sep or not name or not 0 < limit < float("inf"):
            raise UsageError(f"--timeout: expected METHOD=SECONDS, got {value!r}")
        parsed.append((name, limit))
    return tuple(parsed)


MIN_TOKEN_BYTES = 16


def read_token(path: Path | None) -> str | None:
    """The TCP token: a file only its owner may read (0600), at least 16 bytes long."""
    if path is None:
        return None
    try:
        st = path.stat()
        token = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise UsageError(f"--token-file: cannot read {path}: {exc.strerror}") from exc
    if not token:
        raise UsageError(f"--token-file: {path} is empty")
    if st.st_mode & 0o077:
        raise UsageError(
            f"--token-file: {path} may be read by other users "
            f"(mode {st.st_mode & 0o777:o}); chmod 600 it"
        )
    if len(token.encode()) < MIN_TOKEN_BYTES:
        raise UsageError(
            f"--token-file: the token in {path} is shorter than {MIN_TOKEN_BYTES} bytes; "
            "a short token is guessed"
        )
    return token


def _at_least(minimum: float, kind: Callable[[str], Any]) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        value = kind(text)
        if value < minimum:
            raise ValueError(text)
        return value

    convert.__name__ = kind.__name__
    return convert


def byte_size(text: str) -> int:
    """A size in bytes: digits with an optional K, M, G or T suffix (powers of 1024)."""
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    clean = text.strip().upper().removesuffix("IB").removesuffix("B")
    number = clean.rstrip("KMGT")
    unit = clean[len(number) :]
    if not number.isdigit() or unit not in units or int(number) == 0:
        raise ValueError(text)
    return int(number) * units[unit]


def _folder(text: str) -> Path:
    """An existing folder, checked before anything listens (a server that bound its socket
    and then failed to open its services printed "listening" and a traceback)."""
    path = Path(text)
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is not a folder")
    return path


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value < 65536:
        raise ValueError(text)
    return value


def parser() -> argparse.ArgumentParser:
    """The options of `lapce-bridge serve` (argparse: click costs the start-up too much)."""
    p = argparse.ArgumentParser(
        prog="lapce-bridge serve",
        description="Run the JSON-RPC server (Unix socket, stdio or TCP).",
    )
    p.add_argument(
        "--socket",
        type=Path,
        help="Unix socket path (default: $XDG_RUNTIME_DIR/lapce-bridge/bridge.sock).",
    )
    p.add_argument("--stdio", action="store_true", help="Serve one client over stdin/stdout.")
    p.add_argument("--listen", metavar="HOST:PORT", help="Listen on TCP (needs a token).")
    p.add_argument(
        "--token-file",
        type=Path,
        help="A file (mode 0600, 16 bytes or more) holding the TCP token.",
    )
    p.add_argument("--allow-remote", action="store_true", help="Allow a non-loopback TCP address.")
    p.add_argument(
        "--workspace", type=_folder, help="Workspace root (default: the current directory)."
    )
    p.add_argument(
        "--state-dir",
        type=Path,
        help="Where the idempotency journal lives (default: $XDG_STATE_HOME/lapce-bridge).",
    )
    p.add_argument(
        "--max-message-bytes",
        type=_at_least(1024, int),
        default=DEFAULT_MAX_MESSAGE_BYTES,
        help="Largest message accepted (default: %(default)s).",
    )
    p.add_argument("--shell", help="Default shell for terminals.")
    p.add_argument(
        "--extra-methods",
        action="append",
        default=[],
        metavar="MODULE:ATTR",
        help="Also serve the methods of a table or factory(app) in MODULE.",
    )
    p.add_argument(
        "--shutdown-grace",
        type=_at_least(0.0, float),
        default=10.0,
        help="Seconds in-flight work may take to finish on shutdown (default: %(default)s).",
    )
    p.add_argument(
        "--metrics-port", type=_port, help="Serve Prometheus metrics on 127.0.0.1:PORT/metrics."
    )
    p.add_argument(
        "--memory-budget",
        type=byte_size,
        metavar="SIZE",
        help="Memory the server and its terminals may use, e.g. 512M or 2G (default 512M).",
    )
    p.add_argument(
        "--timeout",
        action="append",
        default=[],
        metavar="METHOD=SECONDS",
        help="The server's limit for METHOD (a command's own timeoutMs/maxWaitMs may extend it).",
    )
    p.add_argument(
        "--terminal-host",
        choices=["on", "off"],
        default="on",
        help="on: terminals live in a host process that survives a restart or crash of the "
        "server; off: in the server's own process (default: %(default)s).",
    )
    p.add_argument(
        "--recovery-matrix",
        type=Path,
        metavar="FILE",
        help="A TOML or JSON file of recovery matrix rows that replace the default ones "
        "(README: The recovery matrix).",
    )
    p.add_argument(
        "--standby",
        action="store_true",
        help="Load everything, then wait for a line on stdin before serving (a supervisor's "
        "warm spare; the end of stdin ends it).",
    )
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument(
        "--log-format",
        default="text",
        choices=["text", "json"],
        help="Log lines on stderr: text with timestamps, or one JSON object each.",
    )
    return p


def options(argv: Sequence[str]) -> ServeOptions:
    """Parse and check the command line (UsageError, or SystemExit from argparse)."""
    args = parser().parse_args(list(argv))
    modes = sum((args.stdio, args.listen is not None, args.socket is not None))
    if modes > 1:
        raise UsageError("choose one of --socket, --stdio and --listen")
    if args.standby and args.stdio:
        raise UsageError("--standby waits on stdin: it cannot serve over --stdio")
    listen = parse_listen(args.listen)
    token = read_token(args.token_file)
    if listen is not None and token is None:
        raise UsageError("--listen needs --token-file")
    for spec in args.extra_methods:
        module_name, _, attr = spec.partition(":")
        if not module_name or not attr:
            raise UsageError(f"--extra-methods: expected MODULE:ATTRIBUTE, got {spec!r}")
    matrix = None
    if args.recovery_matrix is not None:
        from lapce_bridge.core.matrix import load_matrix

        try:
            matrix = load_matrix(args.recovery_matrix)
        except InvalidParams as exc:
            raise UsageError(f"--recovery-matrix: {exc.detail}") from exc
    from lapce_bridge.logsetup import configure

    configure(args.log_level, args.log_format)
    return ServeOptions(
        socket=args.socket,
        stdio=args.stdio,
        listen=listen,
        token=token,
        allow_remote=args.allow_remote,
        workspace=args.workspace,
        state_dir=args.state_dir,
        max_message_bytes=args.max_message_bytes,
        shell=args.shell,
        extra_methods=tuple(args.extra_methods),
        shutdown_grace=args.shutdown_grace,
        metrics_port=args.metrics_port,
        memory_budget=args.memory_budget,
        timeouts=_parse_timeouts(args.timeout),
        terminal_host=args.terminal_host == "on",
        matrix=matrix,
        standby=args.standby,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """`lapce-bridge serve [OPTIONS]`: the exit status (0, 1 on a fault, 2 on bad options)."""
    try:
        opts = options(sys.argv[1:] if argv is None else argv)
    except UsageError as exc:
        sys.stderr.write(f"lapce-bridge serve: error: {exc}\n")
        return 2
    except SystemExit as exc:  # argparse: --help, or an option it refused
        return exc.code if isinstance(exc.code, int) else 2
    if opts.standby and (status := stand_by(opts)) is not None:
        return status
    raise_open_file_limit()
    try:
        run(run_server(opts))
    except UsageError as exc:
        sys.stderr.write(f"lapce-bridge serve: error: {exc}\n")
        return 2
    except BridgeError as exc:
        sys.stderr.write(f"lapce-bridge serve: error: {exc.detail}\n")
        return 1
    return 0


__all__ = [
    "ServeOptions",
    "UsageError",
    "capture_signals",
    "journal_path",
    "main",
    "options",
    "parse_listen",
    "read_token",
    "run_server",
]
