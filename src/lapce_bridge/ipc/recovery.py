"""The recovery path of `BridgeClient`: `send_with_recovery()` loses nothing.

Theory of operation: a request sent this way goes through four steps.

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
import uuid
from typing import TYPE_CHECKING, Any

from lapce_bridge.core.breaker import CircuitBreaker
from lapce_bridge.core.clock import Clock
from lapce_bridge.core.errors import BridgeError, BridgeTimeout, ConnectionLost
from lapce_bridge.core.retry import RetryPolicy
from lapce_bridge.ipc import jsonrpc
from lapce_bridge.ipc.outbox import Outbox, OutboxEntry
from lapce_bridge.ipc.wire import Wire, settle

if TYPE_CHECKING:
    import itertools


class RecoveryPath:
    """Mixed into `BridgeClient`, which sets these attributes and provides `_open`."""

    clock: Clock
    breaker: CircuitBreaker
    retry: RetryPolicy
    outbox: Outbox
    outage_grace: float
    reconnects: int
    _wire: Wire | None
    _ids: itertools.count[int]
    _reconnect_task: asyncio.Task[None] | None
    _closed: bool

    async def _open(self) -> None:
        raise NotImplementedError

    def _cancel_on(self, wire: Wire, params: dict[str, Any]) -> None:
        raise NotImplementedError

    async def send_with_recovery(
        self,
        method: str,
        params: dict[str, Any] | None = None,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - on the injected clock
        cancel: bool = False,
    ) -> Any:
        """Deliver a request whatever happens to the connection; executed at most once.

        When `timeout` passes the request is given up here, but the work goes on on the
        server unless `cancel`: the `BridgeTimeout` carries its `idempotencyKey`."""
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
            self._abandon(entry, cancel=cancel)
            raise BridgeTimeout(
                f"{method}: not answered within {timeout:g} s"
                + ("" if cancel else f"; still running under idempotencyKey {key!r}"),
                data={"idempotencyKey": key, "operation": method, "cancelled": cancel},
            ) from exc
        except asyncio.CancelledError:
            self._abandon(entry, cancel=True)
            raise

    def _dispatch(self, entry: OutboxEntry) -> None:
        wire = self._wire
        recovering = self._reconnect_task is not None and not self._reconnect_task.done()
        if wire is not None and not wire.lost and not recovering:
            self._send_entry(wire, entry)
        else:
            self._start_reconnect()

    def _send_entry(self, wire: Wire, entry: OutboxEntry) -> None:
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

    def _abandon(self, entry: OutboxEntry, *, cancel: bool) -> None:
        self.outbox.done(entry)
        wire = self._wire
        if entry.sent_id is not None and wire is not None:
            wire.entries.pop(entry.sent_id, None)
            if cancel:
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
            settle(entry.future, msg)
            if entry.recovered:
                entry.future.exception()  # kept in `recovered`; no warning if nobody looks


__all__ = ["RecoveryPath"]
