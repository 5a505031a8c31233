"""JSON-RPC 2.0 validation and envelopes."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lapce_bridge.core.errors import (
    BridgeError,
    BridgeTimeout,
    Cancelled,
    ErrorCategory,
    FileSystemError,
    InvalidRequest,
    ParseError,
    Unavailable,
)
from lapce_bridge.ipc import jsonrpc
from lapce_bridge.ipc.jsonrpc import Batch, Invalid, Notification, Request, Response


def test_request_notification_response() -> None:
    assert jsonrpc.parse(b'{"jsonrpc":"2.0","id":1,"method":"ping"}') == Request(1, "ping", None)
    assert jsonrpc.parse(b'{"jsonrpc":"2.0","id":"a","method":"m","params":[1]}') == Request(
        "a", "m", [1]
    )
    assert jsonrpc.parse(b'{"jsonrpc":"2.0","method":"n","params":{"x":1}}') == Notification(
        "n", {"x": 1}
    )
    assert jsonrpc.parse(b'{"jsonrpc":"2.0","id":null,"method":"m"}') == Request(None, "m", None)
    assert jsonrpc.parse(b'{"jsonrpc":"2.0","id":3,"result":null}') == Response(3, None, None)
    err = {"code": -32601, "message": "x"}
    assert jsonrpc.parse(orjson.dumps({"jsonrpc": "2.0", "id": 3, "error": err})) == Response(
        3, None, err
    )


@pytest.mark.parametrize(
    ("body", "code", "msg_id"),
    [
        (b"{not json", -32700, None),
        (b'{"jsonrpc":"2.0","id":1,"method":"m"', -32700, None),
        (b"\xff\xfe", -32700, None),
        (b"", -32700, None),
        (b"[" * 2000 + b"]" * 2000, -32700, None),
        (b"[]", -32600, None),
        (b"42", -32600, None),
        (b'"ping"', -32600, None),
        (b"null", -32600, None),
        (b'{"jsonrpc":"2.0","id":1.5,"method":"m"}', -32600, None),
        (b'{"jsonrpc":"2.0","id":true,"method":"m"}', -32600, None),
        (b'{"jsonrpc":"2.0","id":{"a":1},"method":"m"}', -32600, None),
        (b'{"jsonrpc":"1.0","id":4,"method":"m"}', -32600, 4),
        (b'{"id":4,"method":"m"}', -32600, 4),
        (b'{"jsonrpc":"2.0","id":5,"method":7}', -32600, 5),
        (b'{"jsonrpc":"2.0","id":6,"method":"m","params":"s"}', -32600, 6),
        (b'{"jsonrpc":"2.0","id":7,"method":"m","params":3}', -32600, 7),
        (b'{"jsonrpc":"2.0","method":1,"params":"bar"}', -32600, None),
        (b'{"jsonrpc":"2.0","id":8}', -32600, 8),
        (b'{"jsonrpc":"2.0","id":9,"result":1,"error":{"code":1}}', -32600, 9),
        (b'{"jsonrpc":"2.0","id":9,"error":"bad"}', -32600, 9),
    ],
)
def test_invalid_messages_get_a_code_and_the_id_when_usable(
    body: bytes, code: int, msg_id: int | None
) -> None:
    parsed = jsonrpc.parse(body)
    assert isinstance(parsed, Invalid)
    assert parsed.error.code == code
    assert parsed.id == msg_id


def test_batches_validate_each_element() -> None:
    parsed = jsonrpc.parse(
        b'[{"jsonrpc":"2.0","id":1,"method":"a"},1,{"jsonrpc":"2.0","method":"n"},{"foo":"boo"}]'
    )
    assert isinstance(parsed, Batch)
    first, second, third, fourth = parsed.items
    assert first == Request(1, "a", None)
    assert isinstance(second, Invalid)
    assert second.error.code == -32600
    assert third == Notification("n", None)
    assert isinstance(fourth, Invalid)
    assert fourth.id is None


def test_error_object_carries_the_classification() -> None:
    err = jsonrpc.error_object(Unavailable("breaker open", data={"breaker": "fs"}))
    assert err["code"] == -32002
    assert err["message"] == "breaker open"
    assert err["data"] == {
        "breaker": "fs",
        "category": "resource",
        "severity": "warning",
        "retryable": True,
        "fallbackAvailable": True,
        "fault": "server",
        "detail": "breaker open",
        "type": "Unavailable",
    }


def test_foreign_exceptions_are_translated() -> None:
    err = jsonrpc.error_object(PermissionError(13, "Permission denied"))
    assert err["code"] == -32006
    err = jsonrpc.error_object(TimeoutError())
    assert err["code"] == -32001
    assert err["data"]["category"] == "timeout"
    err = jsonrpc.error_object(RuntimeError("boom"))
    assert err["code"] == -32603
    assert "boom" in err["message"]


def test_encoders_round_trip() -> None:
    assert orjson.loads(jsonrpc.result_bytes(1, {"pong": True})) == {
        "jsonrpc": "2.0",
        "id": 1,
        "result": {"pong": True},
    }
    assert orjson.loads(jsonrpc.notification_bytes("terminal/data", {"d": "x"})) == {
        "jsonrpc": "2.0",
        "method": "terminal/data",
        "params": {"d": "x"},
    }
    assert orjson.loads(jsonrpc.notification_bytes("n", None)) == {"jsonrpc": "2.0", "method": "n"}
    assert orjson.loads(jsonrpc.request_bytes("k", "m", None)) == {
        "jsonrpc": "2.0",
        "id": "k",
        "method": "m",
    }
    body = jsonrpc.error_bytes(None, ParseError("bad"))
    assert jsonrpc.parse(body) == Response(None, None, jsonrpc.error_object(ParseError("bad")))
    with pytest.raises(TypeError):
        jsonrpc.result_bytes(1, object())


@pytest.mark.parametrize(
    "exc",
    [
        Cancelled("stop"),
        BridgeTimeout("late", data={"operation": "x"}),
        FileSystemError("disk", retryable=False),
        InvalidRequest("no"),
    ],
)
def test_error_from_wire_rebuilds_class_and_classification(exc: BridgeError) -> None:
    rebuilt = jsonrpc.error_from_wire(jsonrpc.error_object(exc))
    assert type(rebuilt) is type(exc)
    assert rebuilt.code == exc.code
    assert rebuilt.classification == exc.classification
    assert rebuilt.data == exc.data
    assert rebuilt.detail == exc.detail


def test_error_from_wire_tolerates_foreign_shapes() -> None:
    err = jsonrpc.error_from_wire({"code": -32000, "message": "server says no"})
    assert type(err) is BridgeError
    assert err.data == {"code": -32000}
    err = jsonrpc.error_from_wire({"code": -32602, "message": "m", "data": {"category": "?"}})
    assert err.code == -32602
    assert err.classification.category is ErrorCategory.PARSER


json_values: st.SearchStrategy[Any] = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=80), json_values.map(orjson.dumps)))
def test_parse_never_raises(body: bytes) -> None:
    parsed = jsonrpc.parse(body)
    items = parsed.items if isinstance(parsed, Batch) else [parsed]
    for item in items:
        if isinstance(item, Invalid):
            assert item.error.code in (-32700, -32600)
            assert item.id is None or type(item.id) in (int, str)
