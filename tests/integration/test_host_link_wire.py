"""The link as a real terminal host process speaks it, with real bash: the greeting, then
binary frames; a command's `terminal/commandFinished` rides with its answer (right before it,
naming the request; a streamed command's comes after its output, at once), and a request the
server stops waiting for gets no answer while its command goes on."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from lapce_bridge.host import link
from lapce_bridge.host.attach import hello
from lapce_bridge.host.places import host_places
from lapce_bridge.host.process import host_pid
from lapce_bridge.host.proxy import HostProxy
from lapce_bridge.ipc.framing import Frame, FrameDecoder
from lapce_bridge.testing.memory import MemoryServer
from tests.integration.serve_process import server_env

pytestmark = pytest.mark.timeout(120)

Message = tuple[dict[str, Any], bytes]


class Wire:
    """A server's end of the link, driven by hand."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.decoder = link.LinkDecoder(1 << 24)
        self.seen: list[Message] = []

    def send(self, header: dict[str, Any], params: Any = None) -> None:
        self.writer.write(link.frame(header, link.payload_of(params)))

    async def until(self, found: Any, within: float = 30.0) -> list[Message]:
        """Messages read until `found(header)` is true for one; all of them, in order."""
        async with asyncio.timeout(within):
            while not any(found(header) for header, _ in self.seen):
                data = await self.reader.read(1 << 16)
                assert data, "the host closed the link"
                self.seen.extend(self.decoder.feed(data))
        return self.seen

    async def answer(self, q: int) -> Any:
        """The result of request `q` (once it came)."""
        seen = await self.until(lambda h: h.get("r") == q)
        header, payload = next(m for m in seen if m[0].get("r") == q)
        assert header["ok"], payload
        return link.value_of(payload)


@contextlib.asynccontextmanager
async def host_wire(tmp_path: Path) -> AsyncIterator[Wire]:
    """A real host (`python -m lapce_bridge.host`) and a link to it, greeted."""
    state, workspace = tmp_path / "state", tmp_path / "ws"
    workspace.mkdir()
    places = host_places(state, workspace)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "lapce_bridge.host", "--state-dir", str(state),
        "--workspace", str(workspace), "--shell", "bash",
        env=server_env(), stdin=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        async with asyncio.timeout(30):
            while True:  # until it listens
                try:
                    reader, writer = await asyncio.open_unix_connection(str(places.socket))
                    break
                except OSError:
                    await asyncio.sleep(0.02)
        try:
            greeting = hello(
                workspace=workspace, shell="bash", max_message_bytes=1 << 24, features={}
            )
            writer.write(link.greeting(greeting))
            wire = Wire(reader, writer)
            await wire.until(lambda h: h.get("k") == "welcome")
            yield wire
        finally:
            writer.close()
            await writer.wait_closed()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
        await proc.wait()


def after(messages: list[Message], header: dict[str, Any]) -> list[Message]:
    return messages[messages.index(next(m for m in messages if m[0] == header)) + 1 :]


async def test_a_command_finished_rides_with_its_answer(tmp_path: Path) -> None:
    async with host_wire(tmp_path) as wire:
        seen = await wire.until(lambda h: h.get("k") == "welcome")
        assert seen[0][0]["k"] == "welcome"  # read as the greeting, then binary frames
        wire.send({"q": 1, "m": "terminal/create", "c": 7, "t": 0.0}, {})
        tid = (await wire.answer(1))["terminalId"]
        for q, params in (
            (2, {"terminalId": tid, "command": "echo plain"}),
            (3, {"terminalId": tid, "command": "echo keyed", "idempotencyKey": "w1"}),
            (4, {"terminalId": tid, "command": "printf 'a\\nb\\n'", "stream": True}),
        ):
            start = len(wire.seen)
            wire.send({"q": q, "m": "terminal/execute", "c": 7, "t": 0.0}, params)
            messages = (await wire.until(lambda h, q=q: h.get("r") == q))[start:]
            answered = next(i for i, (h, _) in enumerate(messages) if h.get("r") == q)
            finished = next(
                i for i, (h, _) in enumerate(messages) if h.get("n") == "terminal/commandFinished"
            )
            assert finished < answered
            done = link.value_of(messages[finished][1])
            result = link.value_of(messages[answered][1])
            assert done["executionId"] == result["executionId"]
            assert (done["exitCode"], result["exitCode"]) == (0, 0)
            if not params.get("stream"):
                # Right before the answer, naming the request it rides with, for its
                # connection (one write: one wake-up of the server for both).
                assert finished == answered - 1
                assert messages[finished][0] == {"n": "terminal/commandFinished", "c": 7, "a": q}
            else:  # its output came before, as it was produced, and its end at once after
                assert messages[finished][0] == {"n": "terminal/commandFinished", "c": 7}
                streamed = "".join(
                    link.value_of(p)["data"]
                    for h, p in messages[:finished]
                    if h.get("n") == "terminal/data"
                )
                assert streamed.replace("\r", "") == "a\nb\n"


def client_messages(frames: bytes) -> list[Any]:
    """The client protocol's messages in `frames`, all of it whole frames."""
    events = FrameDecoder(1 << 24).feed(frames)
    assert all(type(e) is Frame for e in events)
    return [orjson.loads(e.body) for e in events if type(e) is Frame]


