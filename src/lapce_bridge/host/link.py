"""The private link between a server and its terminal host: one message codec, sans-I/O.

Theory of operation: messages travel in LSP frames (`ipc.framing`, the same codec and limits
as the client protocol). A frame's body is a small JSON header, a newline, then a payload of
raw JSON bytes. The header says what the message is; the payload is the part that may be
large (a command's output) and is never decoded on its way through the server: results and
notifications from the host are spliced into the client's messages as they are
(`orjson.Fragment`), so output is encoded once, in the host.

Headers (keys kept short: they are parsed on every message):

    server -> host
      {"q": id, "m": method, "c": conn, "t": received_at, "s": session?}   a request; payload
                                                                        = its params
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
      {"n": method, "c": conn}       a notification for one client connection
      {"b": method}                  a notification for every client
      {"o": op, "d": seconds, "ok": bool}   an operation the host timed (a shell recovery)

Invariants: a header is always a JSON object without a newline (orjson never writes one); the
payload may be empty (no params, no result); `split` never raises on a well-formed frame and
raises `ValueError` on anything else, which closes the link (the link is private: a bad
message means a bug or a version mismatch, never a client's input).
"""

from __future__ import annotations

from typing import Any

import orjson

from lapce_bridge.ipc.framing import encode

PROTOCOL_VERSION = 1
"""The link's own version: a host speaking another is drained and replaced."""


def frame(header: dict[str, Any], payload: bytes = b"") -> bytes:
    """One framed message: header, newline, payload."""
    return encode(orjson.dumps(header) + b"\n" + payload)


def split(body: bytes) -> tuple[dict[str, Any], bytes]:
    """A frame's body as (header, raw payload)."""
    cut = body.find(b"\n")
    if cut < 0:
        raise ValueError("a link message without a header line")
    header = orjson.loads(body[:cut])
    if type(header) is not dict:
        raise ValueError("a link message whose header is not an object")
    return header, body[cut + 1 :]


def payload_of(value: Any) -> bytes:
    """The payload for a JSON value (None: empty)."""
    return b"" if value is None else orjson.dumps(value)


def value_of(payload: bytes) -> Any:
    """The JSON value of a payload (empty: None)."""
    return orjson.loads(payload) if payload else None


__all__ = ["PROTOCOL_VERSION", "frame", "payload_of", "split", "value_of"]
