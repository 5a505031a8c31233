"""The last guard on every reply: no answer leaves larger than the message limit, and a
result is encoded once on its way out."""

from __future__ import annotations

from typing import Any

import pytest

from lapce_bridge.core.errors import MessageTooLarge
from lapce_bridge.ipc import jsonrpc
from lapce_bridge.ipc.state import Limits
from lapce_bridge.rpc import CallContext, Params, method
from lapce_bridge.testing.memory import MemoryServer

LIMIT = 4096


def _blob(params: Params, ctx: CallContext) -> dict[str, Any]:
    return {"data": "x" * int(params["size"])}


async def _blob_async(params: Params, ctx: CallContext) -> dict[str, Any]:
    return _blob(params, ctx)


@pytest.mark.parametrize("name", ["test/blob", "test/blobAsync"])
async def test_a_reply_over_the_message_limit_is_refused_and_the_connection_goes_on(
    name: str,
) -> None:
    server = MemoryServer(
        {"test/blob": method(_blob), "test/blobAsync": method(_blob_async)},
        limits=Limits(max_message_bytes=LIMIT),
    )
    client = server.connect()
    try:
        small = await client.request(name, {"size": 100})
        assert small == {"data": "x" * 100}
        with pytest.raises(MessageTooLarge) as caught:
            await client.request(name, {"size": 3 * LIMIT})
        assert caught.value.code == -32007
        assert caught.value.data["limit"] == LIMIT
        assert caught.value.data["size"] > LIMIT
        # Counted once, by its classification, and the connection answers the next request.
        assert [(op, type(exc)) for op, exc in server.errors] == [(name, MessageTooLarge)]
        assert await client.request(name, {"size": 10}) == {"data": "x" * 10}
    finally:
        await server.aclose()


@pytest.mark.parametrize("keyed", [False, True])
@pytest.mark.parametrize("name", ["test/blob", "test/blobAsync"])
async def test_a_result_is_encoded_once(
    monkeypatch: pytest.MonkeyPatch, name: str, keyed: bool
) -> None:
    """The dispatcher encodes a handler's result once and splices the bytes into the reply
    (and, keyed, into the journal's outcome): never a second `dumps` of the same value."""
    results: list[dict[str, Any]] = []

    async def blob_async(params: Params, ctx: CallContext) -> dict[str, Any]:
        results.append(_blob(params, ctx))
        return results[-1]

    def blob(params: Params, ctx: CallContext) -> dict[str, Any]:
        results.append(_blob(params, ctx))
        return results[-1]

    encoded: list[Any] = []
    real = jsonrpc.dumps

    def counting(value: Any) -> bytes:
        encoded.append(value)
        return real(value)

    monkeypatch.setattr(jsonrpc, "dumps", counting)
    server = MemoryServer({"test/blob": method(blob), "test/blobAsync": method(blob_async)})
    client = server.connect()
    try:
        params: dict[str, Any] = {"size": 1000}
        if keyed:
            params["idempotencyKey"] = "k1"
        assert await client.request(name, params) == {"data": "x" * 1000}
        assert len(results) == 1
        assert [v for v in encoded if v is results[0]] == [results[0]]  # once, by identity
    finally:
        await server.aclose()
