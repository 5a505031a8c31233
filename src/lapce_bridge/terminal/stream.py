"""Streamed command output that a client can resume: sequence numbers and a bounded replay ring.

Theory of operation: a command run with `stream: true` has one output stream, named by its
`executionId`. Its output goes out as `terminal/data {executionId, data, seq, offset}`
notifications: `seq` counts the stream's notifications from 1 with no gap, and `offset` is
where `data` starts in the command's whole output, in UTF-8 bytes: the offsets
`terminal/readOutput` takes (the spool holds every byte a stream sent). Each notification is
kept in the stream's replay ring; a client that lost its connection (or whose server was
restarted while a terminal host kept the command running) calls
`terminal/resume {streams: [{executionId, seq}]}` with the last `seq` it saw of each stream.
For each, the notifications after `seq` that the ring still holds are sent again, in order,
to the connection that asked, before the answer, and the stream's later notifications (and
its `terminal/commandFinished`) go to that connection from then on. When the ring no longer
holds all of them, the answer says so (`overflow`): the missed output is the byte range
`[offset, end)` of the command's output, to be read with `terminal/readOutput`, and the
replayed notifications carry on from `end`. Nothing is skipped silently.

Bounds: a stream's ring keeps at most `ring_bytes` of output (1 MiB by default: at 50 MB/s,
20 ms, and about the time a local reconnect takes when output is slower), all rings together
at most `max_bytes` (16 MiB), and at most `max_streams` streams are remembered (256; the least
recently active finished one is forgotten first, its output still in the spool). Past
`max_bytes`, the least recently active streams lose their oldest notifications first. Sizes
are counted in UTF-8 bytes of `data`.

Invariants:
- A stream's `seq` increases by exactly 1 per notification; `offset` of notification n+1 is
  `offset + bytes(data)` of notification n (the output is cut nowhere else).
- A resume replays exactly the notifications after the client's `seq` that the ring holds,
  and names the range it cannot replay: what a client receives, read range included, is
  every byte once.
- Only the event loop's thread touches streams (no locks).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from lapce_bridge.core.errors import InvalidParams

Notify = Callable[[str, Any], None]
"""Sends one notification to a client connection: (method, params)."""

DEFAULT_RING_BYTES = 1 << 20
DEFAULT_MAX_BYTES = 16 << 20
DEFAULT_MAX_STREAMS = 256
MAX_RESUME_STREAMS = 256


@dataclass(slots=True)
class _Chunk:
    seq: int
    offset: int
    size: int  # UTF-8 bytes of data
    data: str


@dataclass(eq=False, slots=True)
class Stream:
    """One execution's output stream: where it goes now and what it can replay."""

    execution_id: str | None
    key: str | None
    notify: Notify
    terminal_id: str | None = None
    seq: int = 0
    end: int = 0  # UTF-8 bytes sent so far: the offset of the next notification
    finished: bool = False
    ring: deque[_Chunk] = field(default_factory=deque)
    ring_bytes: int = 0

    def answer(self) -> dict[str, Any]:
        return {
            "executionId": self.execution_id,
            "terminalId": self.terminal_id,
            "lastSeq": self.seq,
            "finished": self.finished,
        }


@dataclass(frozen=True, slots=True)
class StreamStats:
    streams: int
    ring_bytes: int
    sent: int
    replayed: int
    overflows: int
    evicted_bytes: int