async def test_a_result_asked_framed_comes_as_the_client_reads_it(tmp_path: Path) -> None:
    """With the client's id (`i`), a result comes framed for the client: its rider, then the
    response to that id, in LSP framing (the server writes it as it came). An error, and a
    request without `i`, come on the link's own terms."""
    async with host_wire(tmp_path) as wire:
        wire.send({"q": 1, "m": "terminal/create", "c": 7, "t": 0.0, "i": "c-1"}, {})
        seen = await wire.until(lambda h: h.get("r") == 1)
        header, payload = next(m for m in seen if m[0].get("r") == 1)
        assert header == {"r": 1, "ok": True, "f": 1}
        messages = client_messages(payload)
        assert [m.get("id") for m in messages] == ["c-1"]
        tid = messages[0]["result"]["terminalId"]
        for q, params in (
            (2, {"terminalId": tid, "command": "echo plain"}),
            (3, {"terminalId": tid, "command": "echo keyed", "idempotencyKey": "f1"}),
        ):
            wire.send({"q": q, "m": "terminal/execute", "c": 7, "t": 0.0, "i": q * 10}, params)
            seen = await wire.until(lambda h, q=q: h.get("r") == q)
            header, payload = next(m for m in seen if m[0].get("r") == q)
            assert header == {"r": q, "ok": True, "f": 1}
            assert not [h for h, _ in seen if h.get("a") == q]  # its rider is in the payload
            done, answer = client_messages(payload)
            assert done["method"] == "terminal/commandFinished"
            assert (answer["jsonrpc"], answer["id"]) == ("2.0", q * 10)
            assert (answer["result"]["output"], answer["result"]["exitCode"]) == (
                params["command"][5:] + "\n",
                0,
            )
            assert done["params"]["executionId"] == answer["result"]["executionId"]
        wire.send({"q": 4, "m": "terminal/execute", "c": 7, "t": 0.0, "i": 40}, {"nope": 1})
        seen = await wire.until(lambda h: h.get("r") == 4)
        header, payload = next(m for m in seen if m[0].get("r") == 4)
        assert header == {"r": 4, "ok": False}
        assert link.value_of(payload)["code"] == -32602
        wire.send({"q": 5, "m": "terminal/list", "c": 7, "t": 0.0}, {})
        assert [t["terminalId"] for t in await wire.answer(5)] == [tid]


async def test_a_request_nobody_waits_for_gets_no_answer_and_its_command_goes_on(
    tmp_path: Path,
) -> None:
    async with host_wire(tmp_path) as wire:
        wire.send({"q": 1, "m": "terminal/create", "c": 7, "t": 0.0}, {})
        tid = (await wire.answer(1))["terminalId"]
        keyed = {"terminalId": tid, "command": "sleep 0.5; echo late", "idempotencyKey": "w2"}
        wire.send({"q": 2, "m": "terminal/execute", "c": 7, "t": 0.0}, keyed)
        wire.send({"k": "cancel", "q": 2})  # the server answered its client itself
        # The command still ends, and says so at once (nothing holds it for an answer)...
        seen = await wire.until(lambda h: h.get("n") == "terminal/commandFinished")
        finished = next(m for m in seen if m[0].get("n") == "terminal/commandFinished")
        assert finished[0] == {"n": "terminal/commandFinished", "c": 7}
        # ... no answer to the request that was let go; the key has the real result.
        wire.send({"q": 3, "m": "terminal/execute", "c": 7, "t": 0.0}, keyed)
        again = await wire.answer(3)
        seen = wire.seen
        assert not [h for h, _ in seen if h.get("r") == 2]
        assert (again["output"], again["exitCode"]) == ("late\n", 0)
        assert again["executionId"] == link.value_of(finished[1])["executionId"]
        assert {"r": 3, "ok": True} in [h for h, _ in after(seen, finished[0])]


async def test_through_the_server_the_client_gets_the_end_and_the_answer_in_one_write(
    tmp_path: Path,
) -> None:
    """The server's side: a real dispatcher (in-memory transport) over the proxy, attached to
    a real host it starts. The rider goes out through its request's context: the client gets
    it and the answer in one write, as from terminals in the server."""
    state, workspace = tmp_path / "state", tmp_path / "ws"
    workspace.mkdir()
    places = host_places(state, workspace)
    try:
        async with HostProxy(workspace=workspace, state_dir=state, default_shell="bash") as proxy:
            server = MemoryServer(proxy.methods())
            client = server.connect()
            for params in (
                {"command": "echo one"},
                {"command": "echo two", "idempotencyKey": "m1"},
            ):
                result = await client.request("terminal/execute", params)
                assert (result["output"], result["exitCode"]) == (params["command"][5:] + "\n", 0)
                assert client.writes[-1] == ["terminal/commandFinished", "answer"]
                assert client.notes[-1][1]["executionId"] == result["executionId"]
            await server.aclose()
    finally:
        pid = host_pid(places)
        if pid is not None:
            os.kill(pid, signal.SIGTERM)
