"""The recovery path of `BridgeClient`: `send_with_recovery()` loses nothing.

`RecoveryPath` is composed with the client's `Link` (the connection) and `AnswerRetry` (the
matrix's retries, shared with plain requests); it never reaches into either.

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
up (after the network/critical row's attempts past the outage grace, with or without a
supervisor: a supervised server's refusals while it starts, within its `start_timeout`, are
not counted; the supervised server crash-loops; the token is refused), every waiting entry
fails with that error: an explicit answer, never silence, and no request waits forever.

Retries are the recovery matrix's: an answer refusing a request before it ran (retryable
-32005 or -32002) is sent again as often as its row allows, on the client's backoff; an
answer from work that ran is never re-sent (running it again is the server's call).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

from lapce_bridge.core.breaker import CircuitBreaker
from lapce_bridge.core.clock import Clock
from lapce_bridge.core.errors import (
    BridgeError,
    BridgeTimeout,
    ConnectionLost,
    ErrorCategory,
    ErrorSeverity,
    ResourceExhausted,
    Unavailable,
)
from lapce_bridge.core.matrix import UNBOUNDED_RETRIES, RecoveryMatrix
from lapce_bridge.core.retry import RetryPolicy
from lapce_bridge.ipc.link import Link
from lapce_bridge.ipc.outbox import Outbox, OutboxEntry
from lapce_bridge.ipc.wire import settle

T = TypeVar("T")


def refused_before_running(exc: BridgeError) -> bool:
    """A retryable refusal the server gave before running anything (under memory pressure,
    while shutting down, with a breaker open): sending it again cannot do anything twice."""
    return exc.classification.retryable and isinstance(exc, ResourceExhausted | Unavailable)


class Refused(Exception):
    """The server answered a refusal before running: the request may be sent again."""

    def __init__(self, error: BridgeError) -> None:
        super().__init__(error.detail)
        self.error = error


class AnswerRetry:
    """Sends again what the server refused before running, as often as the refusal's row of
    the recovery matrix allows (none when its strategy does not re-run), on `policy`'s
    backoff. `retried` counts the re-sends."""

    def __init__(self, matrix: RecoveryMatrix, policy: RetryPolicy, clock: Clock) -> None:
        self.matrix = matrix
        self.policy = policy
        self.clock = clock
        self.retried = 0

    def schedule(self, exc: BaseException) -> Iterator[float]:
        """The delays before each retry of an answer failing with `exc`."""
        row = self.matrix.lookup_error(exc)
        attempts = self.matrix.attempts(
            row.category, row.severity, unbounded=self.policy.max_attempts or UNBOUNDED_RETRIES
        )
        return self.policy.schedule((attempts or 1) - 1)

    async def run(self, attempt: Callable[[], Awaitable[T]]) -> T:
        """`attempt()` until it returns; it raises `Refused` for what may be sent again."""
        delays: Iterator[float] | None = None
        while True:
            try:
                return await attempt()
            except Refused as refused:
                exc = refused.error
                if delays is None:
                    delays = self.schedule(exc)
                delay = next(delays, None)
                if delay is None:
                    raise exc from None
            self.retried += 1
            await self.clock.sleep(delay)


class _EntryWaiter:
    """An outbox entry on the wire: its answer settles it; a lost wire leaves it queued."""

    __slots__ = ("entry", "path")

    def __init__(self, path: RecoveryPath, entry: OutboxEntry) -> None:
        self.path = path
        self.entry = entry

    def answered(self, msg: dict[str, Any]) -> None:
        self.path.entry_answered(self.entry, msg)

    def lost(self, exc: ConnectionLost) -> None:
        self.entry.sent_id = None  # still queued; it votes when its answer finally comes


class RecoveryPath:
    def __init__(
        self,
        link: Link,
        *,
        clock: Clock,
        breaker: CircuitBreaker,
        retry: RetryPolicy,
        answers: AnswerRetry,
        outbox: Outbox,
        matrix: RecoveryMatrix,
        outage_grace: float,
    ) -> None:
        self.link = link
        self.clock = clock
        self.breaker = breaker
        self.retry = retry
        self.answers = answers
        self.outbox = outbox
        self.matrix = matrix
        self.outage_grace = outage_grace
        self.reconnects = 0
        # Entries a previous run left in the durable outbox: their answers land here.
        self.recovered: dict[str, asyncio.Future[Any]] = {}
        self._reconnect_task: asyncio.Task[None] | None = None
        self._reconnected: list[Callable[[], None]] = []
        self._closed = False
        link.on_lost(self._connection_lost)

    @property
    def supervised(self) -> bool:
        return self.link.supervisor is not None

    @property
    def reconnecting(self) -> bool:
        return self._reconnect_task is not None and not self._reconnect_task.done()

    def on_reconnected(self, listener: Callable[[], None]) -> Callable[[], None]:
        """Call `listener()` after each reconnect, once the queued entries went again;
        returns an unsubscribe."""
        self._reconnected.append(listener)

        def remove() -> None:
            if listener in self._reconnected:
                self._reconnected.remove(listener)

        return remove

    async def reconnected_within(self, within: float) -> None:
        """Wait up to `within` seconds for a reconnect under way (a server restarting) to
        end, whichever way it ends; at once when none is."""
        task = self._reconnect_task
        if task is None or task.done():
            return
        with contextlib.suppress(TimeoutError):
            async with self.clock.timeout(within):
                await asyncio.shield(task)

    def adopt_recovered(self) -> None:
        """Give each entry a previous run left in the durable outbox a future to answer."""
        loop = asyncio.get_running_loop()
        for entry in self.outbox.recovered():
            if entry.future is None:
                entry.future = loop.create_future()
                self.recovered[entry.key] = entry.future

    async def open_within(self, within: float) -> None:
        """Connect, retrying on the backoff for `within` seconds (a server starting up)."""
        delays = self.retry.schedule(None)
        async with self.clock.timeout(within):
            while True:
                try:
                    await self.link.open()
                    return
                except ConnectionLost:
                    await self.clock.sleep(next(delays))

    async def send(
        self,
        method: str,
        params: dict[str, Any] | None = None,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - on the injected clock
        cancel: bool = False,
    ) -> Any:
        """Deliver a request whatever happens to the connection; executed at most once.

        When `timeout` passes the request is given up here, but the work goes on on the
        server unless `cancel`: the `BridgeTimeout` carries its `idempotencyKey`. An answer
        refusing it before it ran (retryable -32005/-32002) is sent again, as often and as
        far apart as its row of the recovery matrix says."""
        params = dict(params or {})
        if not params.get("idempotencyKey"):
            params["idempotencyKey"] = uuid.uuid4().hex  # one key for every retry
        return await self.answers.run(lambda: self._deliver(method, params, timeout, cancel))

    async def _deliver(
        self,
        method: str,
        params: dict[str, Any],
        timeout: float | None,  # noqa: ASYNC109 - on the injected clock
        cancel: bool,
    ) -> Any:
        if self._closed:
            raise ConnectionLost("the client is closed")
        key = params["idempotencyKey"]
        self.breaker.acquire()
        generation = self.breaker.generation
        try:
            entry = self.outbox.put(method, dict(params), key, now=self.clock.now())
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
        except BridgeError as exc:
            if refused_before_running(exc):
                raise Refused(exc) from exc  # the server's answer: it did not run
            raise
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
        if self.link.connected and not self.reconnecting:
            self._send_entry(entry)
        else:
            self._start_reconnect()

    def _send_entry(self, entry: OutboxEntry) -> None:
        try:
            wire = self.link.current()
            entry.sent_id = self.link.send(
                wire, entry.method, entry.params, _EntryWaiter(self, entry)
            )
        except ConnectionLost:
            entry.sent_id = None
            self._start_reconnect()
            return
        entry.attempts += 1

    def flush(self) -> None:
        """Send every queued entry not on the wire, oldest first."""
        if not self.link.connected:
            return
        for entry in self.outbox.pending():
            if entry.sent_id is None and (entry.future is None or not entry.future.done()):
                self._send_entry(entry)

    def _abandon(self, entry: OutboxEntry, *, cancel: bool) -> None:
        self.outbox.done(entry)
        wire = self.link.wire
        if entry.sent_id is not None and wire is not None:
            wire.forget(entry.sent_id)
            if cancel:
                self.link.cancel_on(wire, {"idempotencyKey": entry.key})
        if entry.generation is not None:
            self.breaker.release(generation=entry.generation)
            entry.generation = None

    def _connection_lost(self, lost: ConnectionLost) -> None:
        if self._closed:
            return
        # One lost connection is one failure, however many requests were on it.
        self.breaker.on_error(0.0, lost)
        # Always: besides what is queued, the client's session holds its default terminal
        # (cwd, env), its watches and streams; and its next plain request should find a
        # restarted server instead of "not connected".
        self._start_reconnect()

    def _start_reconnect(self) -> None:
        if self._closed or self.reconnecting:
            return
        self._reconnect_task = asyncio.get_running_loop().create_task(self._reconnect())

    def _reconnect_attempts(self) -> int:
        """How many failed connects past the outage grace end the reconnecting: the
        network/critical row's (reconnect_ipc), with or without a supervisor (whose restarts
        the same row bounds, `BridgeClient.spawn`)."""
        attempts = self.matrix.attempts(
            ErrorCategory.NETWORK, ErrorSeverity.CRITICAL, unbounded=UNBOUNDED_RETRIES
        )
        return attempts or UNBOUNDED_RETRIES

    def _counts(self, outage_started: float, attempt_started: float) -> bool:
        """Whether a failed connect counts against the row: past the outage grace, and not
        while a supervised server it restarted is still starting (slow on a loaded machine)."""
        if attempt_started - outage_started < self.outage_grace:
            return False
        supervisor = self.link.supervisor
        return supervisor is None or not supervisor.starting()

    async def _reconnect(self) -> None:
        delays = self.retry.delays()
        allowed = self._reconnect_attempts()
        attempts = 0  # failed connects past the outage grace (a restart's refusals are free)
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
                await self.link.open()
            except (ConnectionLost, BridgeTimeout) as exc:
                if self._counts(outage_started, started):
                    attempts += 1
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
            if delay is None or attempts >= allowed:
                self._fail_outbox(
                    ConnectionLost(
                        f"gave up reconnecting to {self.link.endpoint} after {attempts} "
                        f"attempts (the recovery matrix's network/critical row allows "
                        f"{allowed}): {last.detail}",
                        data={"attempts": attempts, "allowed": allowed},
                    )
                )
                return
            supervisor = self.link.supervisor
            if supervisor is not None and supervisor.starting():
                # Our own server is starting: it binds its socket within a moment, and a
                # refused local connect costs microseconds: poll at the first delay, not at a
                # backoff that would find it up to `max_delay` late.
                delay = min(delay, self.retry.initial_delay)
            await clock.sleep(delay)
        if self._closed:
            return
        self.reconnects += 1
        self.flush()
        for listener in list(self._reconnected):
            listener()

    def _fail_outbox(self, error: BridgeError) -> None:
        for entry in self.outbox.pending():
            self.outbox.done(entry)
            if entry.generation is not None:
                self.breaker.release(generation=entry.generation)
            if entry.future is not None and not entry.future.done():
                entry.future.set_exception(error)
                entry.future.exception()  # the caller may be gone; never "never retrieved"

    def entry_answered(self, entry: OutboxEntry, msg: dict[str, Any]) -> None:
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

    async def close(self) -> None:
        """Stop reconnecting; every entry still waiting fails (a durable outbox keeps it)."""
        self._closed = True
        task = self._reconnect_task
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        closed = ConnectionLost("the client was closed")
        for entry in self.outbox.pending():
            if entry.future is not None and not entry.future.done():
                entry.future.set_exception(closed)
                entry.future.exception()
        self.outbox.close()


__all__ = ["AnswerRetry", "RecoveryPath", "Refused", "refused_before_running"]