class OutputStreams:
    """Every resumable stream of a terminal service, with the rings' memory bound."""

    def __init__(
        self,
        *,
        ring_bytes: int = DEFAULT_RING_BYTES,
        max_bytes: int = DEFAULT_MAX_BYTES,
        max_streams: int = DEFAULT_MAX_STREAMS,
    ) -> None:
        self.ring_limit = ring_bytes
        self.max_bytes = max_bytes
        self.max_streams = max_streams
        # Least recently active first; keyed by execution id once the stream has one.
        self._streams: OrderedDict[str, Stream] = OrderedDict()
        # Keyed streams, named or not yet (a command that has printed nothing yet).
        self._by_key: dict[str, Stream] = {}
        self._bytes = 0
        self._sent = self._replayed = self._overflows = self._evicted = 0

    def open(
        self, notify: Notify, *, key: str | None = None, terminal_id: str | None = None
    ) -> Stream:
        """A new stream of a command about to start; its execution id comes with `name`.
        A keyed stream (`key`: the request's idempotencyKey) can be resumed by key at once."""
        stream = Stream(None, key, notify, terminal_id)
        if key is not None:
            self._by_key[key] = stream
        return stream

    def drop(self, stream: Stream) -> None:
        """Forget a stream whose command never started (the terminal was busy, say)."""
        if stream.execution_id is None:
            if stream.key is not None and self._by_key.get(stream.key) is stream:
                del self._by_key[stream.key]
        else:
            self._forget(stream)

    def name(self, stream: Stream, execution_id: str) -> None:
        """Register `stream` under its execution id, so that it can be resumed."""
        if stream.execution_id == execution_id and execution_id in self._streams:
            return
        stream.execution_id = execution_id
        self._streams[execution_id] = stream
        self._forget_excess()

    def send(self, stream: Stream, data: str, size: int) -> None:
        """Number `data` (`size` UTF-8 bytes), keep it for replay, send it where it goes now."""
        stream.seq += 1
        chunk = _Chunk(stream.seq, stream.end, size, data)
        stream.end += size
        stream.ring.append(chunk)
        stream.ring_bytes += size
        self._bytes += size
        execution_id = stream.execution_id
        if execution_id is not None:
            self._streams.move_to_end(execution_id)
        self._trim(stream, self.ring_limit)
        if self._bytes > self.max_bytes:
            self._trim_all()
        self._sent += 1
        _deliver(stream.notify, "terminal/data", _params(stream, chunk))

    def finish(self, stream: Stream, method: str, params: dict[str, Any]) -> None:
        """The stream's command ended: send its `terminal/commandFinished` where it goes now."""
        stream.finished = True
        _deliver(stream.notify, method, params)

    def resume(self, wanted: Any, notify: Notify) -> list[dict[str, Any]]:
        """Replay what each wanted stream's client missed to `notify`, and send the streams'
        later output there; one answer per stream (see the module docstring)."""
        if not isinstance(wanted, list) or len(wanted) > MAX_RESUME_STREAMS:
            raise InvalidParams(
                f"parameter 'streams' must be an array of at most {MAX_RESUME_STREAMS} "
                "{executionId or idempotencyKey, seq} objects"
            )
        return [self._resume_one(item, notify) for item in wanted]

    def _resume_one(self, item: Any, notify: Notify) -> dict[str, Any]:
        if not isinstance(item, dict):
            raise InvalidParams("each of 'streams' must be an object {executionId, seq}")
        execution_id = item.get("executionId")
        key = item.get("idempotencyKey")
        seq = item.get("seq", 0)
        if type(seq) is not int or seq < 0:
            raise InvalidParams("'seq' must be a non-negative integer (0: nothing seen yet)")
        if isinstance(execution_id, str):
            stream = self._streams.get(execution_id)
            unknown: dict[str, Any] = {"executionId": execution_id, "unknown": True}
        elif isinstance(key, str):
            stream = self._by_key.get(key)
            unknown = {"idempotencyKey": key, "unknown": True}
        else:
            raise InvalidParams("each of 'streams' needs 'executionId' or 'idempotencyKey'")
        if stream is None:
            return unknown
        if seq > stream.seq:
            raise InvalidParams(
                f"stream {stream.execution_id!r} has sent {stream.seq} notifications, not {seq}"
            )
        stream.notify = notify
        if stream.execution_id is not None:
            self._streams.move_to_end(stream.execution_id)
        answer = stream.answer()
        if stream.key is not None:
            answer["idempotencyKey"] = stream.key
        replay = [c for c in stream.ring if c.seq > seq]
        first = replay[0] if replay else None
        if (first.seq if first is not None else stream.seq + 1) > seq + 1:
            # The ring lost some: name the bytes to read instead. The client's own end offset
            # is where seq ended; the ring knows it only while it holds seq itself.
            self._overflows += 1
            end = first.offset if first is not None else stream.end
            answer["overflow"] = {
                "fromSeq": seq + 1,
                "toSeq": (first.seq if first is not None else stream.seq + 1) - 1,
                "offset": _offset_after(stream, seq, item.get("offset")),
                "end": end,
            }
        for chunk in replay:
            self._replayed += 1
            _deliver(notify, "terminal/data", _params(stream, chunk))
        answer["replayed"] = len(replay)
        return answer

    def _trim(self, stream: Stream, limit: int) -> None:
        ring = stream.ring
        while stream.ring_bytes > limit and ring:
            old = ring.popleft()
            stream.ring_bytes -= old.size
            self._bytes -= old.size
            self._evicted += old.size

    def _trim_all(self) -> None:
        for stream in list(self._streams.values()):
            if self._bytes <= self.max_bytes:
                return
            self._trim(stream, max(0, stream.ring_bytes - (self._bytes - self.max_bytes)))

    def _forget_excess(self) -> None:
        while len(self._streams) > self.max_streams:
            victim = next((s for s in self._streams.values() if s.finished), None)
            if victim is None:
                return  # every one is running: bounded by the terminals, not by this table
            self._forget(victim)

    def _forget(self, stream: Stream) -> None:
        assert stream.execution_id is not None
        self._streams.pop(stream.execution_id, None)
        if stream.key is not None and self._by_key.get(stream.key) is stream:
            del self._by_key[stream.key]
        self._bytes -= stream.ring_bytes
        stream.ring.clear()
        stream.ring_bytes = 0

    def statistics(self) -> StreamStats:
        return StreamStats(
            streams=len(self._streams),
            ring_bytes=self._bytes,
            sent=self._sent,
            replayed=self._replayed,
            overflows=self._overflows,
            evicted_bytes=self._evicted,
        )


