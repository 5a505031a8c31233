"""The request half of a connection: validate, dispatch, run, answer, cancel.

Theory of operation: a `Dispatcher` belongs to one connection (its `Outlet`) and reads the
method table, clock, limits and idempotency table from the server's shared `ServerState`.
A method's name is the key it is registered under; that name is its operation everywhere.

- A sync handler without an idempotency key is called inline and answered before the next
  frame is looked at (no Task: a Task costs 50-70 us); it cannot be preempted, so such
  handlers must be cheap and are not bounded by the timeouts.
- An async handler runs in a Task under its limit (the clock's `timeout`, a pass counted as
  `TimeoutManager.with_timeout` counts it), listed by request id so `$/cancelRequest {id}`
  cancels it (-32800). Its limit is the configured one, or longer
  when the request's own params allow more (`Method.limit`: a command's `timeoutMs`,
  `maxWaitMs`): long work is governed by its own limits, never cut short by ours.
- A relayed method (`Method.relay`: the terminal host's forwarding) starts with no Task: its
  outcome comes back by a callback and is answered there, in the same step (`_Relayed`:
  listed by id like a task, cancelled the same ways, bounded by a timer on the clock).
- A keyed request goes through `Idempotency` (journalled, at most once, outcome shared).
- Params are checked in one place before any handler runs (`Method.validate`).
- While the server's services are still opening (`ServerState.opening`), what needs them
  waits, in arrival order, and runs once they are open; `ping` and the like are answered.
- Every task has an owner: requests, batch members and a notification's work are all listed
  here, cancelled when the connection closes, and drained by the server on shutdown.

Every outcome goes through `_conclude`, the one code path that times it, encodes it (once)
and observes it: `observe(name, seconds, ok)` where `ok` is false only for the server's own
faults (`is_server_fault`): a caller's mistake never counts against failure rate, SLO or
alerts. A result JSON cannot hold is the server's bug: -32603, never -32602.

Invariant: nothing here raises into the transport: every request gets exactly one answer,
except a notification, which never gets one, and a request whose connection is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

import orjson

from lapce_bridge.core.clock import Timer
from lapce_bridge.core.errors import (
    BridgeError,
    Cancelled,
    InternalError,
    InvalidParams,
    InvalidRequest,
    MessageTooLarge,
    MethodNotFound,
    ResourceExhausted,
    Unavailable,
    is_server_fault,
)
from lapce_bridge.core.metrics import OTHER_OPERATION
from lapce_bridge.ipc import jsonrpc
from lapce_bridge.ipc.framing import RequestId
from lapce_bridge.ipc.idempotency import (
    Outcome,
    check_key,
    encode_outcome,
    shutting_down,
    signature,
)
from lapce_bridge.ipc.jsonrpc import Batch, Invalid, Notification, Request
from lapce_bridge.ipc.state import ServerState
from lapce_bridge.rpc import Method, Params, request_limit

log = logging.getLogger("lapce_bridge.ipc")

CANCEL = "$/cancelRequest"


class Outlet(Protocol):
    """What the dispatcher needs from the connection it belongs to."""

    @property
    def id(self) -> int: ...

    @property
    def closing(self) -> bool: ...

    def write(self, payload: bytes) -> None: ...

    def write_many(self, payloads: list[bytes]) -> None:
        """Several messages, in order, in one write where the transport allows."""
        ...

    def notify(self, method: str, params: Any) -> None: ...

    def on_close(self, callback: Callable[[], None]) -> None: ...


class _Detached:
    """The outlet of a connection that is gone: writes go nowhere (its tasks were cancelled)."""

    id = 0
    closing = True

    def write(self, payload: bytes) -> None:
        pass

    def write_many(self, payloads: list[bytes]) -> None:
        pass

    def notify(self, method: str, params: Any) -> None:
        pass

    def on_close(self, callback: Callable[[], None]) -> None:
        callback()


_DETACHED = _Detached()


class RequestContext:
    """The `CallContext` a handler receives.

    While the dispatcher holds it (a request answered from a task: `hold`), notifications
    sent with `notify_with_answer` wait and leave with the answer, in one write (`release`);
    otherwise, and once the answer has gone, they are sent at once."""

    __slots__ = ("_outlet", "_riders", "received_at")

    def __init__(self, outlet: Outlet, received_at: float) -> None:
        self._outlet = outlet
        self.received_at = received_at
        self._riders: list[tuple[str, Any]] | None = None  # None: notifications go at once

    @property
    def connection_id(self) -> int:
        return self._outlet.id

    def notify(self, method: str, params: Any) -> None:
        self._outlet.notify(method, params)

    def on_close(self, callback: Callable[[], None]) -> None:
        self._outlet.on_close(callback)

    def notify_with_answer(self, method: str, params: Any) -> None:
        riders = self._riders
        if riders is None:
            self._outlet.notify(method, params)
        else:
            riders.append((method, params))

    def hold(self) -> None:
        self._riders = []

    def release(self, answer: bytes | None) -> None:
        """Write the held notifications, then `answer`, together (without an answer to give,
        the notifications alone); from now on notifications go at once."""
        riders, self._riders = self._riders, None
        outlet = self._outlet
        if not riders:
            if answer is not None:
                outlet.write(answer)
        elif answer is None:
            for method, params in riders:
                outlet.notify(method, params)
        else:
            payloads = []
            for method, params in riders:
                try:
                    payloads.append(jsonrpc.notification_bytes(method, params))
                except TypeError:
                    log.exception("notification %s is not JSON-serialisable", method)
            payloads.append(answer)
            outlet.write_many(payloads)

    @property
    def session(self) -> str | None:
        """The session the client named in `initialize` (its default terminal comes back)."""
        session: str | None = getattr(self._outlet, "session", None)
        return session

    def name_session(self, session: str) -> None:
        setattr(self._outlet, "session", session)  # noqa: B010 - not part of Outlet's protocol


class Prepared:
    """A request that passed every check and is ready to run."""

    __slots__ = ("ctx", "key", "limit", "method", "name", "params")

    def __init__(
        self,
        name: str,
        method: Method,
        params: Params,
        ctx: RequestContext,
        key: str | None,
        limit: float | None,
    ) -> None:
        self.name = name
        self.method = method
        self.params = params
        self.ctx = ctx
        self.key = key
        self.limit = limit  # seconds; None: unbounded by the dispatcher (the work's own)


class _Relayed:
    """A request started by its method's relay, with no Task (`Method.relay`). It is in
    flight as a task would be: listed by id, answered -32800 on `$/cancelRequest`, withdrawn
    when its connection closes or the server shuts down, answered -32001 when its limit
    passes (a timer on the clock); its outcome is answered from the callback that brings it."""

    __slots__ = ("_dispatcher", "_finished", "_prep", "_req_id", "_timer", "_waiter", "_withdraw")

    def __init__(self, dispatcher: Dispatcher, req_id: RequestId, prep: Prepared) -> None:
        self._dispatcher = dispatcher
        self._req_id = req_id
        self._prep = prep
        self._finished = False
        self._withdraw: Callable[[], None] | None = None
        self._timer: Timer | None = None
        self._waiter: asyncio.Future[None] | None = None

    def start(self) -> bool:
        """Relayed (False: it could not start now; nothing was done)."""
        prep = self._prep
        relay = prep.method.relay
        assert relay is not None
        try:
            withdraw = relay(prep.params, prep.ctx, self)
        except Exception as exc:  # a bug in the relay: answered like a handler's
            self.answer(None, exc)
            return True
        if withdraw is None:
            return False
        self._withdraw = withdraw
        if prep.limit is not None and not self._finished:
            self._timer = self._dispatcher.state.clock.call_later(prep.limit, self._expire)
        return True

    def done(self) -> bool:
        return self._finished

    @property
    def request_id(self) -> RequestId:
        """The request's id, when its connection takes messages framed elsewhere (a socket
        client's: `write_frame`; not an MCP call's, answered unframed)."""
        return self._req_id if _frames_to(self._dispatcher.outlet) is not None else None

    def framed(self, frames: bytes) -> None:
        """A result framed where the work was done (`Answer.framed`): written as it came,
        after any notification held here (none, when that side framed them too)."""
        if self._finished:
            return
        prep = self._prep
        state = self._dispatcher.state
        elapsed = state.clock.now() - prep.ctx.received_at
        self._finish(None, frames)
        state.observe(prep.name, elapsed, True)

    def __call__(self, result: Any, error: BaseException | None) -> None:
        self.answer(result, error)

    def answer(self, result: Any, error: BaseException | None) -> None:
        """The relay's outcome: concluded and answered (with what rides with it) at once."""
        if self._finished:
            return
        prep = self._prep
        self._dispatcher._conclude(prep.name, prep.ctx.received_at, result, error, self._answered)

    def _answered(self, outcome: Outcome) -> None:
        self._finish(_response(self._req_id, outcome))

    def cancel(self) -> bool:
        """Withdrawn as a cancelled task would be: answered -32800 after `$/cancelRequest`,
        "shutting down" when the server stops, not at all when the connection left."""
        if self._finished:
            return False
        self._give_up()
        dispatcher = self._dispatcher
        state = dispatcher.state
        prep = self._prep
        state.observe(prep.name, state.clock.now() - prep.ctx.received_at, True)  # no failure
        req_id = self._req_id
        if req_id in dispatcher._cancelled_ids:
            dispatcher._cancelled_ids.discard(req_id)
            self._finish(
                jsonrpc.error_bytes(req_id, Cancelled(f"request {req_id!r} was cancelled"))
            )
        elif state.shutting_down and not dispatcher.outlet.closing:
            self._finish(jsonrpc.error_bytes(req_id, shutting_down()))
        else:
            self._finish(None)
        return True

    def waiter(self) -> asyncio.Future[None]:
        """Done when this request is (what the server's shutdown waits for); cancelling it
        cancels the request."""
        if self._waiter is None:
            self._waiter = asyncio.get_running_loop().create_future()
            if self._finished:
                self._waiter.set_result(None)
            else:
                self._waiter.add_done_callback(self._waited)
        return self._waiter

    def _waited(self, waiter: asyncio.Future[None]) -> None:
        if waiter.cancelled():
            self.cancel()

    def _expire(self) -> None:
        if self._finished:
            return
        self._give_up()
        state = self._dispatcher.state
        prep = self._prep
        assert prep.limit is not None
        elapsed = state.clock.now() - prep.ctx.received_at
        self.answer(None, state.timeouts.expired(prep.name, prep.limit, elapsed))

    def _give_up(self) -> None:
        if self._withdraw is not None:
            self._withdraw()

    def _finish(self, response: bytes | None, frames: bytes = b"") -> None:
        self._finished = True
        if self._timer is not None:
            self._timer.cancel()
        dispatcher = self._dispatcher
        dispatcher._inflight.pop(self._req_id, None)
        dispatcher._passed_keys.pop(self._req_id, None)
        outlet = dispatcher.outlet
        if outlet is not _DETACHED:
            self._prep.ctx.release(response)
            write_frame = _frames_to(outlet) if frames else None
            if write_frame is not None:
                write_frame(frames)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class Dispatcher:
    """The requests in flight on one connection and how they are answered."""

    def __init__(self, state: ServerState, outlet: Outlet) -> None:
        self.state = state
        self.outlet = outlet
        self._inflight: dict[RequestId, asyncio.Task[Any] | _Relayed] = {}
        self._inflight_keys: dict[RequestId, str] = {}
        self._passed_keys: dict[RequestId, str] = {}  # keys an idempotent handler keeps itself
        self._executing: set[RequestId] = set()  # keyed requests whose task runs the work
        self._cancelled_ids: set[RequestId] = set()
        self._owned: set[asyncio.Task[Any]] = set()  # batch members, notifications' work
        # Waiting for the services, with the method each waits for (None: a batch).
        self._held: list[tuple[str | None, Callable[[], None]]] | None = None
        self.requests = 0

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    def tasks(self) -> list[asyncio.Future[Any]]:
        waited: list[asyncio.Future[Any]] = [
            t.waiter() if isinstance(t, _Relayed) else t for t in self._inflight.values()
        ]
        return [*waited, *self._owned]

    def cancel_all(self) -> None:
        """Nobody is left to answer: cancel what waits for this connection. A keyed
        execution goes on (it is the server's); its answer is not written (`_respond`)."""
        for req_id, task in list(self._inflight.items()):
            if req_id not in self._executing:
                task.cancel()
        for task in self._owned:
            task.cancel()

    def detach(self) -> None:
        """Forget the connection (it is gone): no reference cycle outlives it."""
        self.outlet = _DETACHED
        self._cancelled_ids.clear()

    # -- the one outcome path --------------------------------------------------------------
    def _conclude(
        self,
        name: str,
        started: float,
        result: Any,
        error: BaseException | None,
        then: Callable[[Outcome], None] | None = None,
    ) -> Outcome:
        """Time, encode (once) and observe one handler's outcome; `then` is given it before
        it is observed (its answer goes first: the metrics wait, the client does not)."""
        state = self.state
        elapsed = state.clock.now() - started
        if error is None:
            try:
                outcome = (True, jsonrpc.dumps(result))
            except TypeError as exc:  # orjson.JSONEncodeError is a TypeError
                error = InternalError(
                    f"{name}: the result cannot be encoded as JSON ({exc})",
                    data={"method": name},
                )
                error.__cause__ = exc
            else:
                # The last guard on every reply: a service that let one grow past the message
                # limit (the client's decoder would drop the connection) answers -32007.
                limit = state.limits.max_message_bytes
                if len(outcome[1]) > limit:
                    error = MessageTooLarge(
                        f"{name}: the result is {len(outcome[1])} bytes, over the message limit "
                        f"of {limit}; ask for less (a page, a range, base64 of a smaller file)",
                        data={"method": name, "size": len(outcome[1]), "limit": limit},
                    )
        if error is not None:
            outcome = encode_outcome(False, error)
            state.record_error(name, error)
        if then is not None:
            then(outcome)
        state.observe(name, elapsed, error is None or not is_server_fault(error))
        return outcome

    def _refused(self, req: Request, exc: BridgeError) -> bytes:
        """The answer to a request refused before its handler ran (params, admission, ...),
        counted by its classification like any other error answer."""
        self._count_refusal(req, exc)
        return jsonrpc.error_bytes(req.id, exc)

    def _count_refusal(self, req: Request, exc: BridgeError) -> None:
        state = self.state
        state.record_error(req.method if req.method in state.methods else OTHER_OPERATION, exc)

    def _call_sync(self, prep: Prepared) -> Outcome:
        try:
            result = prep.method.handler(prep.params, prep.ctx)
        except Exception as exc:
            return self._conclude(prep.name, prep.ctx.received_at, None, exc)
        return self._conclude(prep.name, prep.ctx.received_at, result, None)

    async def _run(self, prep: Prepared) -> Outcome:
        """Run one prepared handler to its outcome; raises only CancelledError."""
        method = prep.method
        if not method.is_async:
            return self._call_sync(prep)
        state = self.state
        started = prep.ctx.received_at
        work = method.handler(prep.params, prep.ctx)
        limit = prep.limit
        try:
            if limit is None:
                result = await work
            else:
                # `TimeoutManager.with_timeout` without its own coroutine and checks (the
                # limit is checked already, `_prepare`): every request's path. Its clock,
                # which need not be the server's (a test's virtual time, limits on real).
                timeouts = state.timeouts
                clock = timeouts.clock
                begun = clock.now()
                try:
                    async with clock.timeout(limit):
                        result = await work
                except TimeoutError as exc:
                    elapsed = clock.now() - begun
                    raise timeouts.expired(prep.name, limit, elapsed, exc) from exc
        except asyncio.CancelledError:
            state.observe(prep.name, state.clock.now() - started, True)  # not a failure
            raise
        except Exception as exc:
            return self._conclude(prep.name, started, None, exc)
        return self._conclude(prep.name, started, result, None)

    # -- requests ---------------------------------------------------------------------------
    def _prepare(self, req: Request) -> Prepared:
        state = self.state
        method = state.methods.get(req.method)
        if method is None:
            raise MethodNotFound(f"unknown method {req.method!r}", data={"method": req.method})
        params = req.params
        if params is None:
            params = {}
        elif type(params) is not dict:
            raise InvalidParams(f"{req.method} takes its params as an object")
        if req.id in self._inflight:
            raise InvalidRequest(f"request id {req.id!r} is already in flight")
        limit_inflight = state.limits.max_inflight
        if len(self._inflight) + len(self._owned) >= limit_inflight and method.is_async:
            raise ResourceExhausted(
                f"{limit_inflight} requests are already in flight on this connection; "
                "wait for some answers first",
                data={"limit": limit_inflight},
            )
        if method.validate is not None:
            method.validate(params)  # the one place params are checked before a handler
        limit: float | None = None
        if method.is_async:
            state.admit(req.method)  # cheap inline methods are always served
            limit = self._limit(req.method, method, params)
        key = params.get("idempotencyKey")
        if key is not None:
            key = check_key(key)
            if method.idempotent:
                key = None  # the handler answers a repeated key itself
        ctx = RequestContext(self.outlet, state.clock.now())
        return Prepared(req.method, method, params, ctx, key, limit)

    def _limit(self, name: str, method: Method, params: Params) -> float | None:
        return request_limit(self.state.timeouts.timeout_for(name), method, params)

    # -- while the services are opening -----------------------------------------------------
    def _must_wait(self, name: str | None) -> bool:
        """Anything but what the server answers while opening (`ping`, `shutdown`), and
        everything after a message that waits: the order of one connection is kept."""
        return self._held is not None or name not in self.state.served_while_opening

    def _hold(self, name: str | None, handle: Callable[[], None]) -> None:
        if self._held is None:
            self._held = [(name, handle)]
            self._own(self._release_when_open())  # owned: cancelled if the connection goes
        else:
            self._held.append((name, handle))

    async def _release_when_open(self) -> None:
        state = self.state
        while (opening := state.opening) is not None:
            with contextlib.suppress(Exception):  # a failed start is answered "shutting down"
                await asyncio.shield(state.serving_changed or opening)
            if state.opening is None:
                break
            # A service opened before the others: what heads the queue for it goes now.
            held = self._held or []
            while held and held[0][0] in state.served_while_opening:
                self._held = None  # so that it is served, not held again
                held.pop(0)[1]()
            self._held = held or None
            if not held:
                return
        held, self._held = self._held or [], None
        for _, handle in held:
            handle()

    # -- requests (continued) ----------------------------------------------------------------
    def request(self, req: Request) -> None:
        state = self.state
        if state.opening is not None and self._must_wait(req.method):
            self._hold(req.method, lambda: self.request(req))
            return
        self.requests += 1
        method = state.methods.get(req.method)
        params = req.params
        if params is None:
            params = {}
        if (
            method is None
            or method.is_async
            or method.validate is not None
            or type(params) is not dict
            or "idempotencyKey" in params
            or state.shutting_down
            or req.id in self._inflight
        ):
            self._request_slow(req)
            return
        # The hot path: a cheap handler answered inline, with no Task and no Prepared.
        started = state.clock.now()
        try:
            result = method.handler(params, RequestContext(self.outlet, started))
        except Exception as exc:
            self.outlet.write(_response(req.id, self._conclude(req.method, started, None, exc)))
            return
        self.outlet.write(_response(req.id, self._conclude(req.method, started, result, None)))

    async def request_here(self, req: Request) -> Outcome | None:
        """Serve `req` as `request` does, but run an async handler without an idempotency key
        in the calling task instead of a task of its own, and give its outcome to the caller
        instead of writing an answer: for an in-process caller that is one task per request
        already and answers it itself (the MCP front end), a second task only costs a loop
        turn, and an envelope it would parse back only costs CPU. Notifications sent to ride
        with the answer go to the outlet at once (there is no answer to ride with). Listed
        in flight under its id all the same: `$/cancelRequest` cancels the work (its outcome
        is -32800, the caller goes on), `cancel_all` the caller. Everything else goes through
        `request` and is answered through the outlet (None)."""
        state = self.state
        method = state.methods.get(req.method)
        params = req.params
        if (
            method is None
            or not method.is_async
            or method.relay is not None  # relayed with no task at all (`_relay`)
            or type(params) is not dict
            or "idempotencyKey" in params
            or state.opening is not None
            or state.shutting_down
            or req.id in self._inflight
        ):
            self.request(req)
            return None
        task = asyncio.current_task()
        assert task is not None
        self.requests += 1
        try:
            prep = self._prepare(req)
        except BridgeError as exc:
            self._count_refusal(req, exc)
            return encode_outcome(False, exc)
        self._inflight[req.id] = task
        cancelling = task.cancelling()
        try:
            outcome = await self._outcome(req.id, prep, executes=True)
        finally:
            self._inflight.pop(req.id, None)
        if task.cancelling() > cancelling:
            # A `$/cancelRequest` cancelled the caller and its outcome is -32800 (`_outcome`):
            # the caller goes on, no longer being cancelled.
            task.uncancel()
        return outcome

    def _request_slow(self, req: Request) -> None:
        try:
            if self.state.shutting_down:
                raise shutting_down()
            prep = self._prepare(req)
        except BridgeError as exc:
            self.outlet.write(self._refused(req, exc))
            return
        if prep.method.relay is not None and prep.key is None and self._relay(req.id, prep):
            return
        if prep.method.is_async or prep.key is not None:
            prep.ctx.hold()  # what rides with the answer waits for it (`_respond`)
            task = asyncio.get_running_loop().create_task(self._respond(req.id, prep))
            self._inflight[req.id] = task
            if prep.key is not None:
                self._inflight_keys[req.id] = prep.key
            elif prep.method.idempotent and "idempotencyKey" in prep.params:
                self._passed_keys[req.id] = prep.params["idempotencyKey"]
            return
        self.outlet.write(_response(req.id, self._call_sync(prep)))

    def _relay(self, req_id: RequestId, prep: Prepared) -> bool:
        relayed = _Relayed(self, req_id, prep)
        prep.ctx.hold()  # what rides with the answer waits for it
        self._inflight[req_id] = relayed
        passed = prep.params.get("idempotencyKey") if prep.method.idempotent else None
        if passed is not None:
            self._passed_keys[req_id] = passed
        if relayed.start():
            return True
        del self._inflight[req_id]
        self._passed_keys.pop(req_id, None)
        return False

    async def _respond(self, req_id: RequestId, prep: Prepared) -> None:
        response: bytes | None = None
        try:
            response = await self._execute(req_id, prep, executes=True)
        finally:
            self._inflight.pop(req_id, None)
            self._inflight_keys.pop(req_id, None)
            self._passed_keys.pop(req_id, None)
            # The answer and what rides with it, in one write (the riders alone when there
            # is no answer to give). Nothing once the connection is gone, nor for a keyed
            # request once it is going: that outcome waits in the journal for the retry.
            outlet = self.outlet
            if outlet is not _DETACHED and not (outlet.closing and prep.key is not None):
                prep.ctx.release(response)

    async def _execute(self, req_id: RequestId, prep: Prepared, *, executes: bool) -> bytes:
        """One prepared request to its encoded response; raises only CancelledError."""
        return _response(req_id, await self._outcome(req_id, prep, executes=executes))

    async def _outcome(self, req_id: RequestId, prep: Prepared, *, executes: bool) -> Outcome:
        """One prepared request to its outcome; raises only CancelledError.
        `executes`: this task may run a keyed request's work itself (see `_keyed`)."""
        try:
            if prep.key is not None:
                return await self._keyed(prep, req_id if executes else None)
            return await self._run(prep)
        except asyncio.CancelledError:
            if req_id in self._cancelled_ids:
                self._cancelled_ids.discard(req_id)
                return encode_outcome(False, Cancelled(f"request {req_id!r} was cancelled"))
            if self.state.shutting_down and not self.outlet.closing:
                prep.ctx.release(jsonrpc.error_bytes(req_id, shutting_down()))
            raise

    async def _keyed(self, prep: Prepared, req_id: RequestId | None) -> Outcome:
        """A keyed request: answered from the journal, joined to the execution that runs,
        or run. The request's own task runs the work (`req_id`: then `cancel_all` spares
        it, for the work is the server's); a batch member's task is the connection's, so
        its work gets a task of its own."""
        idem = self.state.idempotency
        key = prep.key
        assert key is not None
        try:
            bound = signature(prep.name, prep.params)
            found = idem.lookup(key, bound)
            if found is None:
                if not prep.method.is_async:
                    return idem.run_sync(key, bound, lambda: self._call_sync(prep))
                if req_id is not None:
                    self._executing.add(req_id)
                    try:
                        return await idem.run(key, bound, lambda: self._run(prep))
                    finally:
                        self._executing.discard(req_id)
                found = idem.start(key, bound, lambda: self._run(prep))
        except BridgeError as exc:
            return encode_outcome(False, exc)
        if isinstance(found, tuple):
            return found
        try:
            return await asyncio.shield(found)
        except Unavailable as exc:
            return encode_outcome(False, exc)

    # -- notifications ------------------------------------------------------------------------
    def notification(self, note: Notification) -> None:
        if self.state.opening is not None and self._must_wait(note.method):
            self._hold(note.method, lambda: self.notification(note))
            return
        if note.method == CANCEL:
            self._on_cancel(note.params)
            return
        state = self.state
        method = state.methods.get(note.method)
        if method is None or (note.params is not None and type(note.params) is not dict):
            return  # JSON-RPC: a notification is never answered, not even with an error
        params = note.params or {}
        try:
            if method.validate is not None:
                method.validate(params)
            limit = self._limit(note.method, method, params) if method.is_async else None
        except BridgeError:
            log.debug("notification %s refused", note.method, exc_info=True)
            return
        prep = Prepared(
            note.method, method, params, RequestContext(self.outlet, state.clock.now()), None, limit
        )
        if method.is_async:
            self._own(self._run(prep))  # owned: cancelled on close, drained on shutdown
        else:
            self._call_sync(prep)

    def _on_cancel(self, params: Any) -> None:
        if type(params) is not dict:
            return
        idem = self.state.idempotency
        key = params.get("idempotencyKey")
        if type(key) is str:
            idem.cancel(key)
            return
        req_id = params.get("id")
        if type(req_id) is not int and type(req_id) is not str:
            return
        key = self._inflight_keys.get(req_id)
        if key is not None:
            idem.cancel(key)  # the waiter stays and answers with the recorded -32800
            return
        task = self._inflight.get(req_id)
        if task is not None and not task.done():
            passed = self._passed_keys.get(req_id)
            if passed is not None:  # its work may run where the key is kept (the terminal host)
                idem.cancel(passed)
            self._cancelled_ids.add(req_id)
            task.cancel()

    # -- batches ----------------------------------------------------------------------------
    def batch(self, batch: Batch) -> None:
        if self.state.opening is not None:
            self._hold(None, lambda: self.batch(batch))
            return
        limits = self.state.limits
        if len(batch.items) > limits.max_batch:
            too_long = InvalidRequest(
                f"a batch holds at most {limits.max_batch} messages, this one {len(batch.items)}",
                data={"limit": limits.max_batch},
            )
            self.outlet.write(jsonrpc.error_bytes(None, too_long))
            return
        if len(batch.items) > limits.batch_slice:
            # A long batch is handled a slice at a time, other clients served in between.
            self._own(self._sliced_batch(batch.items, limits.batch_slice))
            return
        self._batch_items(batch.items, [])

    async def _sliced_batch(self, items: list[Any], size: int) -> None:
        answers: list[bytes | asyncio.Task[bytes]] = []
        for start in range(0, len(items), size):
            if start:
                await asyncio.sleep(0)
            self._collect(items[start : start + size], answers)
        await self._finish_batch(answers)

    def _batch_items(self, items: list[Any], answers: list[bytes | asyncio.Task[bytes]]) -> None:
        self._collect(items, answers)
        if not answers:
            return  # a batch of notifications only: no response at all
        if all(type(a) is bytes for a in answers):
            self.outlet.write(_array(answers))  # type: ignore[arg-type]
            return
        self._own(self._finish_batch(answers))

    def _collect(self, items: list[Any], answers: list[bytes | asyncio.Task[bytes]]) -> None:
        for item in items:
            kind = type(item)
            if kind is Invalid:
                assert isinstance(item, Invalid)
                answers.append(jsonrpc.error_bytes(item.id, item.error))
            elif kind is Notification:
                assert isinstance(item, Notification)
                self.notification(item)
            elif kind is Request:
                assert isinstance(item, Request)
                self.requests += 1
                try:
                    prep = self._prepare(item)
                except BridgeError as exc:
                    answers.append(self._refused(item, exc))
                    continue
                # Requests inside a batch run together, cancelled only with the connection.
                answers.append(self._own(self._execute(item.id, prep, executes=False)))

    def _own(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._owned.add(task)
        task.add_done_callback(_forget(self._owned))
        return task

    async def _finish_batch(self, answers: list[bytes | asyncio.Task[bytes]]) -> None:
        if not answers:
            return
        done = [a if type(a) is bytes else await a for a in answers]  # type: ignore[misc]
        self.outlet.write(_array(done))


def _frames_to(outlet: Outlet) -> Callable[[bytes], None] | None:
    """How `outlet` takes messages already framed, if it does."""
    write_frame: Callable[[bytes], None] | None = getattr(outlet, "write_frame", None)
    return write_frame


def _response(req_id: RequestId, outcome: Outcome) -> bytes:
    """A response around an outcome already encoded: spliced in, never encoded again."""
    ok, payload = outcome
    member = "result" if ok else "error"
    return orjson.dumps({"jsonrpc": "2.0", "id": req_id, member: orjson.Fragment(payload)})


def _array(responses: list[bytes]) -> bytes:
    return b"[" + b",".join(responses) + b"]"


def _forget(tasks: set[asyncio.Task[Any]]) -> Callable[[asyncio.Task[Any]], None]:
    def done(task: asyncio.Task[Any]) -> None:
        tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("an owned task failed", exc_info=task.exception())

    return done


__all__ = ["CANCEL", "Dispatcher", "Outlet", "Prepared", "RequestContext"]
