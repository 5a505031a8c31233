"""Requests forwarded to the terminal host keep the protocol's keyed semantics, through a real
`lapce-bridge serve --terminal-host on` and real bash: the host alone keeps a command's
`idempotencyKey` (the server journals nothing for it), a repeat gets the first execution's
answer, and a client's `$/cancelRequest` by request id stops a keyed command in the host as it
stops one in the server."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from lapce_bridge.ipc.journal import read_keys
from lapce_bridge.ipc.raw import RawClient
from tests.integration.serve_process import serve
from tests.integration.test_terminal_host import HOST, host_stopped_after

pytestmark = pytest.mark.timeout(120)


def journal_keys(state: Path, pattern: str) -> set[str]:
    paths = list(state.glob(pattern))
    assert paths, pattern  # the journal is there: a key missing from it means something
    keys: set[str] = set()
    for path in paths:
        keys |= read_keys(path)
    return keys


async def test_a_keyed_command_is_kept_once_by_the_host_and_cancelled_by_request_id(
    tmp_path: Path,
) -> None:
    async with host_stopped_after(tmp_path), serve(tmp_path, *HOST) as served:
        client = await RawClient.connect_unix(served.socket)
        tid = (await client.request("terminal/create", {}))["result"]["terminalId"]
        keyed = {
            "terminalId": tid,
            "command": "echo once >> runs; echo ran",
            "idempotencyKey": "k1",
        }
        first = (await client.request("terminal/execute", keyed))["result"]
        again = (await client.request("terminal/execute", keyed))["result"]
        assert first["output"] == "ran\n"
        assert again["executionId"] == first["executionId"]  # answered, not run again
        assert (served.workspace / "runs").read_text() == "once\n"
        # The key is the host's (its journal in its own folder), not the server's as well.
        assert "k1" not in journal_keys(tmp_path / "state", "idempotency-*.journal")
        assert "k1" in journal_keys(tmp_path / "state", "host-*/idempotency.journal")

        long = {"terminalId": tid, "command": "sleep 30; echo late", "idempotencyKey": "k2"}
        asked = client.request_nowait("terminal/execute", long)
        async with asyncio.timeout(30):
            while True:  # until the command runs in the host
                listed = (await client.request("terminal/list"))["result"]
                if any(t["terminalId"] == tid and t["busy"] for t in listed):
                    break
                await asyncio.sleep(0.02)
        client.notify("$/cancelRequest", {"id": asked})
        answer = await client.response(asked)
        assert answer["error"]["code"] == -32800
        after = await client.request(
            "terminal/execute", {"terminalId": tid, "command": "echo free"}
        )
        assert after["result"]["output"] == "free\n"  # the sleep was stopped in the host
        assert after["result"]["durationMs"] < 20_000
        await client.close()
