"""One client connection: bytes in through the framing codec, requests dispatched, answers out.

Theory of operation: `Connection` is an `asyncio.Protocol` (no stream reader: a buffered
sans-I/O parser is several times cheaper than `readuntil` per header line). Each frame is
validated and dispatched at once, in arrival order:

- a synchronous handler without an idempotency key is called inline and answered before the
  next frame is looked at (no Task: a Task costs 50-70 us); it cannot be preempted, so such
  handlers must be cheap and are not bounded by the TimeoutManager;
- an async handler runs in a Task under `TimeoutManager.with_timeout(operation)`, listed in
  `_inflight` by request id so `$/cancelRequest {id}` can cancel it (-32800);
- a keyed request goes through `Idempotency` (journalled, at most once, outcome shared).

Every answer's latency and outcome go to `observe(operation, seconds, ok)`; an error counts
as a failure only when the breaker would count it (the service failed, not the request).

Faults are answered, never raised: malformed frames and messages get an error response and
the connection goes on; a frame over the size limit gets -32007 (with the id read from its
first bytes) and is skipped, or closes the connection when too large to skip; a frame that
stops arriving for `frame_timeout` seconds (on the clock) closes it. Writes go through the
transport's buffer with a high-water mark: above it, reading from this client is paused (a
client that does not read its answers cannot make us buffer more of them), and above the
hard `write_buffer_limit` (notifications keep coming) the client is disconnected. A
connection's problems never reach another connection or the server.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections import deque
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, cast

import orjson

from lapce_bridge.core.breaker import default_record_exception
from lapce_bridge.core.errors import (
    BridgeError,
    Cancelled,
    InvalidParams,
    InvalidRequest,
    MethodNotFound,
    ParseError,
    PermissionDenied,
    Unavailable,
)
from lapce_bridge.ipc import jsonrpc
from lapce_bridge.ipc.framing import Event, Frame, FrameDecoder, FrameError, RequestId, encode
from lapce_bridge.ipc.idempotency import Outcome, check_key, encode_outcome, shutting_down
from lapce_bridge.ipc.jsonrpc import Batch, Invalid, Notification, Request
from lapce_bridge.rpc import Method

if TYPE_CHECKING:
    from lapce_bridge.ipc.server import BridgeServer

log = logging.getLogger("lapce_bridge.ipc")

CANCEL = "$/cancelRequest"


class RequestContext:
    """The `CallContext` a handler receives."""

    __slots__ = ("_conn", "received_at")

    def __init__(self, conn: Connection, received_at: float) -> None:
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


class Connection(asyncio.Protocol):
    def __init__(
        self, server: BridgeServer, conn_id: int, *, needs_auth: bool = False, label: str = "unix"
    ) -> None:
        self._server = server
        self.id = conn_id
        self.label = label
        self._needs_auth = needs_auth
        self._decoder = FrameDecoder(server.max_message_bytes)
        self._in: asyncio.BaseTransport | None = None
        self._out: asyncio.WriteTransport | None = None
        self._inflight: dict[RequestId, asyncio.Task[Any]] = {}
        self._inflight_keys: dict[RequestId, str] = {}
        self._cancelled_ids: set[RequestId] = set()
        self._batch_tasks: set[asyncio.Task[None]] = set()
        self._backlog: deque[Event] = deque()
        self._coalesced: list[bytes] | None = None
        self._coalesced_bytes = 0
        self._close_callbacks: list[Callable[[], None]] = []
        self._closing = False
        self._write_paused = False
        self._last_data = server.clock.now()
        self._stall_task: asyncio.Task[None] | None = None
        self.requests = 0
        self.dropped = 0
        self.closed = asyncio.get_running_loop().create_future()

    # -- transport events -----------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._in = transport
        if self._out is None:
            # uvloop's transports do not subclass asyncio's ABCs: no isinstance checks here.
            self.attach_writer(cast(asyncio.WriteTransport, transport))
        self._server.register(self)

    def attach_writer(self, transport: asyncio.WriteTransport) -> None:
        self._out = transport
        high = self._server.write_buffer_high
        transport.set_write_buffer_limits(high=high, low=high // 4)

    def data_received(self, data: bytes) -> None:
        self._last_data = self._server.clock.now()
        events = self._decoder.feed(data)
        if self._backlog or self._write_paused:
            self._backlog.extend(events)
        else:
            self._handle(events)
        if self._decoder.in_frame and (self._stall_task is None or self._stall_task.done()):
            self._stall_task = asyncio.get_running_loop().create_task(self._watch_stall())

    def _handle(self, events: list[Event]) -> None:
        if len(events) > 1:
            # Answers to a pipelined read leave in one write (one syscall, not one each).
            self._coalesced = []
            try:
                self._dispatch(events)
            finally:
                self._flush_coalesced()
        else:
            self._dispatch(events)

    def _dispatch(self, events: Iterable[Event]) -> None:
        it = iter(events)
        for event in it:
            if self._closing:
                return
            if type(event) is Frame:
                try:
                    self._on_body(event.body)
                except Exception as exc:  # a bug in one message must not end the server
                    log.exception("connection %s: failed to handle a message", self.id)
                    self._write(jsonrpc.error_bytes(None, exc))
            else:
                assert isinstance(event, FrameError)
                self._write(jsonrpc.error_bytes(event.request_id, event.error))
                if event.fatal:
                    self.close()
                    return
            if self._coalesced_bytes > self._server.write_buffer_high:
                self._flush_coalesced(keep=True)
            if self._write_paused:
                # The client is not reading: keep the rest of this read for later rather
                # than answering it into a buffer that is already full.
                self._backlog.extend(it)
                return

    def _flush_coalesced(self, *, keep: bool = False) -> None:
        pending = self._coalesced
        self._coalesced = [] if keep else None
        self._coalesced_bytes = 0
        if pending:
            self._write_frame(b"".join(pending))

    def eof_received(self) -> bool | None:
        return False  # close our side too; answers already written are flushed first

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        for task in [*self._inflight.values(), *self._batch_tasks]:
            task.cancel()  # nobody is left to answer; keyed executions go on (server-owned)
        if self._stall_task is not None:
            self._stall_task.cancel()
        callbacks, self._close_callbacks = self._close_callbacks, []
        for callback in callbacks:
            try:
                callback()
            except Exception:
                log.exception("connection %s: a close callback failed", self.id)
        self._server.unregister(self)
        if not self.closed.done():
            self.closed.set_result(None)

    def pause_writing(self) -> None:
        self._write_paused = True
        reader = cast(asyncio.ReadTransport, self._in)
        if reader is not None and reader.is_reading():
            reader.pause_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        self._last_data = self._server.clock.now()
        if self._backlog:
            backlog = list(self._backlog)
            self._backlog.clear()
            self._handle(backlog)
        reader = cast(asyncio.ReadTransport, self._in)
        if reader is not None and not self._closing and not self._write_paused:
            reader.resume_reading()

    # -- output ---------------------------------------------------------------------------
    def _write(self, payload: bytes) -> None:
        self.write_frame(encode(payload))

    def write_frame(self, frame: bytes) -> None:
        """Write a framed message (a broadcast is encoded once for everyone)."""
        pending = self._coalesced
        if pending is not None:
            pending.append(frame)
            self._coalesced_bytes += len(frame)
        else:
            self._write_frame(frame)

    def _write_frame(self, frame: bytes) -> None:
        out = self._out
        if self._closing or out is None or out.is_closing():
            self.dropped += 1
            return
        out.write(frame)
        if self._write_paused and out.get_write_buffer_size() > self._server.write_buffer_limit:
            log.warning("connection %s reads nothing; disconnecting it", self.id)
            self._server.stats_slow_disconnects += 1
            self.abort()

    def notify(self, method: str, params: Any) -> None:
        try:
            payload = jsonrpc.notification_bytes(method, params)
        except TypeError:
            log.exception("notification %s is not JSON-serialisable", method)
            return
        self._write(payload)

    def on_close(self, callback: Callable[[], None]) -> None:
        if self._closing:
            callback()
        else:
            self._close_callbacks.append(callback)

    def _send_result(self, req_id: RequestId, result: Any) -> None:
        try:
            payload = jsonrpc.result_bytes(req_id, result)
        except TypeError as exc:
            payload = jsonrpc.error_bytes(req_id, exc)
        self._write(payload)

    def _send_outcome(self, req_id: RequestId, outcome: Outcome) -> None:
        self._write(jsonrpc.dumps(_outcome_dict(req_id, outcome)))

    def close(self) -> None:
        self._closing = True
        if self._in is not None:
            self._in.close()
        if self._out is not None and self._out is not self._in:
            self._out.close()

    def abort(self) -> None:
        self._closing = True
        for transport in (self._in, self._out):
            if transport is not None:
                abort = getattr(transport, "abort", None)
                if abort is not None:
                    abort()
                else:
                    transport.close()

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    def inflight_tasks(self) -> list[asyncio.Task[Any]]:
        return [*self._inflight.values(), *self._batch_tasks]

    # -- input ----------------------------------------------------------------------------
    def _on_body(self, body: bytes) -> None:
        msg = jsonrpc.parse(body)
        kind = type(msg)
        if self._needs_auth and not self._authenticate(msg):
            return
        if kind is Request:
            assert isinstance(msg, Request)
            self._on_request(msg)
        elif kind is Notification:
            assert isinstance(msg, Notification)
            self._on_notification(msg)
        elif kind is Invalid:
            assert isinstance(msg, Invalid)
            self._write(jsonrpc.error_bytes(msg.id, msg.error))
        elif kind is Batch:
            assert isinstance(msg, Batch)
            self._on_batch(msg)
        # A Response from the client answers nothing we asked: ignored.

    def _authenticate(self, msg: object) -> bool:
        token = self._server.token
        if (
            token is not None
            and type(msg) is Request
            and msg.method == "initialize"
            and type(msg.params) is dict
            and type(msg.params.get("token")) is str
            and hmac.compare_digest(msg.params["token"].encode(), token.encode())
        ):
            self._needs_auth = False
            return True
        msg_id = msg.id if type(msg) is Request or type(msg) is Invalid else None
        denied = PermissionDenied("the first request must be initialize with the right token")
        self._write(jsonrpc.error_bytes(msg_id, denied))
        self._server.stats_auth_failures += 1
        self.close()
        return False

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
        key = params.get("idempotencyKey")
        ctx = RequestContext(self, self._server.clock.now())
        return Prepared(req.method, method, params, ctx, None if key is None else check_key(key))

    def _on_request(self, req: Request) -> None:
        self.requests += 1
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
                answers.append(self._execute(item.id, prep))
        if not answers:
            return  # a batch of notifications only: no response at all
        if all(type(a) is dict for a in answers):
            self._write(jsonrpc.dumps(answers))
            return
        task = asyncio.get_running_loop().create_task(self._respond_batch(answers))
        self._batch_tasks.add(task)
        task.add_done_callback(self._batch_tasks.discard)

    async def _respond_batch(self, answers: list[Any]) -> None:
        # Requests inside a batch run together and are cancelled only with the connection.
        pending = [a for a in answers if type(a) is not dict]
        results = iter(await asyncio.gather(*pending))
        self._write(jsonrpc.dumps([a if type(a) is dict else next(results) for a in answers]))

    async def _watch_stall(self) -> None:
        clock = self._server.clock
        limit = self._server.frame_timeout
        while not self._closing and self._decoder.in_frame:
            remaining = self._last_data + limit - clock.now()
            if remaining <= 0:
                if self._write_paused:  # we stopped reading, not they stopped sending
                    self._last_data = clock.now()
                    continue
                stalled = ParseError(f"incomplete frame: no data for {limit:g} s")
                self._write(jsonrpc.error_bytes(None, stalled))
                self._server.stats_stalled += 1
                self.close()
                return
            await clock.sleep(remaining)


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


__all__ = ["CANCEL", "Connection", "RequestContext"]
