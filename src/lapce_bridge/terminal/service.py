"""The `terminal/*` JSON-RPC methods over a set of `Terminal`s.

Theory of operation: the service owns its terminals and one `SpoolStore` they share (so
`terminal/readOutput` finds any execution's output, and memory pressure trims one place).
Params are validated here, once, into clear `InvalidParams` errors; paths resolve against the
workspace and may not leave it (`PermissionDenied`, as for files). Who owns which terminal is
`ownership.Ownership`'s to decide: `terminalId` takes an id or a name given at
`terminal/create`; `terminal/execute` without `terminalId` uses the calling connection's own
default terminal, created on first use (two connections never share one); quotas per
connection; a closed connection's unnamed terminals are reaped after a grace, and orphans make
room when the server-wide maximum is reached. Answers that are not final (`waiting_for_input`,
`running`) report the shell's cwd as it is when they are sent. `terminal/sendText` to a terminal
running nothing is refused unless `atPrompt` says the text is meant for the prompt, and a line
left unfinished by `sendText` is erased (Ctrl-U) before the next command is typed, so it never
becomes part of that command. A busy terminal refuses a second
command (`TerminalError`, "busy") rather than interleave output; `idleTimeoutMs` (default
30 s) bounds how long a quiet command holds the request: it is then answered
`waiting_for_input`, keeps running, and its end arrives as `terminal/commandFinished` (or
through `terminal/wait`). `maxWaitMs` (default 120 s) does the same for a command that keeps
printing (a dev server): it is answered `running`. With `stream: true`, output is sent as
`terminal/data`, one notification per loop turn however many reads it took, numbered per
execution and kept in a bounded replay ring (`terminal.stream`), so a client that reconnects
resumes it with `terminal/resume`; run under an `idempotencyKey`, the command belongs to the
server and outlives the connection that started it. When
`features("shell_integration")` is off (degraded), new terminals start without integration.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from lapce_bridge.clock import SYSTEM_CLOCK
from lapce_bridge.core.clock import Clock
from lapce_bridge.core.errors import (
    Classification,
    ErrorCategory,
    ErrorSeverity,
    Fault,
    InvalidParams,
    PermissionDenied,
    ResourceExhausted,
    TerminalError,
)
from lapce_bridge.private import private_dir
from lapce_bridge.resources import Relief
from lapce_bridge.rpc import (
    DEFAULT_MAX_MESSAGE_BYTES,
    Broadcast,
    CallContext,
    Method,
    Observe,
    Params,
    method,
    notify_with_answer,
)
from lapce_bridge.terminal.files import new_private_dir, read_private, runtime_base, write_private
from lapce_bridge.terminal.foreground import process_cwd
from lapce_bridge.terminal.ownership import Ownership
from lapce_bridge.terminal.params import (
    DEFAULT_MAX_WAIT_MS,
    METHODS,
)
from lapce_bridge.terminal.params import param as _param
from lapce_bridge.terminal.params import seconds as _seconds
from lapce_bridge.terminal.recovery import CrashLoopPolicy
from lapce_bridge.terminal.result import ExecResult, TerminalExited
from lapce_bridge.terminal.spool import SpoolStats, SpoolStore
from lapce_bridge.terminal.startup import restore_file
from lapce_bridge.terminal.stream import OutputStreams, Streamer, StreamStats
from lapce_bridge.terminal.terminal import Terminal

log = logging.getLogger("lapce_bridge.terminal")

DEFAULT_IDLE_TIMEOUT_MS = 30_000
# Ceilings on what a client may ask for (issue: one request must not blow up memory or the
# reply). readOutput pages further below, so that JSON escaping never pushes a page over the
# message limit; an execute result holds at most maxOutputBytes of output, each byte escaping
# to at most 6 in JSON, hence the sixth of the message limit.
MAX_READ_LIMIT = 4 << 20
MAX_OUTPUT_BYTES = 2 << 20
REPLY_ENVELOPE_BYTES = 4096  # the answer around the output: ids, flags, cwd, recoveries
_KILL_LINE = "\x15"  # Ctrl-U: the line editors' (and the tty's VKILL) "erase this line"
_NOT_FINAL = ("waiting_for_input", "running")
# The caller's to fix: counted against neither health nor the error budget.
# The caller's to fix (it meant a command, or `atPrompt`): not against the server's health.
_IDLE_SEND = Classification(
    ErrorCategory.TERMINAL, ErrorSeverity.WARNING, False, True, Fault.CALLER
)


@dataclass(frozen=True, slots=True)
class ServiceStats:
    terminals: int
    busy: int
    executions: int
    deaths: int
    restarts: int
    reaped: int
    spools: SpoolStats
    streams: StreamStats


def _saved_exports(term: Terminal) -> bytes | None:
    """What the terminal's shell last saved of its exported variables (its hooks save them
    after every prompt), ready for a new shell of the same kind to source; None when nothing
    was saved. Kept in memory: the terminal's private folder goes when it closes."""
    if term.dir == Path():
        return None
    try:
        path = restore_file(term.dir, term.kind)
        return None if path is None else read_private(path)
    except OSError:
        return None


