"""The server's terminal service when terminals live in a host process: every `terminal/*`
method forwarded over the private link, every notification routed back to its connection.

Theory of operation: `HostProxy` is a `Service` like `TerminalService` (the same method names
and limits: `terminal.params.METHODS`, the table `TerminalService` serves, so a method added
there is forwarded here with no change, and the server never loads the terminals' code).
Entering it starts attaching in the background and returns at once: the server binds its
socket and answers `ping` without waiting for the host; a terminal request waits for the
attach (`ready`). A host already running (a restarted server's) is attached at once; a new
one is started only when a terminal request first needs it, so a server whose clients never
use a terminal never starts one.

- Forwarding: a request is sent as its params (encoded once) with the client connection's
  id, the session it named and its arrival time; the answer's payload is spliced into the
  client's response unparsed (`orjson.Fragment`), and an error object is rebuilt as the
  classified error the host raised. Once attached, a request is relayed (`Method.relay`): sent
  to the host from the step that read it from the client, and answered to the client from the
  step that reads its answer from the host, with no Task and no loop turn in the server
  (before attaching, the handler waits for the host in a Task). A cancelled request (the
  client's `$/cancelRequest`, its connection closing, the server's timeout) is cancelled in
  the host. A keyed request keeps its `idempotencyKey`: the host runs it at most once across
  server restarts, so a replay after a crash joins the execution that still runs or gets its
  recorded result. The server keeps no key of its own for these methods (they are `idempotent`
  to its dispatcher: no journal row, no task of its own, one journal write per command, in the
  host); a client's cancel, by key or by request id, reaches the execution in the host
  (`cancel_key`).
- Routing: a notification from the host names its connection; it is written to that
  connection if it is still here (its params spliced, not re-encoded), else dropped (the
  connection left). Broadcasts go to every client; operations the host timed go to this
  server's metrics, health and incidents.
- Host death: when the link drops unasked, the requests waiting on it fail with a terminal
  error that says so, an incident is opened, and a new host is started: it recreates the
  terminals from what the dead one wrote down (same ids, cwd, env; `recreate_terminal` in
  their next result, `terminal/exited` with `willRecover`), and the incident closes with what
  was restored. Deaths in a row back off; `crash_limit` of them within `crash_window` s stop
  the attempts, and terminal requests are then answered -32002.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from lapce_bridge.clock import SYSTEM_CLOCK
from lapce_bridge.core.clock import Clock
from lapce_bridge.core.degradation import QualityChanged
from lapce_bridge.core.errors import TerminalError, Unavailable
from lapce_bridge.core.events import EventBus
from lapce_bridge.core.relief import Relief
from lapce_bridge.host import STOP_HOST, link
from lapce_bridge.host.attach import HostRefused, hello, open_link, start_host
from lapce_bridge.host.places import HostPlaces, host_pid, host_places
from lapce_bridge.ipc.jsonrpc import error_from_wire
from lapce_bridge.rpc import (
    DEFAULT_MAX_MESSAGE_BYTES,
    Answer,
    Broadcast,
    CallContext,
    Method,
    Observe,
    Relay,
    notify_with_answer,
)
from lapce_bridge.rpc import method as make_method
from lapce_bridge.terminal.params import METHODS

if TYPE_CHECKING:  # the terminals' code is the host's: the server loads it only for figures
    from lapce_bridge.terminal.recovery import CrashLoopPolicy
    from lapce_bridge.terminal.service import ServiceStats

log = logging.getLogger("lapce_bridge.host")

Incident = Callable[[str, float, float, bool, str], None]
"""(subject, started, ended, recovered, detail): a terminal-host incident for the server."""

ATTACH_WITHIN = 30.0
STOP_WITHIN = 30.0  # for the host to close its terminals and exit once it said it stops


def _stop_limit(params: dict[str, Any]) -> float:
    """`terminal/stopHost` waits for running commands up to its own `timeoutMs`."""
    waited = params.get("timeoutMs")
    seconds = waited / 1000.0 if type(waited) is int and waited > 0 else 30.0
    return seconds + STOP_WITHIN + ATTACH_WITHIN


class ServerLink(asyncio.Protocol):
    """The server's end of the link: answers resolve futures, notifications are routed."""

    def __init__(self, proxy: HostProxy) -> None:
        self.proxy = proxy
        self.decoder = link.LinkDecoder(4 * DEFAULT_MAX_MESSAGE_BYTES)
        self.transport: asyncio.Transport | None = None
        self.hello_sent = False  # our first message (the hello) went: frames from now
        # The requests waiting for their answer: what takes it (result, error), and the
        # request's context (a notification riding with the answer goes out through it).
        self.pending: dict[int, tuple[Answer, CallContext | None]] = {}
        loop = asyncio.get_running_loop()
        self.greeted: asyncio.Future[dict[str, Any]] = loop.create_future()
        self.lost: asyncio.Future[None] = loop.create_future()  # or draining
        self.closing = False
        self.draining = False
        self.stopped = False  # the host said it stops on purpose (SIGTERM): no death

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            messages = self.decoder.feed(data)
        except ValueError as exc:
            log.error("terminal host link: a bad frame (%s); closing it", exc)
            self.close()
            return
        pending = self.pending
        for header, payload in messages:
            r = header.get("r")
            if r is not None:
                waiting = pending.pop(r, None)
                if waiting is not None:
                    answer, ctx = waiting
                    try:
                        if header.get("f"):  # framed by the host for the client: as it came
                            answer.framed(payload)
                        elif not header["ok"]:
                            answer(None, error_from_wire(orjson.loads(payload)))
                        elif ctx is not None:  # for a client: spliced in, never decoded
                            answer(orjson.Fragment(payload), None)
                        else:
                            answer(link.value_of(payload), None)
                    except Exception:  # one answer's fault must not end the link
                        log.exception("terminal host link: an answer could not be given")
                continue
            self.proxy.received(header, payload, self)
            if self.closing:
                return  # refused: what a host of another version says next is not read

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.proxy.link_closed(self)
        if not self.greeted.done():
            self.greeted.set_exception(Unavailable("the terminal host closed the link"))
        died = (
            TerminalError(
                "the terminal host was stopped (SIGTERM) while this request ran; it closed "
                "its terminals",
                retryable=True,
                data={"hostStopped": True},
            )
            if self.stopped
            else TerminalError(
                "the terminal host stopped while this request ran; terminals are recreated "
                "(cwd and env restored), a running command is lost",
                retryable=True,
                data={"hostDied": True},
            )
        )
        pending, self.pending = self.pending, {}
        for answer, _ in pending.values():
            answer(None, died)
        if not self.lost.done():
            self.lost.set_result(None)

    def send(self, header: dict[str, Any], payload: bytes = b"") -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if self.hello_sent:
            transport.write(link.frame(header, payload))
        else:  # the hello, in the framing a host of any version reads
            self.hello_sent = True
            transport.write(link.greeting(header))

    def close(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.close()


class HostProxy:
    def __init__(
        self,
        *,
        workspace: Path,
        state_dir: Path,
        clock: Clock = SYSTEM_CLOCK,
        observe: Observe | None = None,
        broadcast: Broadcast | None = None,
        features: Callable[[], dict[str, bool]] | None = None,
        bus: EventBus | None = None,
        incident: Incident | None = None,
        default_shell: str | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        linger: float = 300.0,
        crash_limit: int = 5,
        crash_window: float = 60.0,
        crash_policy: CrashLoopPolicy | None = None,
    ) -> None:
        self.workspace = Path(workspace).resolve()
        self.state_dir = Path(state_dir)
        self.clock = clock
        self.observe = observe
        self.broadcast = broadcast
        self.features = features or dict
        self.bus = bus
        self.incident = incident
        self.default_shell = default_shell
        self.max_message_bytes = max_message_bytes
        self.linger = linger
        self.crash_limit = crash_limit
        self.crash_window = crash_window
        self.crash_policy = crash_policy  # the shells' (the host's own death is crash_limit's)
        # The names and limits of the methods the host serves (TerminalService's), from the
        # light table: the terminals' code is the host's to load, not the server's.
        self._limits = dict(METHODS)
        self.places: HostPlaces | None = None
        self._link: ServerLink | None = None
        self._ready: asyncio.Future[ServerLink] | None = None
        self._ids = itertools.count(1)
        self._contexts: dict[int, CallContext] = {}
        self._keeper: asyncio.Task[None] | None = None
        self._unsubscribe: Callable[[], None] | None = None
        self.host_pid: int | None = None
        self.attaches = 0
        self.host_deaths: list[float] = []
        self.failed: Unavailable | None = None
        self._draining: set[ServerLink] = set()
        self._wanted: asyncio.Event | None = None  # set by the first terminal request
        self._stats: ServiceStats | None = None  # the host's, as it last told them
        self._stats_wire: bytes = b""  # ...as they came, read when they are asked for

    # -- Service ---------------------------------------------------------------------------
    async def __aenter__(self) -> HostProxy:
        loop = asyncio.get_running_loop()
        self._ready = loop.create_future()
        self._wanted = asyncio.Event()
        self._keeper = loop.create_task(self._keep_attached(), name="terminal-host")
        if self.bus is not None:
            self._unsubscribe = self.bus.subscribe(QualityChanged, self._quality_changed)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
        if self._keeper is not None:
            self._keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keeper
        for lk in (self._link, *self._draining):
            if lk is not None:  # the host keeps the terminals for the next server
                lk.close()

    def methods(self) -> dict[str, Method]:
        # idempotent: the host keeps every key at most once (its own journal), so the
        # server's dispatcher checks a key and passes it on, journalling and joining nothing.
        forwarded = {
            name: make_method(
                self._forwarder(name), limit=limit, idempotent=True, relay=self._relayer(name)
            )
            for name, limit in self._limits.items()
        }
        return {**forwarded, STOP_HOST: make_method(self._stop_host, limit=_stop_limit)}

    async def _stop_host(self, params: dict[str, Any], ctx: CallContext) -> dict[str, Any]:
        """`terminal/stopHost`: the host stops (`TerminalHost._stop_on_request` says what
        becomes of running commands); answered once it has exited. No host running: nothing
        to stop (none is started for it). The next terminal request starts a new one."""
        lk = self._link
        if lk is None or lk.transport is None:
            if self.places is None:
                self.places = await asyncio.to_thread(host_places, self.state_dir, self.workspace)
            if host_pid(self.places) is None:
                return {"stopped": False, "terminals": [], "ended": []}
            lk = await self.ready()
        answer = await self._call(lk, "host/stop", params, None)
        assert self.places is not None  # attached: its places are known
        async with self.clock.timeout(STOP_WITHIN):
            while host_pid(self.places) is not None:  # its lock goes last: all closed
                await self.clock.sleep(0.02)
        return {"stopped": True, **answer}

    def statistics(self) -> ServiceStats | None:
        """The host's terminal statistics as it last told them (it tells each change); None
        while no host is attached (the gauges then show no terminal figures)."""
        if self._link is None:
            return None
        if self._stats_wire:  # read here, not as they come: the types load on first use
            self._stats, self._stats_wire = _service_stats(link.value_of(self._stats_wire)), b""
        return self._stats

    def relief(self) -> Relief:
        """Memory pressure reaches the host: its finished spools go to disk, idle terminals
        close (the bytes spilled and the terminals closed come back from the host)."""

        async def spill() -> int:
            lk = self._link
            if lk is None:
                return 0  # no host attached: no spool to spill
            outcome = await self._call(lk, "host/spill", {}, None)
            return int(outcome) if isinstance(outcome, int) else 0

        async def reap() -> int:
            lk = self._link
            if lk is None:
                return 0  # no host attached: no terminal to reap
            outcome = await self._call(lk, "host/reapIdle", {}, None)
            return int(outcome) if isinstance(outcome, int) else 0

        return Relief("terminals", spill_spools=spill, reap_idle=reap)

    # -- attaching -------------------------------------------------------------------------
    async def ready(self) -> ServerLink:
        """The link to the host, once attached (terminal requests wait here)."""
        if self.failed is not None:
            raise self.failed
        lk = self._link
        if lk is not None and lk.transport is not None:
            return lk
        assert self._ready is not None, "HostProxy used before it was entered"
        assert self._wanted is not None
        self._wanted.set()
        async with self.clock.timeout(ATTACH_WITHIN):
            return await asyncio.shield(self._ready)

    async def _keep_attached(self) -> None:
        loop = asyncio.get_running_loop()
        lost_at: float | None = None
        while True:
            try:
                lk, info = await self._attach()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # Those waiting now are answered -32002 (retryable); attaching goes on (a
                # host that drains a long command keeps its successor waiting).
                log.error("cannot attach the terminal host: %s", exc)
                refused = Unavailable(f"the terminal host is unavailable: {exc}")
                if self._ready is not None and not self._ready.done():
                    self._ready.set_exception(refused)
                    self._ready.exception()
                self._ready = loop.create_future()
                await self.clock.sleep(1.0)
                continue
            self._link = lk
            self.attaches += 1
            self.host_pid = info.get("pid")
            if lost_at is not None and self.incident is not None:
                restored = info.get("restored") or []
                self.incident(
                    "terminal host",
                    lost_at,
                    self.clock.now(),
                    True,
                    f"the terminal host died; a new one (pid {self.host_pid}) recreated "
                    f"{len(restored)} terminal(s) {', '.join(restored)} with their cwd and "
                    "env; commands running in the old one were lost",
                )
            if self._ready is None or self._ready.done():
                self._ready = loop.create_future()
            self._ready.set_result(lk)
            await lk.lost
            self._link = None
            self._ready = loop.create_future()
            if lk.closing:
                return
            if lk.draining:
                self._draining.add(lk)  # answers still come on it until the host exits
                continue
            if lk.stopped:  # on purpose, its terminals closed: a new one when one is needed
                log.warning("the terminal host (pid %s) was stopped", self.host_pid)
                if self._wanted is not None:
                    self._wanted.clear()
                continue
            lost_at = self.clock.now()
            log.error("the terminal host (pid %s) died; starting a new one", self.host_pid)
            self.host_deaths = [t for t in self.host_deaths if t > lost_at - self.crash_window]
            self.host_deaths.append(lost_at)
            if len(self.host_deaths) >= self.crash_limit:
                self.failed = Unavailable(
                    f"the terminal host died {len(self.host_deaths)} times within "
                    f"{self.crash_window:g} s; not starting it again"
                )
                if self.incident is not None:
                    self.incident("terminal host", lost_at, lost_at, False, str(self.failed))
                self._ready.set_exception(self.failed)
                self._ready.exception()
                return
            await self.clock.sleep(0.05 * 2 ** (len(self.host_deaths) - 1))

    async def _attach(self) -> tuple[ServerLink, dict[str, Any]]:
        if self.places is None:
            self.places = await asyncio.to_thread(host_places, self.state_dir, self.workspace)
        places = self.places
        greeting = hello(
            workspace=self.workspace,
            shell=self.default_shell,
            max_message_bytes=self.max_message_bytes,
            features=self.features(),
            crash_policy=self.crash_policy,
        )
        lk = await open_link(places, lambda: ServerLink(self), greeting)
        if lk is None and self._wanted is not None:
            await self._wanted.wait()  # no host runs: start one when a terminal is needed
        async with self.clock.timeout(ATTACH_WITHIN):
            while True:
                if lk is None:
                    lk = await open_link(places, lambda: ServerLink(self), greeting)
                if lk is None:
                    await start_host(
                        places,
                        state_dir=self.state_dir,
                        workspace=self.workspace,
                        shell=self.default_shell,
                        linger=self.linger,
                        sleep=self.clock.sleep,
                    )
                    continue
                try:
                    info = await lk.greeted
                except HostRefused as exc:
                    # It drains (it stopped listening); the next one waits for its lock.
                    log.warning("replacing the terminal host: %s", exc)
                    lk.close()
                    lk = None
                    continue
                except Unavailable:
                    lk = None
                    continue  # it closed as we came: start or find the next one
                return lk, info

    def received(self, header: dict[str, Any], payload: bytes, lk: ServerLink) -> None:
        """A message from the host other than an answer."""
        method = header.get("n")
        if method is not None:
            params = orjson.Fragment(payload) if payload else None
            rides = lk.pending.get(header.get("a", -1))
            with contextlib.suppress(Exception):  # the connection may be closing
                if rides is not None and rides[1] is not None:
                    # With the answer to that request: through its context, so the client
                    # gets both in one write too.
                    notify_with_answer(rides[1], method, params)
                else:
                    ctx = self._contexts.get(header.get("c", -1))
                    if ctx is not None:
                        ctx.notify(method, params)
            return
        method = header.get("b")
        if method is not None:
            if self.broadcast is not None:
                self.broadcast(method, link.value_of(payload))
            return
        op = header.get("o")
        if op is not None:
            if self.observe is not None:
                self.observe(op, float(header.get("d", 0.0)), bool(header.get("ok")))
            return
        kind = header.get("k")
        if kind == "draining":
            # Its running commands finish on this link; new work goes to the next host.
            log.warning("the terminal host drains (%s); attaching a new one", header.get("reason"))
            lk.draining = True
            if not lk.lost.done():
                lk.lost.set_result(None)
        elif kind == "stopping":
            lk.stopped = True
        elif kind == "stats":
            self._stats_wire = payload
        elif kind == "welcome" and not lk.greeted.done():
            lk.greeted.set_result(header)
        elif kind == "refused" and not lk.greeted.done():
            lk.greeted.set_exception(HostRefused(str(header.get("reason"))))
            lk.close()  # it drains; what it says next (maybe in another framing) is not ours

    def link_closed(self, lk: ServerLink) -> None:
        self._draining.discard(lk)

    def _quality_changed(self, event: QualityChanged) -> None:
        lk = self._link
        if lk is not None:
            lk.send({"k": "features"}, link.payload_of(self.features()))

    # -- forwarding ------------------------------------------------------------------------
    def _forwarder(self, name: str) -> Callable[[dict[str, Any], CallContext], Any]:
        async def forward(params: dict[str, Any], ctx: CallContext) -> Any:
            lk = self._link
            if lk is None or lk.transport is None:
                lk = await self.ready()
            return await self._call(lk, name, params, ctx)

        forward.__name__ = f"forward {name}"
        return forward

    def _relayer(self, name: str) -> Relay:
        def relay(
            params: dict[str, Any], ctx: CallContext, answer: Answer
        ) -> Callable[[], None] | None:
            lk = self._link
            if lk is None or lk.transport is None:
                return None  # not attached (yet): the handler waits for the host
            q = self._send(lk, name, params, ctx, answer)
            return lambda: self._withdraw(lk, q)

        return relay

    async def _call(
        self, lk: ServerLink, name: str, params: dict[str, Any], ctx: CallContext | None
    ) -> Any:
        awaited = _Awaited()
        q = self._send(lk, name, params, ctx, awaited)
        try:
            return await awaited.future
        except asyncio.CancelledError:
            self._withdraw(lk, q)
            raise

    def _send(
        self,
        lk: ServerLink,
        name: str,
        params: dict[str, Any],
        ctx: CallContext | None,
        answer: Answer,
    ) -> int:
        """The request, to the host; `answer` takes its outcome. Its id on the link."""
        q = next(self._ids)
        header: dict[str, Any] = {"q": q, "m": name}
        if ctx is not None:
            conn = ctx.connection_id
            if conn not in self._contexts:
                self._contexts[conn] = ctx
                ctx.on_close(lambda: self._closed(conn))
            header["c"] = conn
            header["t"] = ctx.received_at
            session = getattr(ctx, "session", None)
            if session is not None:
                header["s"] = session
            reply_id = answer.request_id
            if reply_id is not None:  # the host frames a result for the client itself
                header["i"] = reply_id
        lk.pending[q] = (answer, ctx)
        lk.send(header, orjson.dumps(params))
        return q

    def _withdraw(self, lk: ServerLink, q: int) -> None:
        """The answer to request `q` is no longer awaited: the host is told (the work it
        started goes on only if it is keyed: the host keeps those for a repeat)."""
        if lk.pending.pop(q, None) is not None:
            lk.send({"k": "cancel", "q": q})

    def outlives(self, method: str) -> bool:
        """Keyed `terminal/*` executions outlive this server: the host keeps them."""
        return method in self._limits

    def cancel_key(self, key: str) -> None:
        """The client cancelled the keyed execution `key` (which runs in the host)."""
        lk = self._link
        if lk is not None:
            lk.send({"k": "cancelKey", "key": key})

    def _closed(self, conn: int) -> None:
        self._contexts.pop(conn, None)
        lk = self._link
        if lk is not None:
            lk.send({"k": "closed", "c": conn})


class _Awaited:
    """An outcome awaited by a task of the server's (`Answer` of `HostProxy._call`)."""

    __slots__ = ("future",)

    request_id = None  # no request of a client: nothing to frame

    def __init__(self) -> None:
        self.future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

    def __call__(self, result: Any, error: BaseException | None) -> None:
        if self.future.done():
            return
        if error is None:
            self.future.set_result(result)
        else:
            self.future.set_exception(error)

    def framed(self, frames: bytes) -> None:
        self(None, Unavailable("the terminal host framed an answer it was not asked to frame"))


def _service_stats(value: Any) -> ServiceStats | None:
    # Loaded when the figures are first read, not when the server starts or attaches.
    from lapce_bridge.terminal.service import ServiceStats
    from lapce_bridge.terminal.spool import SpoolStats
    from lapce_bridge.terminal.stream import StreamStats

    try:
        fields = dict(value)
        fields["spools"] = SpoolStats(**fields["spools"])
        fields["streams"] = StreamStats(**fields["streams"])
        return ServiceStats(**fields)
    except (TypeError, KeyError, ValueError):  # another version's figures: none rather than wrong
        return None


__all__ = ["HostProxy", "ServerLink"]