def _offset_after(stream: Stream, seq: int, claimed: Any) -> int | None:
    """Where the client's output ends: after notification `seq` (0: the start)."""
    if seq == 0:
        return 0
    for chunk in stream.ring:
        if chunk.seq == seq:
            return chunk.offset + chunk.size
    return claimed if type(claimed) is int and claimed >= 0 else None


def _params(stream: Stream, chunk: _Chunk) -> dict[str, Any]:
    return {
        "executionId": stream.execution_id,
        "data": chunk.data,
        "seq": chunk.seq,
        "offset": chunk.offset,
    }


def _deliver(notify: Notify, method: str, params: Any) -> None:
    with contextlib.suppress(Exception):  # the connection may have gone: the ring keeps it
        notify(method, params)


class Streamer:
    """The `on_data` of one streamed execution: collects output chunks and sends them as one
    numbered `terminal/data` per loop turn, however many reads it took."""

    __slots__ = ("_parts", "_scheduled", "_spool", "_streams", "_where", "stream")

    def __init__(self, streams: OutputStreams, stream: Stream, where: Callable[[], Any]) -> None:
        self._streams = streams
        self.stream = stream
        self._where = where  # -> the running Execution (its id and spool), or None
        self._spool: Any = None  # its Spool: `total` is the UTF-8 length of all it was given
        self._parts: list[str] = []
        self._scheduled = False

    def __call__(self, text: str) -> None:
        if self._spool is None:
            ex = self._where()
            if ex is not None:
                self._spool = ex.spool
                self._streams.name(self.stream, ex.execution_id)
        self._parts.append(text)
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        self._scheduled = False
        if not self._parts:
            return
        data = "".join(self._parts)
        self._parts.clear()
        # Every part went to the spool first: its total is where this chunk ends (no encode).
        spool = self._spool
        end = spool.total if spool is not None else self.stream.end + len(data.encode())
        self._streams.send(self.stream, data, end - self.stream.end)


__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_STREAMS",
    "DEFAULT_RING_BYTES",
    "Notify",
    "OutputStreams",
    "Stream",
    "StreamStats",
    "Streamer",
]
