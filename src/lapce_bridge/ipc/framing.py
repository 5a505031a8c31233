"""LSP base-protocol framing as a sans-I/O codec: bytes in, frames and errors out.

Theory of operation: `FrameDecoder.feed(data)` appends to one buffer and returns every event
that the bytes so far complete, in stream order, as a state machine with four states:

    HEADER  waiting for a header block ending in CRLF CRLF (at most `max_header_bytes`)
    BODY    a valid block named Content-Length N: waiting for N body bytes -> `Frame`
    PEEK    N is over `max_message_bytes`: waiting for the first `peek_bytes` of the body to
            read the request id from -> `FrameError(MessageTooLarge, id)`; then SKIP, or
            CLOSED when N is over `max_skip_bytes` (`fatal`: the caller closes the connection)
    SKIP    discarding the rest of an oversize body, then HEADER again
    RESYNC  after a malformed header block: discarding bytes up to the next `Content-Length:`

Resynchronisation rule: a malformed header block (no `Content-Length`, a bad or conflicting
value, a line without a colon, or no CRLF CRLF within `max_header_bytes`) produces exactly one
`FrameError(ParseError)`. The decoder then drops bytes up to, not including, the next
occurrence of `Content-Length:` (ASCII case-insensitive, anywhere, not only at a line start),
which begins the next header block. The search starts after the bad block's CRLF CRLF when the
block named a Content-Length it cannot use (bad digits, conflicting values: the block is
dropped whole), else one byte into the block, since what looked like a header may be stray
bytes in front of a real one (`junkContent-Length: 2` recovers the frame). Until one
arrives it keeps only the last 14 bytes (a possibly split `Content-Length:`), so garbage never
grows the buffer and never produces a second error.

Invariants: the events do not depend on how the input is split (the Hypothesis tests feed
every split); `feed` never raises on any bytes; the buffer holds at most one header block,
one body under the limit, or `peek_bytes` of an oversize body; `Content-Type` and unknown
headers are ignored.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import IntEnum

from lapce_bridge.core.errors import MessageTooLarge, ParseError, ParserError
from lapce_bridge.rpc import DEFAULT_MAX_MESSAGE_BYTES

DEFAULT_MAX_HEADER_BYTES = 8 * 1024
DEFAULT_PEEK_BYTES = 256

RequestId = int | str | None

_TERMINATOR = b"\r\n\r\n"
_CONTENT_LENGTH = b"content-length"
_RESYNC = re.compile(rb"[Cc][Oo][Nn][Tt][Ee][Nn][Tt]-[Ll][Ee][Nn][Gg][Tt][Hh]:")
_RESYNC_KEEP = len(b"content-length:") - 1
# The first `"id": <int or string>` in the body's first bytes: clients put the id first.
_ID = re.compile(rb'"id"\s*:\s*(-?\d{1,18}(?![\d.eE])|"(?:[^"\\\r\n]|\\.){0,256}")')
_MAX_LENGTH_DIGITS = 19


@dataclass(slots=True)  # not frozen: a frozen dataclass's __init__ costs ~0.5 us a frame
class Frame:
    """One complete message body."""

    body: bytes


@dataclass(frozen=True, slots=True)
class FrameError:
    """A framing fault. `request_id` is the id read from an oversize body's first bytes.

    `fatal` means the stream cannot be continued (an oversize frame too large to skip):
    the caller sends the error and closes the connection.
    """

    error: ParserError
    request_id: RequestId = None
    fatal: bool = False


Event = Frame | FrameError


class _State(IntEnum):
    HEADER = 1
    BODY = 2
    PEEK = 3
    SKIP = 4
    RESYNC = 5
    CLOSED = 6


_HEADER = _State.HEADER
_BODY = _State.BODY
_CL_PREFIX = b"Content-Length: "


def encode(payload: bytes) -> bytes:
    """Frame one message body."""
    return b"Content-Length: %d\r\n\r\n%b" % (len(payload), payload)


class FrameDecoder:
    __slots__ = (
        "_buf",
        "_length",
        "_state",
        "frames",
        "max_header_bytes",
        "max_message_bytes",
        "max_skip_bytes",
        "peek_bytes",
    )

    def __init__(
        self,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        *,
        max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
        peek_bytes: int = DEFAULT_PEEK_BYTES,
        max_skip_bytes: int | None = None,
    ) -> None:
        if max_message_bytes < 1 or max_header_bytes < 16 or peek_bytes < 1:
            raise ValueError("frame limits must be positive (and headers at least 16 bytes)")
        self.max_message_bytes = max_message_bytes
        self.max_header_bytes = max_header_bytes
        self.peek_bytes = peek_bytes
        # Skipping an oversize body keeps the connection usable; past this, closing is cheaper.
        self.max_skip_bytes = 4 * max_message_bytes if max_skip_bytes is None else max_skip_bytes
        self._buf = bytearray()
        self._state = _State.HEADER
        self._length = 0
        self.frames = 0

    @property
    def buffered(self) -> int:
        """Bytes held for an incomplete header or body (0 between frames)."""
        return len(self._buf) + (self._length if self._state is _State.SKIP else 0)

    @property
    def in_frame(self) -> bool:
        """True while part of a frame has arrived but not all of it (garbage aside)."""
        state = self._state
        if state is _State.HEADER:
            return bool(self._buf)
        return state is not _State.RESYNC and state is not _State.CLOSED

    @property
    def closed(self) -> bool:
        return self._state is _State.CLOSED

    def feed(self, data: bytes) -> list[Event]:
        """Consume `data`; return the frames and errors it completes, in order."""
        events: list[Event] = []
        if self._state is _State.CLOSED:
            return events
        buf = self._buf
        buf += data
        pos = 0
        if self._state is _HEADER:
            pos = self._fast_frames(buf, events)
            if pos == len(buf):
                buf.clear()  # the common case: whole frames only
                return events
        while True:
            state = self._state
            if state is _State.HEADER:
                end = buf.find(_TERMINATOR, pos, pos + self.max_header_bytes)
                if end < 0:
                    if len(buf) - pos >= self.max_header_bytes:
                        events.append(FrameError(ParseError("frame header too long")))
                        pos = self._resync(buf, pos + 1)
                        continue
                    break
                block = bytes(buf[pos:end])
                digits = block[16:]
                if block[:16] == b"Content-Length: " and digits.isdigit() and len(digits) < 19:
                    length: int | tuple[str, bool] = int(digits)  # the common case
                else:
                    length = _content_length(block)
                if isinstance(length, tuple):
                    why, whole_block = length
                    events.append(FrameError(ParseError(why)))
                    pos = self._resync(buf, end + 4 if whole_block else pos + 1)
                    continue
                pos = end + 4
                self._length = length
                self._state = _State.BODY if length <= self.max_message_bytes else _State.PEEK
            elif state is _State.BODY:
                end = pos + self._length
                if len(buf) < end:
                    break
                events.append(Frame(bytes(buf[pos:end])))
                self.frames += 1
                pos = end
                self._state = _State.HEADER
            elif state is _State.PEEK:
                want = min(self.peek_bytes, self._length)
                if len(buf) - pos < want:
                    break
                events.append(self._oversize(bytes(buf[pos : pos + want])))
                if self._state is _State.CLOSED:
                    pos = len(buf)
                    break
                self._state = _State.SKIP
            elif state is _State.SKIP:
                take = min(self._length, len(buf) - pos)
                pos += take
                self._length -= take
                if self._length:
                    break
                self._state = _State.HEADER
            else:  # RESYNC
                pos = self._resync(buf, pos)
                if self._state is _State.RESYNC:
                    break
        if pos:
            del buf[:pos]
        return events

    def _fast_frames(self, buf: bytearray, events: list[Event]) -> int:
        """Whole frames with the plain `Content-Length: N` header, without the state machine.

        Stops (leaving the state as it is, at the returned position) at the first thing that
        is not such a complete frame under the limits; `feed` takes over from there.
        """
        pos = 0
        size = len(buf)
        limit = self.max_message_bytes
        header_limit = self.max_header_bytes
        append = events.append
        frames = 0
        while True:
            end = buf.find(b"\r\n\r\n", pos, pos + header_limit)
            if end < 0 or not buf.startswith(_CL_PREFIX, pos):
                break
            digits = buf[pos + 16 : end]
            if not (0 < len(digits) < 19 and digits.isdigit()):
                break
            length = int(digits)
            start = end + 4
            stop = start + length
            if length > limit or stop > size:
                break
            append(Frame(bytes(buf[start:stop])))
            frames += 1
            pos = stop
        self.frames += frames
        return pos

    def _resync(self, buf: bytearray, start: int) -> int:
        """Position of the next `Content-Length:` at or after `start`; stays in RESYNC if none."""
        match = _RESYNC.search(buf, start)
        if match is not None:
            self._state = _State.HEADER
            return match.start()
        self._state = _State.RESYNC
        return max(start, len(buf) - _RESYNC_KEEP)

    def _oversize(self, head: bytes) -> FrameError:
        length = self._length
        fatal = length > self.max_skip_bytes
        if fatal:
            self._state = _State.CLOSED
        error = MessageTooLarge(
            f"message of {length} bytes is over the limit of {self.max_message_bytes}",
            data={"size": length, "limit": self.max_message_bytes},
        )
        return FrameError(error, _peek_id(head), fatal)


def _peek_id(head: bytes) -> RequestId:
    match = _ID.search(head)
    if match is None:
        return None
    raw = match.group(1)
    if raw[:1] == b'"':
        try:
            text = raw[1:-1].decode("utf-8")
        except UnicodeDecodeError:
            return None
        # Only plain ids are echoed: an escape could decode to something else.
        return None if "\\" in text else text
    return int(raw)


def _content_length(block: bytes) -> int | tuple[str, bool]:
    """The block's Content-Length, or what is wrong and whether to drop the whole block.

    A block that names a Content-Length it cannot be trusted with (bad or conflicting) is
    dropped whole; any other bad block may be stray bytes in front of a real header, so the
    search for the next `Content-Length:` starts inside it.
    """
    length: int | None = None
    problem = ""
    for line in block.split(b"\r\n"):
        name, colon, value = line.partition(b":")
        if not colon or not name.strip():
            problem = problem or f"malformed header line {line[:64]!r}"
            continue
        if name.strip().lower() != _CONTENT_LENGTH:
            continue
        value = value.strip()
        if not value.isdigit() or len(value) > _MAX_LENGTH_DIGITS:
            return (f"bad Content-Length {value[:32]!r}", True)
        number = int(value)
        if length is not None and length != number:
            return ("conflicting Content-Length headers", True)
        length = number
    if problem:
        return (problem, False)
    if length is None:
        return ("frame header without Content-Length", False)
    return length


__all__ = [
    "DEFAULT_MAX_MESSAGE_BYTES",
    "Event",
    "Frame",
    "FrameDecoder",
    "FrameError",
    "RequestId",
    "encode",
]
