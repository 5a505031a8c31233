"""The private link between a server and its terminal host: one message codec, sans-I/O.

Theory of operation: a message is a small JSON header and a payload of raw JSON bytes. The
header says what the message is; the payload is the part that may be large (a command's
output) and is never decoded on its way through the server: results and notifications from
the host are spliced into the client's messages as they are (`orjson.Fragment`), so output is
encoded once, in the host.

Framing: each side's first message (the server's `hello`, the host's `welcome` or `refused`)
is a greeting in LSP framing (`Content-Length: N`, the client protocol's), which every
version of the link has read first; a host of another version can therefore always read a
server's `hello` and refuse it (then drain), and a server can always read the refusal.
Every later message is binary: two little-endian u32 lengths (header, payload), the header,
the payload. Parsing it costs a `struct` unpack and the header's `orjson.loads`: this codec
runs on every forwarded request, answer and notification, on both sides, mostly right after
a process wakes up.

Headers (keys kept short: they are parsed on every message):

    server -> host
      {"q": id, "m": method, "c": conn, "t": received_at, "s": session?, "i": reply_id?}
                               a request; payload = its params. `i`: the client's id of
                               it, when the server takes a result framed for its client
      {"k": "hello", ...}      the first message: versions, the server's settings (see
                               `TerminalHost.hello`); answered {"k": "welcome"} or
                               {"k": "refused", "reason"}
      {"k": "closed", "c": conn}     a client connection left
      {"k": "cancel", "q": id}       the request's answer is no longer awaited
      {"k": "cancelKey", "key": k}   the client cancelled the keyed execution `k`
      {"k": "features"}              payload: {feature: on}
      {"k": "drain"}                 stop taking work; exit once running commands end
    host -> server
      {"r": id, "ok": bool}          an answer; payload = the result, or the error object
      {"r": id, "ok": true, "f": 1}  a result framed for the client (asked for with `i`):
                                     payload = the notifications riding with it, then the
                                     response to `i`, each in LSP framing; the server writes
                                     it to its client as it came
      {"n": method, "c": conn}       a notification for one client connection
      {"n": method, "c": conn, "a": id}   one that rides with the answer to request `id`
                                     (`terminal/commandFinished`): it comes right before it,
                                     in the same write, and leaves with it to the client
      {"b": method}                  a notification for every client
      {"o": op, "d": seconds, "ok": bool}   an operation the host timed (a shell recovery)

Invariants: a header is always a JSON object (orjson writes it; the decoder refuses anything
else); the payload may be empty (no params, no result); `LinkDecoder.feed` gives the same
messages however the bytes are split, and raises `ValueError` on anything malformed or over
its limit, which closes the link (the link is private: a bad message means a bug or a version
mismatch, never a client's input).
"""

from __future__ import annotations

import struct
from typing import Any

import orjson

from lapce_bridge.ipc.framing import encode

PROTOCOL_VERSION = 2
"""The link's own version: a host speaking another is drained and replaced. 2: binary frames
after the greeting (1: every message in LSP framing)."""

_LENGTHS = struct.Struct("<II")
_PREFIX = _LENGTHS.size
_GREETING_HEADER = b"Content-Length: "
_GREETING_MAX_HEADER = 64


def greeting(header: dict[str, Any]) -> bytes:
    """A side's first message, in the framing every version of the link reads."""
    return encode(orjson.dumps(header) + b"\n")


def frame(header: dict[str, Any], payload: bytes = b"") -> bytes:
    """One message after the greeting: lengths, header, payload."""
    head = orjson.dumps(header)
    return _LENGTHS.pack(len(head), len(payload)) + head + payload


def payload_of(value: Any) -> bytes:
    """The payload for a JSON value (None: empty)."""
    return b"" if value is None else orjson.dumps(value)


def value_of(payload: bytes) -> Any:
    """The JSON value of a payload (empty: None)."""
    return orjson.loads(payload) if payload else None


def _header(raw: bytes | bytearray | memoryview) -> dict[str, Any]:
    header = orjson.loads(raw)
    if type(header) is not dict:
        raise ValueError("a link message whose header is not an object")
    return header


class LinkDecoder:
    """Bytes of one side of a link in, (header, payload) messages out: the greeting first,
    then binary frames."""

    __slots__ = ("_buf", "_greeted", "max_bytes")

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._buf = bytearray()
        self._greeted = False

    def feed(self, data: bytes) -> list[tuple[dict[str, Any], bytes]]:
        """The messages `data` completes, in order; `ValueError` on a malformed stream."""
        buf = self._buf
        if buf:
            buf += data
            view: bytes | bytearray = buf
        else:
            view = data  # the common case: whole messages in one read, nothing held
        out: list[tuple[dict[str, Any], bytes]] = []
        pos = 0
        if not self._greeted:
            pos = self._greeting(view, out)
            if not self._greeted:  # the rest of it has yet to come
                if view is not buf:
                    buf += view
                return out
        size = len(view)
        unpack = _LENGTHS.unpack_from
        while size - pos >= _PREFIX:
            head, body = unpack(view, pos)
            if head + body > self.max_bytes:
                raise ValueError(f"a link message of {head + body} bytes, over the limit")
            start = pos + _PREFIX
            cut = start + head
            end = cut + body
            if end > size:
                break
            out.append((_header(view[start:cut]), bytes(view[cut:end])))
            pos = end
        if view is buf:
            del buf[:pos]
        elif pos < size:
            buf += view[pos:]
        return out

    def _greeting(self, view: bytes | bytearray, out: list[tuple[dict[str, Any], bytes]]) -> int:
        """The greeting, when it is all there: appended to `out`; the position after it."""
        end = view.find(b"\r\n\r\n", 0, _GREETING_MAX_HEADER)
        if end < 0:
            if len(view) >= _GREETING_MAX_HEADER or not _GREETING_HEADER.startswith(
                bytes(view[: len(_GREETING_HEADER)])
            ):
                raise ValueError("a link that does not start with a greeting")
            return 0
        digits = bytes(view[len(_GREETING_HEADER) : end])
        if not view.startswith(_GREETING_HEADER) or not digits.isdigit():
            raise ValueError("a link that does not start with a greeting")
        length = int(digits)
        if length > self.max_bytes:
            raise ValueError(f"a link greeting of {length} bytes, over the limit")
        start = end + 4
        if len(view) < start + length:
            return 0
        body = bytes(view[start : start + length])
        cut = body.find(b"\n")
        if cut < 0:
            raise ValueError("a link greeting without a header line")
        out.append((_header(body[:cut]), body[cut + 1 :]))
        self._greeted = True
        return start + length


__all__ = [
    "PROTOCOL_VERSION",
    "LinkDecoder",
    "frame",
    "greeting",
    "payload_of",
    "value_of",
]
