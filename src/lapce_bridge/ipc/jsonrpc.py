"""JSON-RPC 2.0 messages: validation of what arrives, encoding of what leaves.

Theory of operation: `parse(body)` turns one frame body into a `Request`, `Notification`,
`Response`, `Invalid` or a `Batch` of those, never raising. `Invalid` carries the error to
answer with and the id when one could be read (else null), so a malformed message is answered
rather than dropped:

- bad JSON (or bad UTF-8, or nesting deeper than the parser allows) -> -32700, id null;
- not an object (or a batch element that is not one), `jsonrpc` other than "2.0", a `method`
  that is not a string, `params` that are neither object nor array, both or neither of
  `result`/`error` on a response -> -32600, with the id when it is valid;
- an id that is not an integer, a string or null (a fraction, a bool, an object) -> -32600,
  id null, because echoing an id the client cannot have meant would confuse it;
- an empty batch -> a single -32600; a batch's responses come back as one array, and a batch
  of notifications only gets no response at all (the server's part).

Errors leave as `{"code", "message", "data"}` where `data` is the classification
(`BridgeError.to_wire()`); foreign exceptions are translated once, here, by `to_bridge_error`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from lapce_bridge.core.errors import (
    BridgeError,
    BridgeTimeout,
    Cancelled,
    Classification,
    ErrorCategory,
    ErrorSeverity,
    Fault,
    FileSystemError,
    InternalError,
    InvalidParams,
    InvalidRequest,
    MessageTooLarge,
    MethodNotFound,
    ParseError,
    PermissionDenied,
    ResourceExhausted,
    TerminalError,
    Unavailable,
    error_type,
    to_bridge_error,
)
from lapce_bridge.ipc.framing import RequestId

_DUMPS_OPTIONS = orjson.OPT_NON_STR_KEYS


@dataclass(slots=True)
class Request:
    id: RequestId
    method: str
    params: Any  # dict, list or None


@dataclass(slots=True)
class Notification:
    method: str
    params: Any


@dataclass(slots=True)
class Response:
    id: RequestId
    result: Any = None
    error: dict[str, Any] | None = None


@dataclass(slots=True)
class Invalid:
    id: RequestId
    error: BridgeError


Message = Request | Notification | Response | Invalid


@dataclass(slots=True)
class Batch:
    items: list[Message]


def parse(body: bytes) -> Message | Batch:
    """Decode and validate one frame body; never raises."""
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        return Invalid(None, ParseError(f"invalid JSON: {exc}"))
    if type(obj) is dict:
        return validate(obj)
    if type(obj) is list:
        if not obj:
            return Invalid(None, InvalidRequest("empty batch"))
        return Batch([validate(item) for item in obj])
    return Invalid(None, InvalidRequest(f"a message must be an object, not {_kind(obj)}"))


def validate(obj: Any) -> Message:
    """Classify one decoded message (an element of a batch, or the whole body)."""
    if type(obj) is not dict:
        return Invalid(None, InvalidRequest(f"a message must be an object, not {_kind(obj)}"))
    has_id = "id" in obj
    msg_id = obj.get("id")
    if msg_id is not None and type(msg_id) is not int and type(msg_id) is not str:
        return Invalid(None, InvalidRequest(f"id must be an integer or a string, not {msg_id!r}"))
    if obj.get("jsonrpc") != "2.0":
        return Invalid(msg_id, InvalidRequest('"jsonrpc" must be exactly "2.0"'))
    if "method" in obj:
        method = obj["method"]
        if type(method) is not str:
            return Invalid(msg_id, InvalidRequest("method must be a string"))
        params = obj.get("params")
        if params is not None and type(params) is not dict and type(params) is not list:
            return Invalid(msg_id, InvalidRequest("params must be an object or an array"))
        if has_id:
            return Request(msg_id, method, params)
        return Notification(method, params)
    has_result = "result" in obj
    error = obj.get("error")
    if has_id and has_result != ("error" in obj):
        if error is not None and (type(error) is not dict or type(error.get("code")) is not int):
            return Invalid(msg_id, InvalidRequest("error must be an object with an integer code"))
        return Response(msg_id, obj.get("result"), error)
    return Invalid(msg_id, InvalidRequest("a request needs a method"))


def _kind(obj: object) -> str:
    return "null" if obj is None else type(obj).__name__


# -- outgoing ---------------------------------------------------------------------------
def error_object(exc: BaseException) -> dict[str, Any]:
    """The `error` member for any exception, with the classification as `data`."""
    err = to_bridge_error(exc)
    return {"code": err.code, "message": err.detail, "data": err.to_wire()}


def result_bytes(msg_id: RequestId, result: Any) -> bytes:
    """A success response; raises `orjson.JSONEncodeError` for a result JSON cannot hold."""
    return orjson.dumps({"jsonrpc": "2.0", "id": msg_id, "result": result}, option=_DUMPS_OPTIONS)


def error_bytes(msg_id: RequestId, exc: BaseException) -> bytes:
    return orjson.dumps(error_dict(msg_id, exc), option=_DUMPS_OPTIONS)


def error_dict(msg_id: RequestId, exc: BaseException) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": msg_id, "error": error_object(exc)}


def result_dict(msg_id: RequestId, result: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": msg_id, "result": result}


def notification_bytes(method: str, params: Any) -> bytes:
    if params is None:
        return orjson.dumps({"jsonrpc": "2.0", "method": method})
    payload = {"jsonrpc": "2.0", "method": method, "params": params}
    return orjson.dumps(payload, option=_DUMPS_OPTIONS)


def request_bytes(msg_id: RequestId, method: str, params: Any) -> bytes:
    if params is None:
        return orjson.dumps({"jsonrpc": "2.0", "id": msg_id, "method": method})
    payload = {"jsonrpc": "2.0", "id": msg_id, "method": method, "params": params}
    return orjson.dumps(payload, option=_DUMPS_OPTIONS)


def dumps(obj: Any) -> bytes:
    return orjson.dumps(obj, option=_DUMPS_OPTIONS)


_BY_CODE: dict[int, type[BridgeError]] = {
    cls.code: cls
    for cls in (
        ParseError,
        InvalidRequest,
        MethodNotFound,
        InvalidParams,
        InternalError,
        Cancelled,
        BridgeTimeout,
        Unavailable,
        TerminalError,
        FileSystemError,
        ResourceExhausted,
        PermissionDenied,
        MessageTooLarge,
    )
}


def error_from_wire(error: dict[str, Any]) -> BridgeError:
    """Rebuild a classified `BridgeError` from a response's `error` member (client side)."""
    code = error.get("code")
    kind = _BY_CODE.get(code, BridgeError) if type(code) is int else BridgeError
    data = error.get("data")
    message = str(error.get("message") or kind.__name__)
    extra: dict[str, Any] = {}
    classification = None
    if type(data) is dict:
        named = error_type(data.get("type"))
        if named is not None and named.code == kind.code:
            kind = named  # the very class the server raised (ConflictError, TerminalBusy, ...)
        extra = {k: v for k, v in data.items() if k not in _WIRE_KEYS}
        try:
            classification = Classification(
                ErrorCategory(data["category"]),
                ErrorSeverity(data["severity"]),
                bool(data["retryable"]),
                bool(data["fallbackAvailable"]),
                Fault(data.get("fault", "server")),
            )
        except (KeyError, ValueError):
            classification = None
    if type(code) is int and code != kind.code:
        extra["code"] = code  # a code this tree does not name is kept, not lost
    return kind(message, classification=classification, data=extra)


_WIRE_KEYS = frozenset(
    {"category", "severity", "retryable", "fallbackAvailable", "fault", "detail", "type"}
)


__all__ = [
    "Batch",
    "Invalid",
    "Message",
    "Notification",
    "Request",
    "Response",
    "dumps",
    "error_bytes",
    "error_dict",
    "error_from_wire",
    "error_object",
    "notification_bytes",
    "parse",
    "request_bytes",
    "result_bytes",
    "result_dict",
    "validate",
]
