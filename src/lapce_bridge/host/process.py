"""The terminal host: the process that owns the terminals, so a server restart loses none.

Theory of operation: the host runs the very `TerminalService` the server runs in-process (so
every terminal behaviour is the same) and serves it over a private Unix socket to the server
(`host.link` messages). It is small and dull on purpose: no client protocol, no files service,
no pressure sampling, nothing but terminals, their spools and the keyed executions' journal.

- Identity: the server tells, with each request, which of its client connections asked
  (`c`) and under which session (`s`). The host gives each (link, connection) its own
  connection id, so `terminal/ownership.py`'s rules apply unchanged: per-connection defaults,
  quotas, sessions, orphans adopted by use of their id. When the server says a connection
  closed, or when the server's link drops (it was killed), each of its connections is closed
  for the service: their terminals become orphans with the usual grace. The restarted server's
  clients take them back by session or by using their ids.
- Work outlives the link: a command running when the server dies is not cancelled (its
  answer has nowhere to go, but `terminal/wait` gets its result, and a keyed
  `terminal/execute` sent again with its `idempotencyKey` joins it: the host keeps the key
  to execution map (`ipc.idempotency`, with its own journal), so the replay is answered with
  the real result). A streaming execution whose connection left sends its output to the
  connection that joined it by key.
- Only the server's cancel (`cancel`: the client cancelled, or left) stops a command.
- Notifications (`terminal/data`, `terminal/commandFinished`) go to the connection they are
  for; broadcasts (`terminal/exited`) to every server; operations the host times (a shell's
  recovery) to the servers' metrics and incidents, kept until a server is there to hear.
- Persistence: each terminal's id, name, shell, cwd, env and private folder are written to
  `terminals.json` when they change; a host that starts and finds them (its predecessor was
  killed) recreates the terminals under the same ids, restores cwd and exported env, and
  reports each as a `recreate_terminal` recovery (in the next result, as `terminal/exited`
  with `willRecover`, and as an incident).
- Versions: the first message of a link is `hello` with the link's protocol version and the
  package version; a mismatch is refused, and the host drains: it stops listening, tells its
  servers (they attach a new host for new work), takes no new command, lets running ones
  finish (bounded) with their answers going to who asked, spills finished output to disk,
  writes down the terminals and those outputs, and exits. The new host, waiting for the
  lock meanwhile, then recreates the terminals and serves the outputs.
- One host per state folder and workspace: it holds an exclusive lock on `host.lock` for its
  whole life (the file says its pid); a second host started meanwhile waits for the lock
  while the first drains, or exits when the first still answers.
- Output held while no server listens: when the last server's link drops (it was killed,
  and its supervisor is starting the next one), the running commands' output is not read
  for a moment: their writes wait in the PTY's buffer and they block once it is full, so a
  command streaming output does not take the CPU the next server needs to start. Nothing is
  lost or repeated: the bytes are read, in order, once released: `OUTPUT_RELEASE` after a
  server is welcomed (its queued requests are answered first), or after `OUTPUT_HOLD`
  seconds with no server.
- It exits by itself when no server has been attached for `linger` seconds, or sooner when it
  has no terminal left; SIGTERM closes its terminals and exits.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import fcntl
import logging
import os
import signal
import sys
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import orjson

from lapce_bridge import __version__
from lapce_bridge.clock import SYSTEM_CLOCK
from lapce_bridge.core.errors import (
    BridgeError,
    InvalidParams,
    MethodNotFound,
    TerminalError,
    Unavailable,
)
from lapce_bridge.host import link
from lapce_bridge.host.attach import policy_from_wire
from lapce_bridge.host.hostlog import BACKUPS, MAX_BYTES, bounded_log
from lapce_bridge.host.places import HostPlaces, host_pid, host_places
from lapce_bridge.host.specs import EMPTY, SpecWriter, hand_over, load, restore_all, snapshot
from lapce_bridge.ipc import jsonrpc
from lapce_bridge.ipc.framing import encode
from lapce_bridge.ipc.idempotency import (
    Idempotency,
    Outcome,
    encode_outcome,
    shutting_down,
    signature,
)
from lapce_bridge.ipc.journal import IdempotencyJournal
from lapce_bridge.ipc.paths import bind_unix_socket, file_identity, probe, remove_socket
from lapce_bridge.private import open_private_file
from lapce_bridge.rpc import DEFAULT_MAX_MESSAGE_BYTES, CallContext, Method, method
from lapce_bridge.terminal.service import TerminalService

log = logging.getLogger("lapce_bridge.host")

# Seconds a draining host waits for its running commands. Its successor cannot take the
# terminals before it is gone, so new terminal requests are refused (-32002, retryable)
# meanwhile: the wait is bounded by what a client can be kept waiting, not by the longest
# build. Commands still running then are ended and reported lost (their terminals are
# recreated by the successor with their cwd and env; `terminal/wait` says they were lost).
DRAIN_LIMIT = 30.0
# What the successor allows for the hand-over after that (spill, write down, close shells).
HANDOVER_MARGIN = 30.0
# The running commands' output is held at most this long while no server listens (a
# supervised server is back within a fraction of that), and released this long after one
# is welcomed.
OUTPUT_HOLD = 1.0
OUTPUT_RELEASE = 0.05
SPEC_INTERVAL = 0.5
STATS_INTERVAL = 1.0
_KEEP_OBSERVED = 256  # operations timed while no server listened, kept for the next one


class _Client:
    """One client connection of one server, as the terminal service sees it."""

    __slots__ = ("callbacks", "closed", "conn", "id", "joined", "link", "session")

    def __init__(self, host_id: int, link_: HostLink, conn: int, session: str | None) -> None:
        self.id = host_id
        self.link = link_
        self.conn = conn
        self.session = session
        self.callbacks: list[Callable[[], None]] = []
        self.closed = False
        self.joined: _Client | None = None  # who took over its keyed work after it left

    def notify(self, method: str, params: Any) -> None:
        target = self
        while target.closed and target.joined is not None:
            target = target.joined
        if not target.closed:
            target.link.write(target.frame(method, params))

    def frame(self, method: str, params: Any, rides: int | None = None) -> bytes:
        """A notification for this connection, framed for its link; `rides`: the request
        whose answer it comes with (the server sends both to the client at once)."""
        header: dict[str, Any] = {"n": method, "c": self.conn}
        if rides is not None:
            header["a"] = rides
        return link.frame(header, link.payload_of(params))

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        callbacks, self.callbacks = self.callbacks, []
        for callback in callbacks:
            try:
                callback()
            except Exception:
                log.exception("a close callback failed")


class _Context:
    """The `CallContext` the terminal service gets for one request."""

    __slots__ = ("_client", "held", "received_at", "reply_id")

    def __init__(self, client: _Client, received_at: float, reply_id: Any = None) -> None:
        self._client = client
        self.received_at = received_at
        # The client's id of the request, when the server takes a result framed for its
        # client here (`framed`); None: answered on the link's own terms.
        self.reply_id = reply_id
        # While the request waits for its answer: what rides with it (`notify_with_answer`),
        # in order; None: notifications go at once.
        self.held: list[tuple[str, Any]] | None = None

    @property
    def connection_id(self) -> int:
        return self._client.id

    @property
    def session(self) -> str | None:
        return self._client.session

    def notify(self, method: str, params: Any) -> None:
        self._client.notify(method, params)

    def notify_with_answer(self, method: str, params: Any) -> None:
        """A notification that comes just before this request's answer
        (`terminal/commandFinished`): held, and written with the answer in one write (one
        wake-up of the server, which sends both to its client at once, the same way); at
        once when the answer has gone or its connection has."""
        held = self.held
        if held is not None and not self._client.closed:
            held.append((method, params))
        else:
            self._client.notify(method, params)

    def answered(self, q: int, answer: bytes) -> bytes:
        """What to write for the answer `answer` to request `q`: the held notifications
        first, then it; from now on notifications are sent as they come. Those of a
        connection that left go where its work went (`_Client.notify`); the answer then goes
        nowhere."""
        held, self.held = self.held, None
        if not held:
            return answer
        client = self._client
        if client.closed:
            for name, params in held:
                client.notify(name, params)
            return answer
        return b"".join([*(client.frame(name, params, q) for name, params in held), answer])

    def framed(self, result: bytes) -> bytes | None:
        """A result as the server's client reads it, which the server writes as it comes:
        the held notifications, then the response to `reply_id`, each framed for the client
        protocol (encoded here once, not parsed and encoded again in the server). None when
        the server did not ask for it or the connection left (then `answered`)."""
        reply_id = self.reply_id
        if reply_id is None or self._client.closed:
            return None
        held, self.held = self.held, None
        frames = []
        for name, params in held or ():
            try:
                frames.append(encode(jsonrpc.notification_bytes(name, params)))
            except TypeError:
                log.exception("notification %s is not JSON-serialisable", name)
        response = {"jsonrpc": "2.0", "id": reply_id, "result": orjson.Fragment(result)}
        frames.append(encode(orjson.dumps(response)))
        return b"".join(frames)

    def release(self) -> None:
        """Nobody waits for the answer any more: what was held goes out now."""
        held, self.held = self.held, None
        for name, params in held or ():
            self._client.notify(name, params)

    def on_close(self, callback: Callable[[], None]) -> None:
        if self._client.closed:
            callback()
        else:
            self._client.callbacks.append(callback)


class _KeyedAnswer:
    """A request waiting for a keyed execution's outcome, with no task and no shield of its
    own: the first asker is handed the outcome by the execution as soon as it is recorded
    (`Idempotency.start`'s `then`: answered in that same step), a repeat of the key by the
    outcome's future (its done callback, a loop turn later)."""

    __slots__ = ("ctx", "future", "host", "link", "q")

    def __init__(self, host: TerminalHost, lk: HostLink, q: int, ctx: _Context) -> None:
        self.host = host
        self.link = lk
        self.q = q
        self.ctx = ctx
        self.future: asyncio.Future[Outcome] | None = None

    def join(self, future: asyncio.Future[Outcome]) -> None:
        """Answer from `future` (the key's execution was started by another request)."""
        self.future = future
        future.add_done_callback(self._done)

    def cancel(self) -> None:
        """The server no longer waits (the execution goes on: only `cancelKey` stops it)."""
        if self.future is not None:
            self.future.remove_done_callback(self._done)
        self.ctx.release()

    def _done(self, future: asyncio.Future[Outcome]) -> None:
        if future.cancelled():
            self.outcome(encode_outcome(False, shutting_down()))
        elif (exc := future.exception()) is not None:
            self.outcome(encode_outcome(False, exc))
        else:
            self.outcome(future.result())

    def outcome(self, outcome: Outcome) -> None:
        lk = self.link
        if lk.tasks.get(self.q) is not self:  # its server left: the outcome stays journalled
            self.ctx.release()
            return
        del lk.tasks[self.q]
        self.host._answer(lk, self.q, outcome, self.ctx)


class HostLink(asyncio.Protocol):
    """One server's link: frames in, requests to the host, answers and notifications out."""

    def __init__(self, host: TerminalHost, link_id: int) -> None:
        self.host = host
        self.id = link_id
        self.decoder = link.LinkDecoder(4 * DEFAULT_MAX_MESSAGE_BYTES)
        self.transport: asyncio.Transport | None = None
        self.greeted = False  # our first message (welcome or refused) went: frames from now
        self.welcomed = False
        # The requests not answered yet, by id: the task running one, or the wait for a keyed
        # execution's outcome; `cancel` stops it (the server no longer waits for the answer).
        self.tasks: dict[int, asyncio.Task[None] | _KeyedAnswer] = {}
        self.clients: dict[int, _Client] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            messages = self.decoder.feed(data)
        except ValueError as exc:
            log.error("link %d: a bad frame (%s); closing it", self.id, exc)
            self.close()
            return
        try:
            for header, payload in messages:
                self.host.received(self, header, payload)
        except Exception:
            log.exception("link %d: a bad message; closing it", self.id)
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.host.lost(self)

    def send(self, header: dict[str, Any], payload: bytes = b"") -> None:
        if self.greeted:
            self.write(link.frame(header, payload))
        else:  # the first message, in the framing a server of any version reads
            self.greeted = True
            self.write(link.greeting(header))

    def write(self, frames: bytes) -> None:
        """Messages framed for after the greeting (`link.frame`), in one write."""
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(frames)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class TerminalHost:
    def __init__(
        self,
        places: HostPlaces,
        *,
        workspace: Path,
        state_dir: Path,
        default_shell: str | None = None,
        linger: float = 300.0,
        clock: Any = SYSTEM_CLOCK,
        drain_limit: float = DRAIN_LIMIT,
        output_hold: float = OUTPUT_HOLD,
    ) -> None:
        self.places = places
        self.clock = clock
        self.linger = linger
        self.drain_limit = drain_limit
        self.output_hold = output_hold
        self._holds = 0  # the current hold of output (0: none); a release names the one it ends
        self._features: dict[str, bool] = {}
        self.service = TerminalService(
            workspace=workspace,
            state_dir=state_dir,
            clock=clock,
            observe=self._observe,
            broadcast=self._broadcast,
            features=self._feature,
            default_shell=default_shell,
        )
        served = self.service.methods()
        self._wait = served["terminal/wait"]
        self.methods: dict[str, Method] = {
            **served,
            "terminal/wait": method(self._wait_or_lost, limit=self._wait.limit),
            "host/reapIdle": method(self._reap_idle),  # the server's memory pressure
            "host/spill": method(self._spill),
            "host/stop": method(self._stop_on_request),  # a client's terminal/stopHost
        }
        self.idempotency = Idempotency(IdempotencyJournal(places.journal))
        self.specs = SpecWriter(places.terminals, lambda: snapshot(self.service))
        self.links: set[HostLink] = set()
        self._link_ids = 0
        self._client_ids = 0
        self._observed: deque[tuple[dict[str, Any], bytes]] = deque(maxlen=_KEEP_OBSERVED)
        self.draining = False
        self.stopping = False  # stopped on a client's request: no new command
        self.stopped = asyncio.get_running_loop().create_future()
        self._alone_since: float | None = clock.now()
        self._server: asyncio.AbstractServer | None = None
        self._socket_identity: tuple[int, int] | None = None
        self._lock_fd: int | None = None
        self.restored: list[str] = []
        self._owners: dict[str, _Client] = {}  # a keyed execution's first asker
        self.lost_executions: dict[str, str] = {}  # running when a host died: execution -> terminal
        self._stats_sent = b""  # the statistics the servers last heard
        self._shape_sent = (0, 0)  # their terminals open and busy
        self._stats_due = False
        self._holds_made = 0

    # -- what the terminal service calls -------------------------------------------------
    def _feature(self, name: str) -> bool:
        return self._features.get(name, True)

    def _observe(self, op: str, seconds: float, ok: bool) -> None:
        self._to_servers({"o": op, "d": seconds, "ok": ok}, b"", keep=True)

    def _broadcast(self, method: str, params: Any) -> None:
        self._to_servers({"b": method}, link.payload_of(params), keep=True)

    def _to_servers(self, header: dict[str, Any], payload: bytes, *, keep: bool) -> None:
        listening = [lk for lk in self.links if lk.welcomed]
        for lk in listening:
            lk.send(header, payload)
        if not listening and keep:
            self._observed.append((header, payload))

    async def _wait_or_lost(self, params: dict[str, Any], ctx: CallContext) -> Any:
        """`terminal/wait`; for a command that died with a previous host, that loss."""
        execution_id = params.get("executionId")
        terminal_id = self.lost_executions.get(execution_id) if type(execution_id) is str else None
        if terminal_id is not None:
            raise TerminalError(
                f"execution {execution_id!r} was running in terminal {terminal_id} when the "
                "terminal host died: its command was lost (its result is unknown); the "
                "terminal was recreated with its cwd and env",
                retryable=False,
                data={
                    "executionId": execution_id,
                    "terminalId": terminal_id,
                    "hostDied": True,
                    "lost": True,
                },
            )
        return await self._wait.handler(params, ctx)

    async def _stop_on_request(self, params: dict[str, Any], ctx: CallContext) -> dict[str, Any]:
        """Stop on a client's request (`terminal/stopHost`, through its server). No new
        command is taken from now on. `running: "wait"` lets the running commands finish
        first (their answers go to who asked), for `timeoutMs` at most (default: the drain
        bound); then, or at once with `running: "end"` (the default), every terminal is
        closed, the commands still running are ended (their requests fail with -32003
        `hostStopped`), nothing is kept to recreate, and the host exits after this answer."""
        running = params.get("running", "end")
        if running not in ("end", "wait"):
            raise InvalidParams('parameter \'running\' must be "end" or "wait"')
        timeout_ms = params.get("timeoutMs")
        if timeout_ms is not None and (type(timeout_ms) is not int or timeout_ms <= 0):
            raise InvalidParams("parameter 'timeoutMs' must be a positive integer")
        self.stopping = True
        if running == "wait":
            limit = self.drain_limit if timeout_ms is None else timeout_ms / 1000.0
            deadline = self.clock.now() + limit
            while self.clock.now() < deadline and (
                self._running_executions() or self.idempotency.running > 0
            ):
                await self.clock.sleep(0.05)
        ended = self._running_executions()
        if ended:
            log.warning("stopping on request: ending %s", ", ".join(ended))
        log.info("stopping on a client's request (terminal/stopHost)")
        asyncio.get_running_loop().call_soon(self.stop)  # once this answer is written
        return {"pid": os.getpid(), "terminals": sorted(self.service.terminals), "ended": ended}

    def _spill(self, params: dict[str, Any], ctx: CallContext) -> int:
        return self.service.spools.spill()  # the memory freed

    async def _reap_idle(self, params: dict[str, Any], ctx: CallContext) -> int:
        return await self.service.reap_idle(float(params.get("idleAfter", 300.0)))

    # -- links ----------------------------------------------------------------------------
    def new_link(self) -> HostLink:
        self._link_ids += 1
        lk = HostLink(self, self._link_ids)
        self.links.add(lk)
        self._alone_since = None
        return lk

    def lost(self, lk: HostLink) -> None:
        """A server left (or was killed): its connections are closed; its work goes on."""
        self.links.discard(lk)
        for client in list(lk.clients.values()):
            client.close()
        lk.clients.clear()
        lk.tasks.clear()  # not cancelled: the commands finish, their results stay readable
        if not self.links:
            self._alone_since = self.clock.now()
        if lk.welcomed and not any(other.welcomed for other in self.links):
            self._hold_output()

    # -- output held while no server listens ----------------------------------------------------
    def _hold_output(self) -> None:
        """The running commands' output is not read until a server is back (or for
        `output_hold` s): they block on a full PTY buffer instead of taking the CPU."""
        if self.output_hold <= 0 or self._holds:
            return
        held = [t.proc for t in self.service.terminals.values() if t.busy and t.proc is not None]
        if not held:
            return
        for proc in held:
            proc.pause_reading()
        self._holds = hold = self._holds_made = self._holds_made + 1
        self._release_after(hold, self.output_hold)

    def _release_after(self, hold: int, delay: float) -> None:
        async def release() -> None:
            await self.clock.sleep(delay)
            self._release_output(hold)

        asyncio.get_running_loop().create_task(release())

    def _release_output(self, hold: int) -> None:
        if self._holds != hold:
            return  # released already
        self._holds = 0
        for terminal in self.service.terminals.values():
            if terminal.proc is not None:
                terminal.proc.resume_reading()

    def received(self, lk: HostLink, header: dict[str, Any], payload: bytes) -> None:
        kind = header.get("k")
        if kind is None:  # a request (a `cancel` names one too, but it has a kind)
            if lk.welcomed:
                self._request(lk, header, payload)
            else:
                lk.close()
        elif kind == "hello":
            self._hello(lk, header)
        elif kind == "closed":
            client = lk.clients.pop(header.get("c", -1), None)
            if client is not None:
                client.close()
        elif kind == "cancel":
            task = lk.tasks.pop(header.get("q", -1), None)
            if task is not None:
                task.cancel()
        elif kind == "cancelKey":
            key = header.get("key")
            if type(key) is str:
                self.idempotency.cancel(key)
        elif kind == "features":
            features = link.value_of(payload)
            if type(features) is dict:
                self._features = {k: bool(v) for k, v in features.items()}
        elif kind == "drain":
            self.drain("asked by the server")
        elif kind == "stop":
            self.stop()

    def _hello(self, lk: HostLink, header: dict[str, Any]) -> None:
        info = {"pid": os.getpid(), "version": __version__, "protocol": link.PROTOCOL_VERSION}
        if header.get("protocol") != link.PROTOCOL_VERSION or header.get("version") != __version__:
            reason = (
                f"host {__version__} (link protocol {link.PROTOCOL_VERSION}), server "
                f"{header.get('version')} (link protocol {header.get('protocol')})"
            )
            lk.send({"k": "refused", "reason": reason, **info})
            self.drain(f"an incompatible server attached: {reason}")
            return
        if self.draining:
            lk.send({"k": "refused", "reason": "this host is draining", **info})
            return
        shell = header.get("shell")
        if shell is not None:
            self.service.default_shell = shell
        limit = header.get("maxMessageBytes")
        if type(limit) is int:
            self.service.max_message_bytes = limit
        features = header.get("features")
        if type(features) is dict:
            self._features = {k: bool(v) for k, v in features.items()}
        policy = policy_from_wire(header.get("crashPolicy"))
        if policy is not None:  # the server's recovery matrix, for the shells made from now
            self.service.crash_policy = policy
        lk.welcomed = True
        if self._holds:  # its queued requests first, then what was held
            self._release_after(self._holds, OUTPUT_RELEASE)
        lk.send({"k": "welcome", "restored": self.restored, **info})
        lk.send({"k": "stats"}, self._stats())
        while self._observed:  # what happened while no server listened
            lk.send(*self._observed.popleft())

    def _client(self, lk: HostLink, conn: int, session: str | None) -> _Client:
        client = lk.clients.get(conn)
        if client is None:
            self._client_ids += 1
            client = _Client(self._client_ids, lk, conn, session)
            lk.clients[conn] = client
        elif session is not None and client.session is None:
            client.session = session
        return client

    # -- requests -------------------------------------------------------------------------
    def _request(self, lk: HostLink, header: dict[str, Any], payload: bytes) -> None:
        q = header["q"]
        name = header.get("m")
        meth = self.methods.get(name) if type(name) is str else None
        if meth is None or type(name) is not str:
            self._answer(lk, q, encode_outcome(False, MethodNotFound(f"unknown method {name!r}")))
            return
        client = self._client(lk, header.get("c", 0), header.get("s"))
        ctx = _Context(client, header.get("t") or self.clock.now(), header.get("i"))
        params = link.value_of(payload)
        if params is None:
            params = {}
        key = params.get("idempotencyKey")
        if (self.draining or self.stopping) and name in ("terminal/create", "terminal/execute"):
            why = "draining" if self.draining else "stopping (terminal/stopHost)"
            refused = Unavailable(f"the terminal host is {why}: no new command")
            self._answer(lk, q, encode_outcome(False, refused))
            return
        if key is not None:
            self._keyed(lk, q, name, meth, params, ctx, key)
        elif not meth.is_async:
            self._answer(lk, q, self._call_sync(meth, params, ctx))
        else:
            ctx.held = []
            lk.tasks[q] = asyncio.get_running_loop().create_task(
                self._run(lk, q, meth, params, ctx)
            )

    def _call_sync(self, meth: Method, params: dict[str, Any], ctx: _Context) -> Outcome:
        try:
            return encode_outcome(True, meth.handler(params, ctx))
        except Exception as exc:
            return encode_outcome(False, exc)

    async def _call(self, meth: Method, params: dict[str, Any], ctx: _Context) -> Outcome:
        if not meth.is_async:
            return self._call_sync(meth, params, ctx)
        try:
            return encode_outcome(True, await meth.handler(params, ctx))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            return encode_outcome(False, exc)

    async def _run(
        self, lk: HostLink, q: int, meth: Method, params: dict[str, Any], ctx: _Context
    ) -> None:
        try:
            outcome = await self._call(meth, params, ctx)
        except asyncio.CancelledError:
            ctx.release()
            return  # the server no longer waits (it answers the client itself)
        finally:
            if lk.tasks.get(q) is asyncio.current_task():
                del lk.tasks[q]
        self._answer(lk, q, outcome, ctx)

    def _keyed(
        self,
        lk: HostLink,
        q: int,
        name: str,
        meth: Method,
        params: dict[str, Any],
        ctx: _Context,
        key: Any,
    ) -> None:
        """A keyed request: run at most once (the journal outlives this host), joined by a
        repeat of its key; answered from its outcome's callback, with no task of its own."""
        idem = self.idempotency
        try:
            if type(key) is not str:
                raise InvalidParams("idempotencyKey must be a string")
            bound = signature(name, params)
            found = idem.lookup(key, bound)
            if found is None:
                ctx.held = []
                waiting = _KeyedAnswer(self, lk, q, ctx)
                found = idem.start(
                    key, bound, lambda: self._call(meth, params, ctx), then=waiting.outcome
                )
                lk.tasks[q] = waiting
                self._owners[key] = ctx._client
                found.add_done_callback(lambda _: self._forget_owner(key, ctx._client))
                return
            first = self._owners.get(key)
            if first is not None and first is not ctx._client and first.closed:
                first.joined = ctx._client  # its stream now goes to who asked again
        except Exception as exc:
            self._answer(lk, q, encode_outcome(False, exc))
            return
        if isinstance(found, tuple):
            self._answer(lk, q, found)
        else:
            waiting = _KeyedAnswer(self, lk, q, ctx)
            waiting.join(found)
            lk.tasks[q] = waiting

    def _forget_owner(self, key: str, client: _Client) -> None:
        if self._owners.get(key) is client:
            del self._owners[key]

    def _answer(self, lk: HostLink, q: int, outcome: Outcome, ctx: _Context | None = None) -> None:
        ok, payload = outcome
        framed = (
            ctx.framed(payload)
            if ok and ctx is not None and len(payload) <= self.service.max_message_bytes
            else None
        )  # (one over the message limit is the server's to refuse, as from its own terminals)
        if framed is not None:
            lk.write(link.frame({"r": q, "ok": True, "f": 1}, framed))
        else:
            answer = link.frame({"r": q, "ok": ok}, payload)
            lk.write(answer if ctx is None else ctx.answered(q, answer))
        # Terminals opened, closed, busy or freed are told right after the answer (a caller
        # reading the gauges next sees them); counters and byte figures, which move with every
        # command, wait for the next second's push: a message, a wake-up of every server and a
        # conversion per command cost the host's path more than the gauges are worth.
        if not self._stats_due and self._shape() != self._shape_sent:
            self._stats_due = True  # once for what is answered in this loop turn
            asyncio.get_running_loop().call_soon(self.push_stats)

    # -- statistics (the server's gauges) --------------------------------------------------
    def _shape(self) -> tuple[int, int]:
        terminals = self.service.terminals.values()
        return len(terminals), sum(1 for t in terminals if t.busy)

    def _stats(self) -> bytes:
        self._shape_sent = self._shape()
        self._stats_sent = orjson.dumps(dataclasses.asdict(self.service.statistics()))
        return self._stats_sent

    def push_stats(self) -> None:
        """The terminal service's statistics to the servers, when they changed."""
        self._stats_due = False
        last = self._stats_sent
        if self._stats() != last:
            self._to_servers({"k": "stats"}, self._stats_sent, keep=False)

    async def watch_stats(self, interval: float) -> None:
        """What changes with no request (a shell dies, an orphan is reaped) is told too."""
        while True:
            await self.clock.sleep(interval)
            self.push_stats()

    # -- life cycle -----------------------------------------------------------------------
    async def start(self) -> None:
        """Take the lock, recreate what a dead predecessor left, listen."""
        self._lock_fd = await _take_lock(self.places, self.drain_limit + HANDOVER_MARGIN)
        # Opened under the lock: rows a dead host left running become "interrupted" (their
        # keys are answered "outcome unknown": the command died with that host).
        self.idempotency.journal.open()
        await self.service.__aenter__()
        found = load(self.places.terminals)
        adopted = self.service.spools.adopt(found["spools"])
        if adopted:
            log.info("%d finished outputs a previous host left are readable", adopted)
        left = found["terminals"]
        if left:
            why = (
                "the terminal host was restarted; a new shell started with the cwd and "
                "exported environment the terminal had"
            )
            started = self.clock.now()
            self.restored = await restore_all(self.service, left, why)
            self.lost_executions = {
                str(s["running"]): str(s["terminalId"]) for s in left if s.get("running")
            }
            elapsed = self.clock.now() - started
            for tid in self.restored:
                self._broadcast(
                    "terminal/exited", {"terminalId": tid, "exitCode": None, "willRecover": True}
                )
                self._observe("terminal/recover", elapsed, True)
            for spec in left:
                if spec["terminalId"] not in self.restored:
                    self._observe("terminal/recover", elapsed, False)
            log.warning(
                "recreated %d of %d terminals a previous host left", len(self.restored), len(left)
            )
        self.specs.write()
        sock = bind_unix_socket(self.places.socket)
        self._socket_identity = file_identity(self.places.socket)
        self._server = await asyncio.get_running_loop().create_unix_server(self.new_link, sock=sock)

    def drain(self, why: str) -> None:
        """Stop listening, finish running commands, write down what a successor needs (the
        terminals, the outputs spilled to disk), then exit; the successor waits for our lock."""
        if self.draining:
            return
        self.draining = True
        log.warning("draining: %s", why)
        for lk in self.links:  # their servers attach a new host for new work
            if lk.welcomed:  # (a refused one, maybe of another link version, heard why)
                lk.send({"k": "draining", "reason": why})
        self._stop_listening()  # the lock stays ours: the next host waits for what we leave
        asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        deadline = self.clock.now() + self.drain_limit
        while self.clock.now() < deadline and self._working():
            await self.clock.sleep(0.05)
        ended = self._running_executions()
        if ended:
            log.warning(
                "drained for %.0f s; the commands still running are ended and reported lost "
                "(%s): the successor recreates their terminals",
                self.drain_limit,
                ", ".join(ended),
            )
        self.service.spools.spill()  # finished output to disk, readable after we are gone
        self.stop(keep_specs=True)

    def _running_executions(self) -> list[str]:
        return [
            t.current.execution_id for t in self.service.terminals.values() if t.current is not None
        ]

    def _working(self) -> bool:
        """A command runs, or a request taken before the drain has not been answered (it
        may not have reached its terminal yet)."""
        return (
            any(t.busy for t in self.service.terminals.values())
            or any(lk.tasks for lk in self.links)
            or self.idempotency.running > 0
        )

    def stop(self, *, keep_specs: bool = False) -> None:
        if not self.stopped.done():
            self.stopped.set_result(keep_specs)

    def _stop_listening(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        remove_socket(self.places.socket, self._socket_identity)

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    async def watch_idle(self) -> None:
        """Exit when no server has been attached for `linger` s (sooner with no terminals)."""
        grace = self.service.owners.grace
        while True:
            await self.clock.sleep(1.0)
            alone = self._alone_since
            if alone is None or self.draining:
                continue
            gone = self.clock.now() - alone
            if gone >= self.linger or (gone >= grace and not self.service.terminals):
                log.info("no server for %.0f s; exiting", gone)
                self.stop()
                return

    async def close(self, *, keep_specs: bool) -> None:
        self._stop_listening()
        for lk in list(self.links):
            if not keep_specs:  # stopped on purpose: its servers are not to see a death
                lk.send({"k": "stopping"})
            lk.close()
        with contextlib.suppress(OSError):
            if keep_specs:  # the cwd and exported env each terminal has, the outputs on disk:
                # for a successor (closing the terminals removes their own folders)
                try:
                    dirs = hand_over(self.service, self.places.folder / "handover")
                except (OSError, BridgeError) as exc:  # a folder not private: not trusted
                    log.warning("the terminals' exported env was not handed over: %s", exc)
                    dirs = {}
                self.specs.write(snapshot(self.service, dirs))
                self.service.spools.release()
            else:
                self.specs.write(EMPTY)  # closed on purpose: nothing to recreate
        await self.service.aclose()
        self.idempotency.journal.close()
        self._release_lock()


async def _take_lock(places: HostPlaces, wait: float) -> int:
    """The host's lock, held for its life. Exits (status 0) when a live host answers; waits
    while one drains (it no longer listens but still holds the lock)."""
    fd = open_private_file(places.lock, os.O_RDWR, create=True)
    # A predecessor that drains holds it for its drain bound and its hand-over at most.
    deadline = asyncio.get_running_loop().time() + wait
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if probe(places.socket, 0.5) or asyncio.get_running_loop().time() > deadline:
                os.close(fd)
                raise SystemExit(0) from None  # another host serves this state folder
            await asyncio.sleep(0.05)
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


async def run_host(
    state_dir: Path,
    workspace: Path,
    *,
    shell: str | None = None,
    linger: float = 300.0,
    drain_limit: float = DRAIN_LIMIT,
    output_hold: float = OUTPUT_HOLD,
) -> None:
    places = host_places(state_dir, workspace)
    host = TerminalHost(
        places,
        workspace=workspace,
        state_dir=state_dir,
        default_shell=shell,
        linger=linger,
        drain_limit=drain_limit,
        output_hold=output_hold,
    )
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, host.stop)
    loop.add_signal_handler(signal.SIGHUP, lambda: None)  # a closed terminal is no reason
    await host.start()
    log.info("terminal host %d ready on %s", os.getpid(), places.socket)
    tasks = [
        loop.create_task(host.watch_idle()),
        loop.create_task(host.specs.run(SPEC_INTERVAL, host.clock.sleep)),
        loop.create_task(host.watch_stats(STATS_INTERVAL)),
    ]
    try:
        keep_specs = await host.stopped
    finally:
        for task in tasks:
            task.cancel()
    await host.close(keep_specs=bool(keep_specs))


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lapce_bridge.host")
    p.add_argument("--state-dir", type=Path, required=True)
    p.add_argument("--workspace", type=Path, required=True)
    p.add_argument("--shell")
    p.add_argument("--linger", type=float, default=300.0)
    p.add_argument("--drain-limit", type=float, default=DRAIN_LIMIT)
    p.add_argument("--output-hold", type=float, default=OUTPUT_HOLD)
    p.add_argument("--log-max-bytes", type=int, default=MAX_BYTES)
    p.add_argument("--log-backups", type=int, default=BACKUPS)
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    # The log (and stderr) to host.log, rotated: a host may run for weeks.
    places = host_places(args.state_dir.absolute(), args.workspace.resolve())
    bounded_log(places.log, max_bytes=max(args.log_max_bytes, 1024), backups=args.log_backups)
    from lapce_bridge.ipc.serve_cmd import run

    run(
        run_host(
            args.state_dir.absolute(),
            args.workspace.resolve(),
            shell=args.shell,
            linger=args.linger,
            drain_limit=args.drain_limit,
            output_hold=args.output_hold,
        )
    )
    return 0


__all__ = ["HostLink", "TerminalHost", "host_pid", "main", "run_host"]
