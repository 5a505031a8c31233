"""`mcp.dispatcher.parse_call`: a `tools/call` line parsed by orjson alone (for the direct
lane) holds what the SDK's validation of the line holds, builds the very model the SDK
builds when asked for it, and every line it does not take is left to the SDK."""

from __future__ import annotations

import mcp_types as types
import pytest

from lapce_bridge.mcp.dispatcher import parse_call

TAKEN = [
    b'{"jsonrpc":"2.0","id":1,"method":"tools/call",'
    b'"params":{"name":"run_command","arguments":{"command":"echo test"}}}\n',
    b'{"method": "tools/call", "params": {"name": "x"}, "id": "a-7", "jsonrpc": "2.0"}',
    b'{"jsonrpc":"2.0","id":0,"method":"tools/call","params":{"name":"w",'
    b'"arguments":{"t":"\\u00e9\\ud83d\\ude00 \\"q\\"","n":[1,2.5,null,true,{"k":-3e-7}]},'
    b'"_meta":{"progressToken":5}}}',
    b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{},"jsonrpc":"2.0"}',
]
LEFT = [
    b'{"jsonrpc":"2.0","id":1,"method":"tools/call"}',  # no params: the SDK's
    b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":[]}',
    b'{"jsonrpc":"2.0","id":true,"method":"tools/call","params":{}}',
    b'{"jsonrpc":"2.0","id":1.0,"method":"tools/call","params":{}}',
    b'{"jsonrpc":"2.0","id":null,"method":"tools/call","params":{}}',
    b'{"jsonrpc":"1.0","id":1,"method":"tools/call","params":{}}',
    b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{},"extra":1}',
    b'{"jsonrpc":"2.0","method":"tools/call","params":{"name":"x"}}',
    b'{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"q":"tools/call"}}',
    b'{"jsonrpc":"2.0","id":99999999999999999999999,"method":"tools/call","params":{}}',
    b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"x":NaN}}',
    b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"x":"\\ud800"}}',
    b'[{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{}}]',
    b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{}',
]


@pytest.mark.parametrize("line", TAKEN)
def test_a_plain_request_line_is_what_the_sdk_reads(line: bytes) -> None:
    call = parse_call(line)
    expected = types.jsonrpc_message_adapter.validate_json(line, by_name=False)
    assert call is not None
    assert isinstance(expected, types.JSONRPCRequest)
    assert (call.request_id, call.params) == (expected.id, expected.params)
    assert type(call.request_id) is type(expected.id)
    built = call.message  # the SDK's own model, built when asked for
    assert built == expected
    assert built.model_fields_set == expected.model_fields_set
    assert call.metadata is None


@pytest.mark.parametrize("line", LEFT)
def test_any_other_line_is_left_to_the_sdk(line: bytes) -> None:
    assert parse_call(line) is None
