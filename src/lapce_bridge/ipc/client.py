"""`BridgeClient`: requests over LSP framing, and a recovery path that loses nothing.

Theory of operation: a client holds at most one connection (`_Wire`, an asyncio Protocol
with the framing codec). `request()` is the plain path: it fails with `ConnectionLost` if the
connection drops, `BridgeTimeout` (and a `$/cancelRequest` to the server) when late.

`send_with_recovery()` is the path that loses nothing:

1. the circuit breaker admits it (`Unavailable` at once while it is open: the caller learns
   the server is considered down instead of waiting);
2. it gets an `idempotencyKey` (uuid4 hex) and enters the outbox (`ResourceExhausted` when
   full), then goes on the wire if the connection is up;
3. if the connection drops (or was never up, or the server answers "shutting down"), the
   entry stays in the outbox and a single reconnect task tries again at once, then after each
   delay of the `RetryPolicy` schedule (on the clock), restarting a supervised server first;
4. once connected, every unanswered entry is sent again, oldest first, before anything new;
   the server's journal answers a repeat with the first outcome, so nothing runs twice.

An answer (result or server error) counts as a success for the breaker: the server was
reached. A dropped connection counts as one failure (not one per request that was on it),
and so does each failed reconnect attempt once the outage has lasted `outage_grace` seconds:
a server that restarts in time never trips the breaker, one that stays down does, and then
new calls fail fast while those already queued keep waiting. If reconnecting is given
up (the policy's attempts run out, the supervised server crash-loops, the token is refused),
every waiting entry fails with that error: an explicit answer, never silence.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from lapce_bridge import __version__
from lapce_bridge.clock import SYSTEM_CLOCK
from lapce_bridge.core.breaker import CircuitBreaker, CircuitBreakerConfig
from lapce_bridge.core.clock import Clock
from lapce_bridge.core.errors import (
    BridgeError,
    BridgeTimeout,
    ConnectionLost,
)
from lapce_bridge.core.retry import RetryPolicy
from lapce_bridge.ipc import jsonrpc
from lapce_bridge.ipc.framing import Frame, FrameDecoder, encode
from lapce_bridge.ipc.outbox import Outbox, OutboxEntry
from lapce_bridge.ipc.paths import default_socket_path
from lapce_bridge.ipc.spawn import ServerSupervisor

log = logging.getLogger("lapce_bridge.client")

NotificationHandler = Callable[[Any], None]

DEFAULT_BREAKER = CircuitBreakerConfig(
    failure_rate_threshold=50.0,
    sliding_window_size=20,
    minimum_number_of_calls=10,
    wait_duration_in_open=2.0,
    permitted_calls_in_half_open=3,
)


def default_retry(clock: Clock) -> RetryPolicy:
    # A local server restarts in a few hundred ms: retry fast, never wait more than 250 ms.
    return RetryPolicy(
        max_attempts=None, initial_delay=0.01, max_delay=0.25, multiplier=2.0, clock=clock
    )


class _Wire(asyncio.Protocol):
    def __init__(self, client: BridgeClient) -> None:
        self.client = client
        self.decoder = FrameDecoder(1 << 30)
        self.transport: asyncio.Transport | None = None
        self.pending: dict[int, asyncio.Future[Any]] = {}
        self.entries: dict[int, OutboxEntry] = {}
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        for event in self.decoder.feed(data):
            if type(event) is Frame:
                try:
                    message = orjson.loads(event.body)
                except orjson.JSONDecodeError:
                    log.warning("the server sent invalid JSON; ignored")
                    continue
                for msg in message if type(message) is list else [message]:
                    if type(msg) is dict:
                        self.client._on_message(self, msg)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.client._on_lost(self, exc)

    def send(self, payload: bytes) -> None:
        if self.transport is None or self.lost or self.transport.is_closing():
            raise ConnectionLost("not connected to the server")
        self.transport.write(encode(payload))

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class BridgeClient:
    def __init__(
        self,
        socket_path: Path | str | None = None,
        *,
        clock: Clock | None = None,
        breaker_config: CircuitBreakerConfig | None = None,
        retry: RetryPolicy | None = None,
        outbox_limit: int = 1000,
        durable_outbox: Path | None = None,
        request_timeout: float | None = 60.0,
        tcp: tuple[str, int] | None = None,
        token: str | None = None,
        supervisor: ServerSupervisor | None = None,
        client_name: str = "lapce-bridge-client",
        outage_grace: float = 2.0,
    ) -> None:
        self.socket_path = Path(socket_path) if socket_path is not None else default_socket_path()
        self.clock = clock or SYSTEM_CLOCK
        self.breaker = CircuitBreaker(
            "ipc-client", breaker_config or DEFAULT_BREAKER, clock=self.clock
        )
        self.retry = retry or default_retry(self.clock)
        self.outbox = Outbox(outbox_limit, durable_outbox)
        self.request_timeout = request_timeout
        self.tcp = tcp
        self.token = token
        self.supervisor = supervisor
        self.client_name = client_name
        self.outage_grace = outage_grace
        self.server_info: dict[str, Any] | None = None
        self.reconnects = 0
        self._wire: _Wire | None = None
        self._ids = itertools.count(1)
        self._handlers: dict[str, list[NotificationHandler]] = {}
        self._reconnect_task: asyncio.Task[None] | None = None
        self._closed = False
        # Entries a previous run left in the durable outbox: their answers land here.
        self.recovered: dict[str, asyncio.Future[Any]] = {}

    # -- connection -----------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        return self._wire is not None and not self._wire.lost

    async def connect(self, *, startup_timeout: float = 15.0) -> BridgeClient:
        """Connect (starting a supervised server and waiting for it) and send what is queued."""
        loop = asyncio.get_running_loop()
        for entry in self.outbox.recovered():
            if entry.future is None:
                entry.future = loop.create_future()
                self.recovered[entry.key] = entry.future
        if self.supervisor is None:
            await self._open()
        else:
            await self._open_with_retry(startup_timeout)
        self._flush()
        return self

    async def _open_with_retry(self, within: float) -> None:
        delays = self.retry.schedule(None)
        async with self.clock.timeout(within):
            while True:
                try:
                    await self._open()
                    return
                except ConnectionLost:
                    await self.clock.sleep(next(delays))

    async def _open(self) -> None:
        if self.supervisor is not None:
            await self.supervisor.ensure_running()
        loop = asyncio.get_running_loop()
        try:
            if self.tcp is not None:
                _, wire = await loop.create_connection(lambda: _Wire(self), *self.tcp)
            else:
                _, wire = await loop.create_unix_connection(
                    lambda: _Wire(self), str(self.socket_path)
                )
        except OSError as exc:
            raise ConnectionLost(f"cannot connect to {self._where()}: {exc}") from exc
        params: dict[str, Any] = {
            "protocolVersion": 1,
            "clientInfo": {"name": self.client_name, "version": __version__},
        }
        if self.token is not None:
            params["token"] = self.token
        try:
            self.server_info = await self._call(wire, "initialize", params, 10.0)
        except BaseException:
            wire.close()
            raise
        self._wire = wire

    def _where(self) -> str:
        return f"tcp:{self.tcp[0]}:{self.tcp[1]}" if self.tcp else str(self.socket_path)

    # -- plain requests -------------------------------------------------------------------
    async def request(
        self, method: str, params: dict[str, Any] | list[Any] | None = None, *,
        timeout: float | None = None,  # noqa: ASYNC109 - on the injected clock
    ) -> Any:  # fmt: skip
        """Send one request and await its result; server errors raise their `BridgeError`."""
        wire = self._wire
        if wire is None or wire.lost:
            raise ConnectionLost(f"not connected to {self._where()}")
        return await self._call(wire, method, params, timeout or self.request_timeout)

    async def _call(
        self,
        wire: _Wire,
        method: str,
        params: Any,
        timeout: float | None,  # noqa: ASYNC109
    ) -> Any:
        msg_id = next(self._ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        wire.pending[msg_id] = future
        try:
            wire.send(jsonrpc.request_bytes(msg_id, method, params))
            async with self.clock.timeout(timeout):
                return await future
        except TimeoutError as exc:
            self._cancel_on(wire, {"id": msg_id})
            raise BridgeTimeout(
                f"{method}: no answer within {timeout:g} s",
                data={"operation": method, "seconds": timeout},
            ) from exc
        except asyncio.CancelledError:
            if not future.done():
                self._cancel_on(wire, {"id": msg_id})
            raise
        finally:
            wire.pending.pop(msg_id, None)

    def notify(self, method: str, params: Any = None) -> None:
        wire = self._wire
        if wire is None or wire.lost:
            raise ConnectionLost(f"not connected to {self._where()}")
        wire.send(jsonrpc.notification_bytes(method, params))

    def on_notification(self, method: str, handler: NotificationHandler) -> Callable[[], None]:
        """Call `handler(params)` for each notification `method`; returns an unsubscribe."""
        self._handlers.setdefault(method, []).append(handler)

        def remove() -> None:
            handlers = self._handlers.get(method, [])
            if handler in handlers:
                handlers.remove(handler)

        return remove

    def _cancel_on(self, wire: _Wire, params: dict[str, Any]) -> None:
        with contextlib.suppress(ConnectionLost):
            wire.send(jsonrpc.notification_bytes("$/cancelRequest", params))

    # -- recovery path --------------------------------------------------------------------
    async def send_with_recovery(
        self,
        method: str,
        params: dict[str, Any] | None = None,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - on the injected clock
    ) -> Any:
        """Deliver a request whatever happens to the connection; executed at most once."""
        if self._closed:
            raise ConnectionLost("the client is closed")
        params = dict(params or {})
        key = params.get("idempotencyKey") or uuid.uuid4().hex
        params["idempotencyKey"] = key
        self.breaker.acquire()
        generation = self.breaker.generation
        try:
            entry = self.outbox.put(method, params, key, now=self.clock.now())
        except BaseException:
            self.breaker.release(generation=generation)
            raise
        entry.generation = generation
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        entry.future = future
        self._dispatch(entry)
        try:
            async with self.clock.timeout(timeout):
                return await asyncio.shield(future)
        except TimeoutError as exc:
            self._abandon(entry)
            raise BridgeTimeout(
                f"{method}: not answered within {timeout:g} s", data={"idempotencyKey": key}
            ) from exc
        except asyncio.CancelledError:
            self._abandon(entry)
            raise

    def _dispatch(self, entry: OutboxEntry) -> None:
        wire = self._wire
        recovering = self._reconnect_task is not None and not self._reconnect_task.done()
        if wire is not None and not wire.lost and not recovering:
            self._send_entry(wire, entry)
        else:
            self._start_reconnect()

    def _send_entry(self, wire: _Wire, entry: OutboxEntry) -> None:
        msg_id = next(self._ids)
        entry.sent_id = msg_id
        entry.attempts += 1
        wire.entries[msg_id] = entry
        try:
            wire.send(jsonrpc.request_bytes(msg_id, entry.method, entry.params))
        except ConnectionLost:
            wire.entries.pop(msg_id, None)
            entry.sent_id = None
            self._start_reconnect()

    def _flush(self) -> None:
        wire = self._wire
        if wire is None or wire.lost:
            return
        for entry in self.outbox.pending():
            if entry.sent_id is None and (entry.future is None or not entry.future.done()):
                self._send_entry(wire, entry)

    def _abandon(self, entry: OutboxEntry) -> None:
        self.outbox.done(entry)
        wire = self._wire
        if entry.sent_id is not None and wire is not None:
            wire.entries.pop(entry.sent_id, None)
            self._cancel_on(wire, {"idempotencyKey": entry.key})
        if entry.generation is not None:
            self.breaker.release(generation=entry.generation)
            entry.generation = None

    def _start_reconnect(self) -> None:
        if self._closed or (self._reconnect_task is not None and not self._reconnect_task.done()):
            return
        self._reconnect_task = asyncio.get_running_loop().create_task(self._reconnect())

    async def _reconnect(self) -> None:
        delays = self.retry.delays()
        breaker = self.breaker
        clock = self.clock
        outage_started = clock.now()
        while not self._closed:
            if not breaker.try_acquire():
                # Open: no attempts until its wait is over (then a half-open trial connect).
                await clock.sleep(max(breaker.retry_after(), self.retry.initial_delay))
                continue
            generation = breaker.generation
            started = clock.now()
            try:
                await self._open()
            except (ConnectionLost, BridgeTimeout) as exc:
                if started - outage_started >= self.outage_grace:
                    breaker.on_error(clock.now() - started, exc, generation=generation)
                else:  # a server restarting is expected to refuse for a moment
                    breaker.release(generation=generation)
                last: BridgeError = exc
            except BridgeError as exc:  # refused for good: a crash loop, a bad token
                breaker.release(generation=generation)
                self._fail_outbox(exc)
                return
            else:
                breaker.on_success(clock.now() - started, generation=generation)
                break
            delay = next(delays, None)
            if delay is None:
                self._fail_outbox(ConnectionLost(f"gave up reconnecting: {last.detail}"))
                return
            await clock.sleep(delay)
        self.reconnects += 1
        self._flush()

    def _fail_outbox(self, error: BridgeError) -> None:
        for entry in self.outbox.pending():
            self.outbox.done(entry)
            if entry.generation is not None:
                self.breaker.release(generation=entry.generation)
            if entry.future is not None and not entry.future.done():
                entry.future.set_exception(error)
                entry.future.exception()  # the caller may be gone; never "never retrieved"

    # -- incoming -------------------------------------------------------------------------
    def _on_message(self, wire: _Wire, msg: dict[str, Any]) -> None:
        method = msg.get("method")
        if method is not None:
            for handler in list(self._handlers.get(method, ())):
                try:
                    handler(msg.get("params"))
                except Exception:
                    log.exception("notification handler for %s failed", method)
            return
        msg_id = msg.get("id")
        if type(msg_id) is not int:
            return
        future = wire.pending.pop(msg_id, None)
        if future is not None:
            if not future.done():
                _settle(future, msg)
            return
        entry = wire.entries.pop(msg_id, None)
        if entry is not None:
            self._entry_answered(entry, msg)

    def _entry_answered(self, entry: OutboxEntry, msg: dict[str, Any]) -> None:
        entry.sent_id = None
        error = msg.get("error")
        if (
            type(error) is dict
            and type(error.get("data")) is dict
            and error["data"].get("shuttingDown")
        ):
            return  # not run: it stays queued and goes again after the reconnect
        self.outbox.done(entry)
        if entry.generation is not None:
            duration = self.clock.now() - entry.enqueued_at
            self.breaker.on_success(duration, generation=entry.generation)
            entry.generation = None
        if entry.future is not None and not entry.future.done():
            _settle(entry.future, msg)
            if entry.recovered:
                entry.future.exception()  # kept in `recovered`; no warning if nobody looks

    def _on_lost(self, wire: _Wire, exc: Exception | None) -> None:
        if self._wire is wire:
            self._wire = None
        lost = ConnectionLost(f"connection to {self._where()} lost" + (f": {exc}" if exc else ""))
        for future in wire.pending.values():
            if not future.done():
                future.set_exception(lost)
        wire.pending.clear()
        for entry in wire.entries.values():
            entry.sent_id = None  # still queued; it votes when its answer finally comes
        wire.entries.clear()
        if self._closed:
            return
        # One lost connection is one failure, however many requests were on it.
        self.breaker.on_error(0.0, lost)
        if len(self.outbox) or self.supervisor is not None:
            self._start_reconnect()

    # -- life cycle -----------------------------------------------------------------------
    async def close(self, *, stop_server: bool = True) -> None:
        self._closed = True
        task = self._reconnect_task
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        wire, self._wire = self._wire, None
        if wire is not None:
            wire.close()
        closed = ConnectionLost("the client was closed")
        for entry in self.outbox.pending():
            if entry.future is not None and not entry.future.done():
                entry.future.set_exception(closed)
                entry.future.exception()
        self.outbox.close()  # a durable outbox keeps what was not answered for next time
        if self.supervisor is not None and stop_server:
            await self.supervisor.stop()

    async def __aenter__(self) -> BridgeClient:
        if not self.connected:
            await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @classmethod
    async def spawn(
        cls,
        socket_path: Path | str | None = None,
        *,
        server_args: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
        max_crashes: int = 5,
        crash_window: float = 60.0,
        stderr_path: Path | None = None,
        **kwargs: Any,
    ) -> BridgeClient:
        """A connected client to a server it starts if none listens, and restarts if it dies."""
        path = Path(socket_path) if socket_path is not None else default_socket_path()
        supervisor = ServerSupervisor(
            path,
            args=server_args,
            env=env,
            clock=kwargs.get("clock"),
            max_crashes=max_crashes,
            crash_window=crash_window,
            stderr_path=stderr_path,
        )
        client = cls(path, supervisor=supervisor, **kwargs)
        try:
            await client.connect()
        except BaseException:
            await client.close()
            raise
        return client


def _settle(future: asyncio.Future[Any], msg: dict[str, Any]) -> None:
    error = msg.get("error")
    if error is not None:
        future.set_exception(
            jsonrpc.error_from_wire(error if type(error) is dict else {"message": str(error)})
        )
    else:
        future.set_result(msg.get("result"))


__all__ = ["DEFAULT_BREAKER", "BridgeClient", "default_retry"]
