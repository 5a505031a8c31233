"""The last guard on every reply: no answer leaves larger than the message limit."""

from __future__ import annotations

from typing import Any

import pytest

from lapce_bridge.core.errors import MessageTooLarge
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