def _bounded(params: Params, name: str, default: int, ceiling: int, why: str) -> int:
    value: int = _param(params, name, int, default)
    if value > ceiling:
        raise InvalidParams(
            f"parameter {name!r} may be at most {ceiling} ({why}), not {value}",
            data={"limit": ceiling},
        )
    return value


@dataclass(frozen=True, slots=True)
class _RunOptions:
    """How one `terminal/execute` runs: its params but the command and the terminal."""

    cwd: str | None
    ansi: str
    max_bytes: int
    timeout: float | None
    idle: float | None
    max_wait: float | None
    stream: bool


_OPTION_PARAMS = frozenset(
    ("cwd", "ansi", "maxOutputBytes", "timeoutMs", "idleTimeoutMs", "maxWaitMs", "stream")
)


class TerminalService:
    def __init__(
        self,
        *,
        workspace: Path,
        state_dir: Path,
        clock: Clock = SYSTEM_CLOCK,
        observe: Observe | None = None,
        broadcast: Broadcast | None = None,
        features: Callable[[str], bool] | Any | None = None,
        default_shell: str | None = None,
        max_terminals: int = 256,
        max_terminals_per_connection: int = 32,
        orphan_grace: float = 30.0,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        crash_policy: CrashLoopPolicy | None = None,  # the recovery matrix's (App)
    ) -> None:
        self.workspace = Path(workspace).resolve()
        self.crash_policy = crash_policy
        self.state_dir = Path(state_dir)
        self.clock = clock
        self.observe = observe
        self.broadcast = broadcast
        # A DegradationManager is accepted as well as its bound `is_enabled`.
        is_enabled = getattr(features, "is_enabled", features)
        self._features: Callable[[str], bool] | None = is_enabled
        self.default_shell = default_shell
        self.max_terminals = max_terminals
        self.max_message_bytes = max_message_bytes
        self.spools = SpoolStore(self.state_dir / "spool")
        self.streams = OutputStreams()  # `stream: true` output, numbered and resumable
        self.terminals: dict[str, Terminal] = {}
        self.owners = Ownership(per_connection=max_terminals_per_connection, grace=orphan_grace)
        self._default_locks: dict[int, asyncio.Lock] = {}
        self._partial: set[str] = set()  # terminals where sendText left a line unfinished
        self._reapers: set[asyncio.Task[None]] = set()
        self._ids = itertools.count(1)
        self._by_execution: dict[str, str] = {}
        self._reaped = 0
        # Terminals closed to relieve pressure, by id (their owner entry kept): what starts
        # them again on next use.
        self._remembered: dict[str, dict[str, Any]] = {}
        # The options of a command given none (most are), checked once: (the message limit
        # they were checked for, them).
        self._default_options: tuple[int, _RunOptions] | None = None

    async def __aenter__(self) -> TerminalService:
        private_dir(self.state_dir)  # spools live here: 0700, ours, never a symlink
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        for task in list(self._reapers):
            task.cancel()
        terminals = list(self.terminals.values())
        self.terminals.clear()
        await asyncio.gather(*(t.close() for t in terminals), return_exceptions=True)
        self.spools.close()

    def feature(self, name: str) -> bool:
        return True if self._features is None else bool(self._features(name))

    def methods(self) -> dict[str, Method]:
        """The handler of each of `terminal.params.METHODS`, under the limit named there."""
        handlers = {
            "terminal/create": self.create,
            "terminal/execute": self.execute,
            "terminal/sendText": self.send_text,
            "terminal/interrupt": self.interrupt,
            "terminal/readOutput": self.read_output,
            "terminal/wait": self.wait,
            "terminal/list": self.list,
            "terminal/close": self.close,
            "terminal/resume": self.resume,
        }
        return {name: method(handlers[name], limit=limit) for name, limit in METHODS.items()}

    # -- helpers --------------------------------------------------------------------------
    def resolve_dir(self, raw: str) -> str:
        path = Path(raw) if os.path.isabs(raw) else self.workspace / raw
        real = Path(os.path.realpath(path))
        if real != self.workspace and self.workspace not in real.parents:
            raise PermissionDenied(f"cwd {raw!r} resolves outside the workspace {self.workspace}")
        if not real.is_dir():
            raise InvalidParams(f"cwd {raw!r} is not a directory")
        return str(real)

    def get(self, params: Params) -> Terminal:
        """The terminal `terminalId` names, by id or by the name it was created with."""
        key = _param(params, "terminalId", str)
        terminal_id = self.owners.resolve(key)
        term = self.terminals.get(terminal_id) if terminal_id is not None else None
        if term is None:
            if terminal_id in self._remembered:
                raise InvalidParams(
                    f"terminal {key!r} was closed while idle to relieve memory pressure; "
                    "terminal/execute on it starts it again (same cwd and env)"
                )
            raise InvalidParams(f"unknown terminalId {key!r}")
        return term

    async def _use_or_revive(self, params: Params, ctx: CallContext) -> Terminal:
        """`_use`, but a terminal reaped under pressure is started again, with its id."""
        terminal_id = self.owners.resolve(_param(params, "terminalId", str))
        if terminal_id is not None and terminal_id in self._remembered:
            term = await self._revive(terminal_id)
            self.owners.adopt(term.terminal_id, self._track(ctx))
            return term
        return self._use(params, ctx)

    async def _revive(self, terminal_id: str) -> Terminal:
        spec = self._remembered.pop(terminal_id)
        exports: bytes | None = spec.pop("exports", None)
        await self._make_room()
        if not exports:
            return await self._boot(terminal_id, **spec)
        # The variables its shell had exported when it was reaped, sourced by the new shell
        # from a private folder of their own (the old terminal's folder went with it).
        folder = new_private_dir(
            runtime_base(self.state_dir) / f"{terminal_id}-revive-{secrets.token_hex(4)}"
        )
        restore = folder / "restore"
        try:
            write_private(restore, exports)
            return await self._boot(terminal_id, restore=restore, **spec)
        finally:
            with contextlib.suppress(OSError):
                restore.unlink(missing_ok=True)
                folder.rmdir()

    def _use(self, params: Params, ctx: CallContext) -> Terminal:
        """`get`, by a connection that means to use the terminal: an orphan becomes its own."""
        term = self.get(params)
        self.owners.adopt(term.terminal_id, self._track(ctx))
        return term

    def _track(self, ctx: CallContext) -> int:
        """The caller's connection, registered once so its leaving is noticed."""
        conn = ctx.connection_id
        if not self.owners.known(conn):
            self.owners.connect(conn, getattr(ctx, "session", None))
            ctx.on_close(lambda: self._disconnected(conn))
        return conn

    def _disconnected(self, conn: int) -> None:
        self._default_locks.pop(conn, None)
        if self.owners.disconnect(conn, self.clock.now()):
            task = asyncio.get_running_loop().create_task(self._reap_orphans())
            self._reapers.add(task)
            task.add_done_callback(self._reapers.discard)

    async def _reap_orphans(self) -> None:
        await self.clock.sleep(self.owners.grace)
        ids = self.owners.due(self.clock.now())
        due = [self.terminals[t] for t in ids if t in self.terminals]
        for t in ids:  # reaped under pressure and now orphaned: nothing left to start again
            if self._remembered.pop(t, None) is not None:
                self._forget(t)
        for term in due:
            self._forget(term.terminal_id)
        self._reaped += len(due)
        await asyncio.gather(*(t.close() for t in due), return_exceptions=True)

    def _forget(self, terminal_id: str) -> None:
        self.terminals.pop(terminal_id, None)
        self.owners.remove(terminal_id)
        self._partial.discard(terminal_id)

    async def _make_room(self) -> None:
        """At the server-wide maximum, close the least recently used idle orphan, if any."""
        if len(self.terminals) < self.max_terminals:
            return
        idle = [
            self.terminals[t]
            for t in self.owners.orphans()
            if t in self.terminals and not self.terminals[t].busy
        ]
        if not idle:
            raise ResourceExhausted(f"at most {self.max_terminals} terminals may be open")
        victim = min(idle, key=lambda t: t.last_used)
        self._forget(victim.terminal_id)
        self._reaped += 1
        await victim.close()

    def _cwd_now(self, term: Terminal) -> str | None:
        """A busy shell may have changed directory since its last prompt said where it was."""
        if term.busy and term.pid is not None:
            return process_cwd(term.pid) or term.cwd
        return term.cwd

    def _answer(self, term: Terminal, result: ExecResult) -> dict[str, Any]:
        wire = result.to_wire()
        if wire["status"] in ("timed_out", "interrupted"):  # worth a line at the default level
            log.warning(
                "command %s on %s %s after %.0f ms",
                wire["executionId"],
                term.terminal_id,
                wire["status"].replace("_", " "),
                wire["durationMs"],
            )
        if wire["status"] in _NOT_FINAL and term.pid is not None:
            # The command may have changed directory since the last prompt reported one.
            wire["cwd"] = process_cwd(term.pid) or wire["cwd"]
        return wire

    def _on_exit(self, event: TerminalExited) -> None:
        if self.broadcast is not None:
            self.broadcast(
                "terminal/exited",
                {
                    "terminalId": event.terminal_id,
                    "exitCode": event.exit_code,
                    "willRecover": event.will_recover,
                },
            )

    async def open_terminal(
        self,
        *,
        shell: str | None = None,
        cwd: str | None = None,
        env: dict[str, str] | None = None,
        cols: int = 120,
        rows: int = 30,
        shell_integration: bool = True,
        owner: int | None = None,
        name: str | None = None,
        keep: bool = False,
    ) -> Terminal:
        if name is not None:
            self.owners.check_name(name)
        self.owners.admit(owner)
        await self._make_room()
        terminal_id = f"t{next(self._ids)}"
        self.owners.add(terminal_id, owner, name=name, keep=keep)
        return await self._boot(
            terminal_id,
            shell=shell,
            cwd=cwd,
            env=env,
            cols=cols,
            rows=rows,
            shell_integration=shell_integration,
        )

    async def restore_terminal(
        self,
        terminal_id: str,
        *,
        name: str | None,
        keep: bool,
        session: str | None,
        session_default: bool = False,
        restore: Path | None,
        **spec: Any,
    ) -> Terminal:
        """Open a terminal again under its old id (a new terminal host recreating what the
        dead one had): an orphan until a connection adopts it by id or resumes its session;
        `restore` is a file of the exported variables its old shell last saved."""
        owned = self.owners.add(terminal_id, None, name=name, keep=keep)
        owned.session = session
        number = terminal_id[1:]
        if number.isdigit():  # the next generated id comes after every restored one
            self._ids = itertools.count(max(int(number) + 1, next(self._ids)))
        term = await self._boot(terminal_id, restore=restore, **spec)
        if session is not None and session_default:
            self.owners.restore_session_default(session, terminal_id)
        return term

    async def _boot(
        self,
        terminal_id: str,
        *,
        shell: str | None,
        cwd: str | None,
        env: dict[str, str] | None,
        cols: int,
        rows: int,
        shell_integration: bool,
        restore: Path | None = None,
    ) -> Terminal:
        term = Terminal(
            terminal_id=terminal_id,
            shell=shell or self.default_shell,
            cwd=cwd or str(self.workspace),
            env=env,
            cols=cols,
            rows=rows,
            shell_integration=shell_integration and self.feature("shell_integration"),
            clock=self.clock,
            state_dir=self.state_dir,
            observe=self.observe,
            spools=self.spools,
            on_exit=self._on_exit,
            crash_policy=self.crash_policy,
        )
        self.terminals[terminal_id] = term
        try:
            await term.boot(restore)
        except BaseException:
            self._forget(terminal_id)
            await term.close()
            raise
        return term

    # -- methods --------------------------------------------------------------------------
    async def create(self, params: Params, ctx: CallContext) -> dict[str, Any]:
        env = _param(params, "env", dict, None)
        if env is not None and not all(
            isinstance(k, str) and isinstance(v, str) for k, v in env.items()
        ):
            raise InvalidParams("parameter 'env' must map strings to strings")
        cwd = _param(params, "cwd", str, None)
        cols = _param(params, "cols", int, 120)
        rows = _param(params, "rows", int, 30)
        if not (0 < cols < 10_000 and 0 < rows < 10_000):
            raise InvalidParams(f"bad terminal size {cols}x{rows}")
        name = _param(params, "name", str, None)
        keep = _param(params, "keep", bool, False)
        term = await self.open_terminal(
            shell=_param(params, "shell", str, None),
            cwd=self.resolve_dir(cwd) if cwd is not None else None,
            env=env,
            cols=cols,
            rows=rows,
            shell_integration=_param(params, "shellIntegration", bool, True),
            owner=self._track(ctx),
            name=name,
            keep=keep,
        )
        return {
            "terminalId": term.terminal_id,
            "shell": term.shell,
            "pid": term.pid,
            "mode": term.mode.value,
            "name": name,
        }

    def _default_open(self, ctx: CallContext) -> Terminal | None:
        """The calling connection's default terminal when it is open and nobody is opening
        or reviving it (`_default`'s answer then, without its lock); else None."""
        conn = ctx.connection_id
        lock = self._default_locks.get(conn)
        if lock is None or lock.locked():
            return None
        return self._default_of(conn)

    def _default_of(self, conn: int) -> Terminal | None:
        """The connection's default terminal, if it is open."""
        terminal_id = self.owners.default(conn)
        return self.terminals.get(terminal_id) if terminal_id is not None else None

    async def _default(self, ctx: CallContext) -> Terminal:
        """The calling connection's own default terminal, opened on first use."""
        conn = self._track(ctx)
        lock = self._default_locks.setdefault(conn, asyncio.Lock())
        async with lock:
            term = self._default_of(conn)
            if term is None:
                closed = self.owners.default(conn)  # closed to relieve pressure, maybe
                if closed is not None and closed in self._remembered:
                    term = await self._revive(closed)
            if term is None:
                term = await self.open_terminal(owner=conn)
                self.owners.set_default(conn, term.terminal_id)
            return term

    async def execute(self, params: Params, ctx: CallContext) -> dict[str, Any]:
        command = _param(params, "command", str)
        if params.get("terminalId") is not None:
            term = await self._use_or_revive(params, ctx)
        else:
            term = self._default_open(ctx) or await self._default(ctx)
        options = self._run_options(params)
        cwd = options.cwd
        stream = options.stream
        on_data = (
            Streamer(
                self.streams,
                self.streams.open(
                    ctx.notify, key=params.get("idempotencyKey"), terminal_id=term.terminal_id
                ),
                lambda: term.current,
            )
            if stream
            else None
        )
        terminal_id = term.terminal_id

        def finished(result: ExecResult) -> None:
            self._by_execution[result.execution_id] = terminal_id
            done = {
                "terminalId": terminal_id,
                "executionId": result.execution_id,
                "exitCode": result.exit_code,
                "cwd": result.cwd,
            }
            if on_data is not None:
                # A resumed stream's client hears of the end where its output now goes.
                on_data.flush()
                self.streams.name(on_data.stream, result.execution_id)
                self.streams.finish(on_data.stream, "terminal/commandFinished", done)
                return
            with contextlib.suppress(Exception):  # the connection may have gone meanwhile
                # Just before the result when it is the answer: both leave in one write.
                notify_with_answer(ctx, "terminal/commandFinished", done)

        if terminal_id in self._partial and not term.busy:
            # What sendText left unfinished at the prompt must not become part of this command.
            self._partial.discard(terminal_id)
            term.send_text(_KILL_LINE)
        try:
            result = await term.execute(
                command,
                timeout=options.timeout,
                idle_timeout=options.idle,
                max_wait=options.max_wait,
                max_output_bytes=options.max_bytes,
                ansi=options.ansi,
                on_data=on_data,
                received_at=ctx.received_at,
                cwd=self.resolve_dir(cwd) if cwd is not None else None,
                on_finished=finished,
            )
        except BaseException:
            if on_data is not None and on_data.stream.execution_id is None:
                self.streams.drop(on_data.stream)  # refused before it started
            raise
        self._by_execution[result.execution_id] = terminal_id
        if len(self._by_execution) > 4 * self.spools.max_count:
            for key in list(self._by_execution)[: self.spools.max_count]:
                del self._by_execution[key]
        return self._answer(term, result)

    def _run_options(self, params: Params) -> _RunOptions:
        """How a `terminal/execute` with these params runs (checked); a call that gives no
        option at all takes the defaults, checked once for the current message limit."""
        if not _OPTION_PARAMS.isdisjoint(params):
            return self._read_options(params)
        found = self._default_options
        if found is not None and found[0] == self.max_message_bytes:
            return found[1]
        options = self._read_options(params)
        self._default_options = (self.max_message_bytes, options)
        return options

    def _read_options(self, params: Params) -> _RunOptions:
        return _RunOptions(
            cwd=_param(params, "cwd", str, None),
            ansi=_param(params, "ansi", str, "strip"),
            max_bytes=_bounded(
                params,
                "maxOutputBytes",
                256 * 1024,
                self.max_output_ceiling(),
                "the result must fit one message; read the rest with terminal/readOutput",
            ),
            timeout=_seconds(params, "timeoutMs", None),
            idle=_seconds(params, "idleTimeoutMs", DEFAULT_IDLE_TIMEOUT_MS / 1000.0),
            max_wait=_seconds(params, "maxWaitMs", DEFAULT_MAX_WAIT_MS / 1000.0),
            stream=_param(params, "stream", bool, False),
        )

    def send_text(self, params: Params, ctx: CallContext) -> None:
        """`{terminalId, text, atPrompt?: false}`: type `text` into what runs in the terminal."""
        term = self._use(params, ctx)
        text = _param(params, "text", str)
        at_prompt = _param(params, "atPrompt", bool, False)
        if not term.busy and not at_prompt:
            raise TerminalError(
                f"terminal {term.terminal_id} is running nothing: the text would be typed at the "
                "shell's prompt. Run commands with terminal/execute, or pass atPrompt: true to "
                "type at the prompt",
                classification=_IDLE_SEND,
                data={"terminalId": term.terminal_id},
            )
        term.send_text(text)
        if text:
            if text[-1] in "\r\n":
                self._partial.discard(term.terminal_id)
            else:
                self._partial.add(term.terminal_id)

    async def interrupt(self, params: Params, ctx: CallContext) -> None:
        await self.get(params).interrupt()

    def read_output(self, params: Params, ctx: CallContext) -> dict[str, Any]:
        execution_id = _param(params, "executionId", str)
        offset = _param(params, "offset", int, 0)
        limit = _bounded(
            params, "limit", 1 << 20, MAX_READ_LIMIT, "read further pages from the returned offset"
        )
        budget = self.max_message_bytes - REPLY_ENVELOPE_BYTES
        while True:
            spool = self.spools.get(execution_id)
            data, nxt, eof = spool.read(offset, limit)
            # JSON escapes a control character in up to 6 bytes: a page that would pass the
            # message limit is shortened (the client goes on from `offset`), never sent whole.
            if limit * 6 <= budget or len(encoded := orjson.dumps(data)) <= budget:
                answer: dict[str, Any] = {"data": data, "offset": nxt, "eof": eof}
                if spool.lost_bytes:  # the running output's cap dropped part of it
                    answer["lostBytes"] = spool.lost_bytes
                return answer
            limit = max(1, min(limit // 2, limit * budget // len(encoded)))

    def resume(self, params: Params, ctx: CallContext) -> dict[str, Any]:
        """`{streams: [{executionId | idempotencyKey, seq, offset?}]}`: send the calling
        connection what it missed of each stream (after `seq`) and the streams' output from
        now on; an `overflow` names the bytes to read with readOutput (`terminal/stream`).
        The terminal of a stream still running becomes the caller's (a client back after a
        reconnect), so it is not reaped as its old connection's orphan."""
        answers = self.streams.resume(params.get("streams"), ctx.notify)
        for answer in answers:
            terminal_id = answer.get("terminalId")
            if terminal_id is not None and not answer.get("finished"):
                self.owners.adopt(terminal_id, self._track(ctx))
        return {"streams": answers}

    def max_output_ceiling(self) -> int:
        """The largest `maxOutputBytes` whose result fits one message however it escapes."""
        return max(16, min(MAX_OUTPUT_BYTES, (self.max_message_bytes - REPLY_ENVELOPE_BYTES) // 6))

    async def wait(self, params: Params, ctx: CallContext) -> dict[str, Any]:
        """`{executionId, timeoutMs?, idleTimeoutMs?}` -> the final ExecResult of a still-running
        command, or `waiting_for_input` (with the output since the last answer) when it asks
        for input again."""
        execution_id = _param(params, "executionId", str)
        within = _seconds(params, "timeoutMs", None)
        idle = _seconds(params, "idleTimeoutMs", DEFAULT_IDLE_TIMEOUT_MS / 1000.0)
        terminal_id = self._by_execution.get(execution_id)
        term = self.terminals.get(terminal_id) if terminal_id else None
        if term is None:
            raise InvalidParams(f"unknown executionId {execution_id!r}")
        return self._answer(term, await term.wait(execution_id, within, idle))

    def list(self, params: Params, ctx: CallContext) -> list[dict[str, Any]]:
        conn = ctx.connection_id
        listed = []
        for t in self.terminals.values():
            owned = self.owners.describe(t.terminal_id)
            listed.append(
                {
                    "terminalId": t.terminal_id,
                    "shell": t.shell,
                    "pid": t.pid,
                    "mode": t.mode.value,
                    "cwd": self._cwd_now(t),
                    "busy": t.busy,
                    "name": owned.name if owned is not None else None,
                    "mine": owned is not None and owned.owner == conn,
                    "default": self.owners.default(conn) == t.terminal_id,
                }
            )
        return listed

    async def close(self, params: Params, ctx: CallContext) -> None:
        wanted = self.owners.resolve(_param(params, "terminalId", str))
        if wanted is not None and self._remembered.pop(wanted, None) is not None:
            self._forget(wanted)  # reaped under pressure already: forgetting it is all
            return
        term = self.get(params)
        self._forget(term.terminal_id)
        await term.close()

    # -- resource manager hooks -----------------------------------------------------------
    async def reap_idle(self, max_idle_s: float) -> int:
        """Close terminals that ran nothing for `max_idle_s`; returns how many."""
        now = self.clock.now()
        idle = [
            t for t in self.terminals.values() if not t.busy and now - t.last_used >= max_idle_s
        ]
        for term in idle:
            # Out of the table, but its owner, name and default entry stay: next use
            # starts it again as it was.
            self.terminals.pop(term.terminal_id, None)
            self._partial.discard(term.terminal_id)
            self._remembered[term.terminal_id] = {
                "shell": term.requested_shell,
                "cwd": term.cwd or term.initial_cwd,
                "env": dict(term.extra_env),
                "cols": term.cols,
                "rows": term.rows,
                "shell_integration": term.shell_integration,
                "exports": _saved_exports(term),
            }
        await asyncio.gather(*(t.close() for t in idle), return_exceptions=True)
        self._reaped += len(idle)
        return len(idle)

    def trim_spools(self, keep_bytes: int) -> int:
        return self.spools.trim(keep_bytes)

    def relief(self, idle_after_s: float = 300.0) -> Relief:
        """What the resource manager may take back: spool memory (to disk), idle terminals."""

        async def reap() -> int:
            return await self.reap_idle(idle_after_s)

        return Relief("terminals", spill_spools=self.spools.spill, reap_idle=reap)

    def statistics(self) -> ServiceStats:
        terms = list(self.terminals.values())
        return ServiceStats(
            terminals=len(terms),
            busy=sum(1 for t in terms if t.busy),
            executions=sum(t.executions for t in terms),
            deaths=sum(len(t.deaths) for t in terms),
            restarts=sum(t.restarts for t in terms),
            reaped=self._reaped,
            spools=self.spools.statistics(),
            streams=self.streams.statistics(),
        )
