"""Streamed output resumed after the client's connection drops: a real `serve`, real bash.

The command runs under an idempotencyKey (so it belongs to the server, not to the connection
that started it); the client drops mid-stream, connects again, calls `terminal/resume` with
the last `seq` it saw, and assembles every byte exactly once: what it saw, the range an
overflow names (read with `terminal/readOutput`), then the replayed and live notifications.
"""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import Any

from lapce_bridge.ipc.raw import RawClient
from lapce_bridge.testing import FakeClock
from tests.integration.serve_process import serve, until_written
from tests.integration.test_terminal_ownership import served

FIFTY_MB = 50_000_000


class Collected:
    """A stream's notifications as a client sees them: checked for order, no gap, no repeat."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.seq = 0
        self.end = 0
        self.execution_id: str | None = None

    def add(self, params: dict[str, Any]) -> None:
        assert params["seq"] == self.seq + 1, (params["seq"], self.seq)
        assert params["offset"] == self.end
        data = params["data"].encode()
        self.parts.append(data)
        self.seq = params["seq"]
        self.end += len(data)
        self.execution_id = params["executionId"]

    def add_read(self, data: bytes, until: int, last_seq: int) -> None:
        """The bytes of notifications up to `last_seq`, read from the spool instead."""
        assert self.end + len(data) == until
        self.parts.append(data)
        self.end = until
        self.seq = last_seq


async def _read_range(client: RawClient, execution_id: str, start: int, end: int) -> bytes:
    got = b""
    while start + len(got) < end:
        page = await client.request(
            "terminal/readOutput",
            {"executionId": execution_id, "offset": start + len(got), "limit": 4 << 20},
        )
        data = page["result"]["data"].encode()
        assert data, page
        got += data
    return got[: end - start]


async def _follow(client: RawClient, seen: Collected, stop_after: int | None) -> bool:
    """Collect terminal/data until commandFinished (True) or `stop_after` bytes (False)."""
    while True:
        msg = await asyncio.wait_for(client.recv(), 60)
        method = msg.get("method")
        if method == "terminal/data":
            seen.add(msg["params"])
            if stop_after is not None and seen.end >= stop_after:
                return False
        elif method == "terminal/commandFinished":
            return True


async def _resume(client: RawClient, seen: Collected) -> dict[str, Any]:
    """Resume, then read what the ring no longer holds; the replay waits in the inbox."""
    assert seen.execution_id is not None
    msg_id = client.request_nowait(
        "terminal/resume",
        {"streams": [{"executionId": seen.execution_id, "seq": seen.seq, "offset": seen.end}]},
    )
    answer: dict[str, Any] = (await client.response(msg_id))["result"]["streams"][0]
    overflow = answer.get("overflow")
    if overflow is not None:
        assert overflow["offset"] == seen.end
        data = await _read_range(client, seen.execution_id, seen.end, overflow["end"])
        seen.add_read(data, overflow["end"], overflow["toSeq"])
    return answer


async def test_fifty_megabytes_across_a_reconnect_every_byte_once(tmp_path: Path) -> None:
    async with serve(tmp_path) as served:
        params = {
            "command": f"yes | head -c {FIFTY_MB}",
            "stream": True,
            "idempotencyKey": "stream-50m",
            "maxOutputBytes": 4096,
        }
        first = await RawClient.connect_unix(served.socket)
        first.request_nowait("terminal/execute", params)
        seen = Collected()
        assert not await _follow(first, seen, stop_after=1 << 20)
        await first.close()  # mid-stream: the command goes on, its output into the ring

        second = await RawClient.connect_unix(served.socket)
        assert seen.execution_id is not None
        # Away long enough for the 1 MiB ring to lose some: the overflow path.
        await until_written(second, seen.execution_id, seen.end + (4 << 20))
        answer = await _resume(second, seen)
        finished = answer["finished"] or await _follow(second, seen, stop_after=None)
        assert finished
        result = (await second.request("terminal/execute", params))["result"]
        await second.close()

    whole = b"".join(seen.parts)
    assert result["outputBytes"] == len(whole) == FIFTY_MB
    assert hashlib.sha256(whole).hexdigest() == hashlib.sha256(b"y\n" * (FIFTY_MB // 2)).hexdigest()
    assert answer["overflow"]["end"] > answer["overflow"]["offset"]  # the spool filled the gap


async def test_slow_output_resumed_from_the_ring(tmp_path: Path) -> None:
    async with serve(tmp_path) as served:
        params = {
            "command": "for i in $(seq 1 60); do echo line$i; sleep 0.02; done",
            "stream": True,
            "idempotencyKey": "slow-1",
        }
        first = await RawClient.connect_unix(served.socket)
        first.request_nowait("terminal/execute", params)
        seen = Collected()
        assert not await _follow(first, seen, stop_after=len("line1\nline2\n"))
        await first.close()

        second = await RawClient.connect_unix(served.socket)
        assert seen.execution_id is not None
        # Missed while away: 10 lines more (within the ring).
        await until_written(second, seen.execution_id, seen.end + 70)
        answer = await _resume(second, seen)
        assert "overflow" not in answer
        assert answer["replayed"] > 0
        if not answer["finished"]:
            assert await _follow(second, seen, stop_after=None)
        else:  # everything came as the replay
            while seen.seq < answer["lastSeq"]:
                msg = await asyncio.wait_for(second.recv(), 10)
                if msg.get("method") == "terminal/data":
                    seen.add(msg["params"])
        result = (await second.request("terminal/execute", params))["result"]
        await second.close()
    expected = "".join(f"line{i}\n" for i in range(1, 61))
    assert b"".join(seen.parts).decode() == expected == result["output"]


async def test_a_resumed_stream_keeps_its_terminal_past_the_orphan_grace(tmp_path: Path) -> None:
    clock = FakeClock(1000.0)
    async with served(tmp_path, clock) as (_, svc, sock):
        first = await RawClient.connect_unix(sock)
        first.request_nowait(
            "terminal/execute",
            {"command": "echo start; read x; echo got-$x", "stream": True, "idempotencyKey": "k"},
        )
        seen = Collected()
        assert not await _follow(first, seen, stop_after=len("start\n"))
        await first.close()
        for _ in range(500):  # the server notices the closed connection (real I/O)
            if svc.owners.orphans():
                break
            await asyncio.sleep(0.01)
        [tid] = svc.owners.orphans()
        second = await RawClient.connect_unix(sock)
        try:
            reply = await second.request(
                "terminal/resume", {"streams": [{"idempotencyKey": "k", "seq": seen.seq}]}
            )
            [answer] = reply["result"]["streams"]
            assert (answer["terminalId"], answer["finished"]) == (tid, False)
            await clock.advance(60.0)  # past the 30 s grace of the old connection's orphans
            assert tid in svc.terminals  # the resuming connection adopted it
            await second.request("terminal/sendText", {"terminalId": tid, "text": "hi\n"})
            assert await _follow(second, seen, stop_after=None)
            assert b"".join(seen.parts).decode() == "start\nhi\ngot-hi\n"  # typed, echoed
        finally:
            await second.close()
