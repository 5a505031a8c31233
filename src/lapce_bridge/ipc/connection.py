"""One client connection: bytes in through the framing codec, requests out to the dispatcher.

Theory of operation: `Connection` is an `asyncio.Protocol` (no stream reader: a buffered
sans-I/O parser is several times cheaper than `readuntil` per header line). Each frame is
validated and handed to the connection's `Dispatcher` (`ipc.dispatch`) at once, in
arrival order; what the server's connections share (method table, clock, limits, counters)
comes from its `ServerState`. Answers to one pipelined read are written together, in one call.

Faults are answered, never raised: malformed frames and messages get an error response and
the connection goes on; a frame over the size limit gets -32007 (with the id read from its
first bytes) and is skipped, or closes the connection when too large to skip; a frame that
stops arriving for `frame_timeout` seconds (on the clock) closes it. Writes go through the
transport's buffer with a high-water mark: above it, this client's further requests wait
unread (a client that does not read its answers cannot make us buffer more of them), and
above the hard `write_buffer_limit` (notifications keep coming) the client is disconnected.
A connection's problems never reach another connection or the server.

Defences against a hostile client (the limits are `ipc.state.Limits`): a TCP connection
must authenticate within `auth_timeout` seconds, and until then may send one small message
(a larger frame is refused before its body is read, so unauthenticated connections cannot
make us buffer); a failed authentication is answered only after a delay that doubles with
each failure in a row; past `max_silent` connections that have sent nothing, the oldest is
closed; answers already due are written before a connection is
closed for a bad frame; at close every reference the connection holds is dropped, so its
memory is freed at once, not when the cycle collector happens to run.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, cast

from lapce_bridge.core.errors import AuthenticationFailed, ParseError
from lapce_bridge.ipc import jsonrpc
from lapce_bridge.ipc.dispatch import CANCEL, Dispatcher, RequestContext
from lapce_bridge.ipc.framing import Event, Frame, FrameDecoder, FrameError, RequestId, encode
from lapce_bridge.ipc.jsonrpc import Batch, Invalid, Notification, Request
from lapce_bridge.ipc.state import ServerState

log = logging.getLogger("lapce_bridge.ipc")


class Connection(asyncio.Protocol):
    def __init__(
        self, state: ServerState, conn_id: int, *, needs_auth: bool = False, label: str = "unix"
    ) -> None:
        self._state = state
        self.id = conn_id
        self.label = label
        self._needs_auth = needs_auth
        limit = state.limits.max_message_bytes
        if needs_auth:
            limit = min(limit, state.limits.unauthenticated_max_message_bytes)
        self._decoder = FrameDecoder(limit, max_skip_bytes=limit if needs_auth else None)
        self._heard = False  # any byte has arrived (see Limits.max_silent)
        self._in: asyncio.BaseTransport | None = None
        self._out: asyncio.WriteTransport | None = None
        self.dispatcher = Dispatcher(state, self)
        self._backlog: deque[Event] = deque()
        self._coalesced: list[bytes] | None = None
        self._coalesced_bytes = 0
        self._close_callbacks: list[Callable[[], None]] = []
        self._closing = False
        self._write_paused = False
        self._last_data = state.clock.now()
        self._stall_task: asyncio.Task[None] | None = None
        self.dropped = 0
        self.closed = asyncio.get_running_loop().create_future()

    # -- transport events -----------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._in = transport
        if self._out is None:
            # uvloop's transports do not subclass asyncio's ABCs: no isinstance checks here.
            self.attach_writer(cast(asyncio.WriteTransport, transport))
        if not self._state.register(self):
            self.close()
            return
        self._deadline_task: asyncio.Task[None] | None = None
        if self._needs_auth:
            self._deadline_task = asyncio.get_running_loop().create_task(self._watch_auth())

    def attach_writer(self, transport: asyncio.WriteTransport) -> None:
        self._out = transport
        high = self._state.limits.write_buffer_high
        transport.set_write_buffer_limits(high=high, low=high // 4)

    def data_received(self, data: bytes) -> None:
        if not self._heard:
            self._heard = True
            self._state.heard(self)
        events = self._decoder.feed(data)
        if self._decoder.in_frame:  # only a partial frame is timed (see _watch_stall)
            self._last_data = self._state.clock.now()
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
                    self.write(jsonrpc.error_bytes(None, exc))
            else:
                assert isinstance(event, FrameError)
                self._state.counters.frame_errors += 1
                self.write(jsonrpc.error_bytes(event.request_id, event.error))
                if event.fatal:
                    self._flush_coalesced()  # the answers due before the bad frame go first
                    self.close()
                    return
            if self._coalesced_bytes > self._state.limits.write_buffer_high:
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
        self.dispatcher.cancel_all()
        for task in (self._stall_task, getattr(self, "_deadline_task", None)):
            if task is not None:
                task.cancel()
        callbacks, self._close_callbacks = self._close_callbacks, []
        for callback in callbacks:
            try:
                callback()
            except Exception:
                log.exception("connection %s: a close callback failed", self.id)
        self._state.unregister(self)
        if not self.closed.done():
            self.closed.set_result(None)
        # Drop what this connection holds (buffers, transports, its dispatcher's link back to
        # it): freed now by reference counting, never left for the cycle collector.
        self._backlog.clear()
        self._coalesced = None
        self._decoder = FrameDecoder(1)
        self._in = self._out = None
        self.dispatcher.detach()
        self._stall_task = self._deadline_task = None

    def pause_writing(self) -> None:
        self._write_paused = True
        reader = cast(asyncio.ReadTransport, self._in)
        if reader is not None and reader.is_reading():
            reader.pause_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        self._last_data = self._state.clock.now()
        if self._backlog:
            backlog = list(self._backlog)
            self._backlog.clear()
            self._handle(backlog)
        reader = cast(asyncio.ReadTransport, self._in)
        if reader is not None and not self._closing and not self._write_paused:
            reader.resume_reading()

    # -- what the server and the dispatcher see ------------------------------------------------
    @property
    def closing(self) -> bool:
        """Closed, or closing: by us, or by the transport (the peer went, before we hear)."""
        out = self._out
        return self._closing or (out is not None and out.is_closing())

    @property
    def requests(self) -> int:
        return self.dispatcher.requests

    @property
    def inflight(self) -> int:
        return self.dispatcher.inflight

    def inflight_tasks(self) -> list[asyncio.Future[Any]]:
        return self.dispatcher.tasks()

    # -- output ---------------------------------------------------------------------------
    def write(self, payload: bytes) -> None:
        self.write_frame(encode(payload))

    def write_many(self, payloads: list[bytes]) -> None:
        self.write_frame(b"".join([encode(p) for p in payloads]))

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
        limit = self._state.limits.write_buffer_limit
        if self._write_paused and out.get_write_buffer_size() > limit:
            log.warning("connection %s reads nothing; disconnecting it", self.id)
            self._state.counters.slow_disconnects += 1
            self.abort()

    def notify(self, method: str, params: Any) -> None:
        try:
            payload = jsonrpc.notification_bytes(method, params)
        except TypeError:
            log.exception("notification %s is not JSON-serialisable", method)
            return
        self.write(payload)

    @property
    def last_data(self) -> float:
        """When this connection last received (or could again send) data, on the clock."""
        return self._last_data

    def on_close(self, callback: Callable[[], None]) -> None:
        if self._closing:
            callback()
        else:
            self._close_callbacks.append(callback)

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

    # -- input ----------------------------------------------------------------------------
    def _on_body(self, body: bytes) -> None:
        msg = jsonrpc.parse(body)
        kind = type(msg)
        if self._needs_auth and not self._authenticate(msg):
            return
        if kind is Request:
            assert isinstance(msg, Request)
            self.dispatcher.request(msg)
        elif kind is Notification:
            assert isinstance(msg, Notification)
            self.dispatcher.notification(msg)
        elif kind is Invalid:
            assert isinstance(msg, Invalid)
            self._state.counters.invalid_messages += 1
            self.write(jsonrpc.error_bytes(msg.id, msg.error))
        elif kind is Batch:
            assert isinstance(msg, Batch)
            self.dispatcher.batch(msg)
        # A Response from the client answers nothing we asked: ignored.

    def _authenticate(self, msg: object) -> bool:
        token = self._state.token
        if (
            token is not None
            and type(msg) is Request
            and msg.method == "initialize"
            and type(msg.params) is dict
            and type(msg.params.get("token")) is str
            and hmac.compare_digest(msg.params["token"].encode(), token.encode())
        ):
            self._needs_auth = False
            self._state.auth_failure_streak = 0
            limits = self._state.limits
            self._decoder.max_message_bytes = limits.max_message_bytes
            self._decoder.max_skip_bytes = 4 * limits.max_message_bytes
            return True
        msg_id = msg.id if type(msg) is Request or type(msg) is Invalid else None
        denied = AuthenticationFailed("the first request must be initialize with the right token")
        state = self._state
        state.counters.auth_failures += 1
        delay = state.auth_delay()
        state.auth_failure_streak += 1
        self._needs_auth = True
        self._closing = True  # nothing more is read or answered on it
        self._flush_coalesced()
        asyncio.get_running_loop().create_task(self._refuse(msg_id, denied, delay))
        return False

    async def _refuse(self, msg_id: RequestId, denied: AuthenticationFailed, delay: float) -> None:
        """Answer a failed authentication after `delay` (guessing is slow), then close."""
        if delay > 0:
            await self._state.clock.sleep(delay)
        out = self._out
        if out is not None and not out.is_closing():
            out.write(encode(jsonrpc.error_bytes(msg_id, denied)))
        self.close()

    async def _watch_auth(self) -> None:
        """Close a TCP connection not authenticated within `auth_timeout`."""
        limits = self._state.limits
        await self._state.clock.sleep(limits.auth_timeout)
        if self._needs_auth and not self._closing:
            self._state.counters.auth_timeouts += 1
            late = AuthenticationFailed(
                f"not authenticated within {limits.auth_timeout:g} s", data={"timeout": True}
            )
            self.write(jsonrpc.error_bytes(None, late))
            self.close()

    async def _watch_stall(self) -> None:
        clock = self._state.clock
        limit = self._state.limits.frame_timeout
        while not self._closing and self._decoder.in_frame:
            remaining = self._last_data + limit - clock.now()
            if remaining <= 0:
                if self._write_paused:  # we stopped reading, not they stopped sending
                    self._last_data = clock.now()
                    continue
                stalled = ParseError(f"incomplete frame: no data for {limit:g} s")
                self.write(jsonrpc.error_bytes(None, stalled))
                self._state.counters.stalled_frames += 1
                self.close()
                return
            await clock.sleep(remaining)


__all__ = ["CANCEL", "Connection", "RequestContext"]
