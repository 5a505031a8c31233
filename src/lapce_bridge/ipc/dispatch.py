"""The request half of a connection: validate, dispatch, run, answer, cancel.

Theory of operation: a sync handler without an idempotency key is called inline and answered
before the next frame is looked at (no Task: a Task costs 50-70 us); it cannot be preempted,
so such handlers must be cheap and are not bounded by the TimeoutManager. An async handler
runs in a Task under `TimeoutManager.with_timeout(operation)`, listed in `_inflight` by
request id so `$/cancelRequest {id}` cancels it (-32800). A keyed request goes through
`Idempotency` (journalled, at most once, outcome shared). Requests in a batch run together
and are cancelled only with their connection. Every answer's latency and outcome go to
`observe(operation, seconds, ok)`; an error counts as a failure only when the breaker would
count it (the service failed, not the request).

Invariant: nothing here raises into the transport: every request gets exactly one answer,
except a notification, which never gets one, and a request whose connection is gone.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

import orjson

from lapce_bridge.core.breaker import default_record_exception
from lapce_bridge.core.errors import (
    BridgeError,
    Cancelled,
    InvalidParams,
    InvalidRequest,
    MethodNotFound,
    Unavailable,
)
from lapce_bridge.ipc import jsonrpc
from lapce_bridge.ipc.framing import RequestId
from lapce_bridge.ipc.idempotency import Outcome, check_key, encode_outcome, shutting_down
from lapce_bridge.ipc.jsonrpc import Batch, Invalid, Notification, Request
from lapce_bridge.rpc import Method

if TYPE_CHECKING:
    from lapce_bridge.ipc.server import BridgeServer

log = logging.getLogger("lapce_bridge.ipc")

CANCEL = "$/cancelRequest"


class _Connected:
    """What the dispatcher needs from the connection it is part of."""

    id: int
    _server: BridgeServer
    _closing: bool

    def _write(self, payload: bytes) -> None:
        raise NotImplementedError

    def notify(self, method: str, params: Any) -> None:
        raise NotImplementedError

    def on_close(self, callback: Callable[[], None]) -> None:
        raise NotImplementedError


class RequestContext:
    """The `CallContext` a handler receives."""

    __slots__ = ("_conn", "received_at")

    def __init__(self, conn: _Connected, received_at: float) -> None:
        self._conn = conn
        self.received_at = received_at

    @property
    def connection_id(self) -> int:
        return self._conn.id

    def notify(self, method: str, params: Any) -> None:
        self._conn.notify(method, params)

    def on_close(self, callback: Callable[[], None]) -> None:
        self._conn.on_close(callback)


class Prepared:
    __slots__ = ("ctx", "key", "method", "name", "params")

    def __init__(
        self,
        name: str,
        method: Method,
        params: dict[str, Any],
        ctx: RequestContext,
        key: str | None,
    ) -> None:
        self.name = name
        self.method = method
        self.params = params
        self.ctx = ctx
        self.key = key


class RequestDispatch(_Connected):
    """Mixed into `Connection`: the requests in flight on it and how they are answered."""

    def _init_dispatch(self) -> None:
        self._inflight: dict[RequestId, asyncio.Task[Any]] = {}
        self._inflight_keys: dict[RequestId, str] = {}
        self._cancelled_ids: set[RequestId] = set()
        self._batch_tasks: set[asyncio.Task[Any]] = set()
        self.requests = 0

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    def inflight_tasks(self) -> list[asyncio.Task[Any]]:
        return [*self._inflight.values(), *self._batch_tasks]

    def _cancel_all(self) -> None:
        for task in [*self._inflight.values(), *self._batch_tasks]:
            task.cancel()  # nobody is left to answer; keyed executions go on (server-owned)

    def _send_result(self, req_id: RequestId, result: Any) -> None:
        try:
            payload = jsonrpc.result_bytes(req_id, result)
        except TypeError as exc:
            payload = jsonrpc.error_bytes(req_id, exc)
        self._write(payload)

    def _send_outcome(self, req_id: RequestId, outcome: Outcome) -> None:
        self._write(jsonrpc.dumps(_outcome_dict(req_id, outcome)))

    def _prepare(self, req: Request) -> Prepared:
        method = self._server.methods.get(req.method)
        if method is None:
            raise MethodNotFound(f"unknown method {req.method!r}", data={"method": req.method})
        params = req.params
        if params is None:
            params = {}
        elif type(params) is not dict:
            raise InvalidParams(f"{req.method} takes its params as an object")
        if req.id in self._inflight:
            raise InvalidRequest(f"request id {req.id!r} is already in flight")
        if method.is_async:
            self._server.admit(method.operation)  # cheap inline methods are always served
        key = params.get("idempotencyKey")
        ctx = RequestContext(self, self._server.clock.now())
        return Prepared(req.method, method, params, ctx, None if key is None else check_key(key))

    def _on_request(self, req: Request) -> None:
        self.requests += 1
        server = self._server
        method = server.methods.get(req.method)
        params = req.params
        if params is None:
            params = {}
        if (
            method is None
            or method.is_async
            or type(params) is not dict
            or "idempotencyKey" in params
            or server.shutting_down
            or req.id in self._inflight
        ):
            self._on_request_slow(req)
            return
        # The hot path: a cheap handler answered inline, with no Task and no Prepared; the
        # answer is written before the bookkeeping, so the client does not wait for it.
        clock = server.clock
        started = clock.now()
        try:
            result = method.handler(params, RequestContext(self, started))
        except Exception as exc:
            elapsed = clock.now() - started
            self._write(jsonrpc.error_bytes(req.id, exc))
            server.observe(method.operation, elapsed, _ok(exc))
            return
        elapsed = clock.now() - started
        self._send_result(req.id, result)
        server.observe(method.operation, elapsed, True)

    def _on_request_slow(self, req: Request) -> None:
        try:
            if self._server.shutting_down:
                raise shutting_down()
            prep = self._prepare(req)
        except BridgeError as exc:
            self._write(jsonrpc.error_bytes(req.id, exc))
            return
        method = prep.method
        if method.is_async or prep.key is not None:
            self._spawn(req.id, prep)
            return
        clock = self._server.clock
        started = prep.ctx.received_at
        try:
            result = method.handler(prep.params, prep.ctx)
        except Exception as exc:
            self._server.observe(method.operation, clock.now() - started, _ok(exc))
            self._write(jsonrpc.error_bytes(req.id, exc))
            return
        self._server.observe(method.operation, clock.now() - started, True)
        self._send_result(req.id, result)

    def _spawn(self, req_id: RequestId, prep: Prepared) -> None:
        task = asyncio.get_running_loop().create_task(self._respond(req_id, prep))
        self._inflight[req_id] = task
        if prep.key is not None:
            self._inflight_keys[req_id] = prep.key

    async def _respond(self, req_id: RequestId, prep: Prepared) -> None:
        try:
            response = await self._execute(req_id, prep)
        finally:
            self._inflight.pop(req_id, None)
            self._inflight_keys.pop(req_id, None)
        self._write(jsonrpc.dumps(response))

    async def _execute(self, req_id: RequestId, prep: Prepared) -> dict[str, Any]:
        """Run one prepared request to its response; raises only CancelledError from outside."""
        if prep.key is not None:
            return _outcome_dict(req_id, await self._keyed(prep))
        try:
            result = await self._timed(prep)
        except asyncio.CancelledError:
            if req_id in self._cancelled_ids:
                self._cancelled_ids.discard(req_id)
                return jsonrpc.error_dict(req_id, Cancelled(f"request {req_id!r} was cancelled"))
            if self._server.shutting_down and not self._closing:
                self._write(jsonrpc.error_bytes(req_id, shutting_down()))
            raise
        except Exception as exc:
            return jsonrpc.error_dict(req_id, exc)
        try:
            jsonrpc.dumps(result)
        except TypeError as exc:
            return jsonrpc.error_dict(req_id, exc)
        return jsonrpc.result_dict(req_id, result)

    async def _timed(self, prep: Prepared) -> Any:
        method = prep.method
        server = self._server
        started = prep.ctx.received_at
        try:
            if method.is_async:
                result = await server.timeouts.with_timeout(
                    method.operation, method.handler(prep.params, prep.ctx)
                )
            else:
                result = method.handler(prep.params, prep.ctx)
        except BaseException as exc:
            server.observe(method.operation, server.clock.now() - started, _ok(exc))
            raise
        server.observe(method.operation, server.clock.now() - started, True)
        return result

    async def _keyed(self, prep: Prepared) -> Outcome:
        idem = self._server.idempotency
        key = prep.key
        assert key is not None
        try:
            found = idem.lookup(key, prep.name)
            if found is None:
                if not prep.method.is_async:
                    return idem.run_sync(key, prep.name, lambda: _call_sync(self._server, prep))
                found = idem.start(key, prep.name, lambda: self._timed(prep))
        except BridgeError as exc:
            return encode_outcome(False, exc)
        if isinstance(found, tuple):
            return found
        try:
            return await asyncio.shield(found)
        except Unavailable as exc:
            return encode_outcome(False, exc)

    def _on_notification(self, note: Notification) -> None:
        if note.method == CANCEL:
            self._on_cancel(note.params)
            return
        method = self._server.methods.get(note.method)
        if method is None or (note.params is not None and type(note.params) is not dict):
            return  # JSON-RPC: a notification is never answered, not even with an error
        params = note.params or {}
        ctx = RequestContext(self, self._server.clock.now())
        if method.is_async:
            loop = asyncio.get_running_loop()
            task = loop.create_task(self._timed(Prepared(note.method, method, params, ctx, None)))
            task.add_done_callback(_discard_outcome)
            return
        try:
            method.handler(params, ctx)
        except Exception:
            log.debug("notification %s failed", note.method, exc_info=True)

    def _on_cancel(self, params: Any) -> None:
        if type(params) is not dict:
            return
        idem = self._server.idempotency
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
            self._cancelled_ids.add(req_id)
            task.cancel()

    def _on_batch(self, batch: Batch) -> None:
        answers: list[Any] = []
        for item in batch.items:
            kind = type(item)
            if kind is Invalid:
                assert isinstance(item, Invalid)
                answers.append(jsonrpc.error_dict(item.id, item.error))
            elif kind is Notification:
                assert isinstance(item, Notification)
                self._on_notification(item)
            elif kind is Request:
                assert isinstance(item, Request)
                try:
                    prep = self._prepare(item)
                except BridgeError as exc:
                    answers.append(jsonrpc.error_dict(item.id, exc))
                    continue
                # Requests inside a batch run together, cancelled only with the connection.
                answers.append(self._batch_task(self._execute(item.id, prep)))
        if not answers:
            return  # a batch of notifications only: no response at all
        if all(type(a) is dict for a in answers):
            self._write(jsonrpc.dumps(answers))
            return
        self._batch_task(self._respond_batch(answers))

    def _batch_task(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._batch_tasks.add(task)
        task.add_done_callback(self._batch_tasks.discard)
        return task

    async def _respond_batch(self, answers: list[Any]) -> None:
        pending = [a for a in answers if type(a) is not dict]
        results = iter(await asyncio.gather(*pending))
        self._write(jsonrpc.dumps([a if type(a) is dict else next(results) for a in answers]))


def _call_sync(server: BridgeServer, prep: Prepared) -> Any:
    started = prep.ctx.received_at
    try:
        result = prep.method.handler(prep.params, prep.ctx)
    except Exception as exc:
        server.observe(prep.method.operation, server.clock.now() - started, _ok(exc))
        raise
    server.observe(prep.method.operation, server.clock.now() - started, True)
    return result


def _ok(exc: BaseException) -> bool:
    """A request's error counts against the operation only when the service failed."""
    return not default_record_exception(exc)


def _outcome_dict(req_id: RequestId, outcome: Outcome) -> dict[str, Any]:
    ok, payload = outcome
    member = "result" if ok else "error"
    return {"jsonrpc": "2.0", "id": req_id, member: orjson.Fragment(payload)}


def _discard_outcome(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()


__all__ = ["CANCEL", "Prepared", "RequestContext", "RequestDispatch"]
