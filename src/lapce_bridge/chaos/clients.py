"""Clients that misbehave or crowd in: one stops reading, sockets cut mid-frame, 1,000 at once.

All against a real server with default policies; the other clients are real sockets.

- client stops reading: one client streams a large output and stops reading its socket; a
  second client pings throughout. Every ping must be answered, and the worst ping's time is
  the RTO (how long the stalled reader could hold others up; goal 200 ms, seed 5 s).
- socket severed mid-frame: connections send half a frame (a header, part of a body) and
  close; one sends a whole `fs/write` and closes before the answer. The server must stay the
  same process, answer the next client, and leave the file whole or absent (never partial).
  RTO: sever to the next answer on a fresh connection.
- 1,000 clients: connected at once, each sends a ping; each must be answered. RTO: the time
  until the last answer.

With `break_recovery` the server is stopped (SIGSTOP) while the clients need it, so the
answers that do not come are counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import statistics
import time
from collections.abc import Iterator

import orjson

from lapce_bridge.chaos.harness import ServerUnderTest, Tally
from lapce_bridge.chaos.scenario import ChaosContext, ChaosResult
from lapce_bridge.chaos.terminal import new_terminal
from lapce_bridge.core.errors import BridgeError
from lapce_bridge.ipc.client import BridgeClient
from lapce_bridge.ipc.framing import Frame, FrameDecoder
from lapce_bridge.ipc.raw import frame


@contextlib.contextmanager
def stopped(pid: int, really: bool) -> Iterator[None]:
    """SIGSTOP the server for the block (break_recovery), SIGCONT after."""
    if really:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        if really:
            os.kill(pid, signal.SIGCONT)


async def _ping(client: BridgeClient, within: float) -> float:
    started = time.monotonic()
    await client.request("ping", timeout=within)
    return (time.monotonic() - started) * 1000


async def run_stalled_reader(ctx: ChaosContext) -> ChaosResult:
    tally = Tally()
    size = ctx.n(50_000_000, 10_000_000)
    worst = 0.0
    sut = ServerUnderTest(ctx.workdir, "stalled")
    async with sut as client:
        tid = await new_terminal(client, "bash", sut.workspace)
        reader, writer = await asyncio.open_unix_connection(str(sut.socket))
        request = {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "terminal/execute",
            "params": {
                "terminalId": tid,
                "command": f"yes 0123456789abcdef | head -c {size}",
                "stream": True,
                "maxOutputBytes": 4096,
            },
        }
        writer.write(frame(request))  # and then read nothing for a while
        other = await sut.connect_another()
        try:
            stall_until = time.monotonic() + ctx.n(5, 2)
            with stopped(sut.pid, ctx.break_recovery):
                while time.monotonic() < stall_until:
                    try:
                        worst = max(worst, await _ping(other, 2))
                        tally.check(True, "ping answered")
                    except (BridgeError, TimeoutError):
                        tally.check(False, "ping not answered while a client stalled")
                        worst = float("inf")
                    await asyncio.sleep(0.05)
            # The stalled client reads again: its answer must still come (or the connection
            # be closed with the reason logged; a silent hang is the loss).
            answered = await _drain_until_answer(reader, 1, 60)
            tally.check(answered, "the stalled client's request never answered")
            tally.check((await _ping(other, 10)) >= 0, "server unusable afterwards")
        finally:
            writer.close()
            await other.close(stop_server=False)
    return tally.result(
        "client stops reading",
        worst,
        1,
        seed_ms=5_000,
        goal_ms=200,
        detail=f"{size // 1_000_000} MB streamed to a client that stops reading; RTO = the "
        f"worst ping of another client meanwhile.",
    )


async def _drain_until_answer(reader: asyncio.StreamReader, want_id: int, within: float) -> bool:
    decoder = FrameDecoder()
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            data = await asyncio.wait_for(reader.read(1 << 20), deadline - time.monotonic())
        except TimeoutError:
            return False
        if not data:
            return False
        for event in decoder.feed(data):
            if isinstance(event, Frame) and orjson.loads(event.body).get("id") == want_id:
                return True
    return False


async def run_severed(ctx: ChaosContext) -> ChaosResult:
    rng = ctx.rng("severed")
    rounds = ctx.n(20, 2)
    tally = Tally()
    rtos: list[float] = []
    sut = ServerUnderTest(ctx.workdir, "severed")
    async with sut:
        pid = sut.pid
        for i in range(rounds):
            content = "x" * rng.randrange(10_000, 200_000)
            whole = frame(
                {
                    "jsonrpc": "2.0",
                    "id": 7,
                    "method": "fs/write",
                    "params": {"path": f"cut-{i}.txt", "content": content},
                }
            )
            cut = rng.randrange(1, len(whole) - 1) if i % 2 == 0 else len(whole)
            _, writer = await asyncio.open_unix_connection(str(sut.socket))
            writer.write(whole[:cut])
            await writer.drain()
            writer.close()  # severed: mid-frame, or before the answer of a whole one
            severed = time.monotonic()
            with stopped(pid, ctx.break_recovery):
                other = BridgeClient(sut.socket)
                try:
                    await asyncio.wait_for(other.connect(), 3)
                    await other.request("ping", timeout=3)
                    rtos.append((time.monotonic() - severed) * 1000)
                    tally.check(True, "answered")
                except (BridgeError, TimeoutError, OSError):
                    tally.check(False, "next client not answered after a severed socket")
                finally:
                    await other.close(stop_server=False)
            tally.check(sut.pid == pid, "server restarted: it crashed")
            written = sut.workspace / f"cut-{i}.txt"
            await asyncio.sleep(0.05)
            tally.check(
                not written.exists() or written.read_text() == content, "partial file written"
            )
    rto = statistics.median(rtos) if rtos else float("inf")
    return tally.result(
        "socket severed mid-frame",
        rto,
        rounds,
        seed_ms=5_000,
        goal_ms=200,
        detail="half frames and unanswered writes cut off; RTO = sever to the next client's "
        "answer.",
    )


async def run_many_clients(ctx: ChaosContext) -> ChaosResult:
    count = ctx.n(1000, 100)
    tally = Tally()
    sut = ServerUnderTest(ctx.workdir, "clients")
    async with sut:
        request = frame({"jsonrpc": "2.0", "id": 1, "method": "ping"})
        started = time.monotonic()
        conns: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        with stopped(sut.pid, ctx.break_recovery):
            for _ in range(count):
                try:
                    conns.append(await asyncio.open_unix_connection(str(sut.socket)))
                except OSError:
                    tally.check(False, "connection refused")
            for _, writer in conns:
                writer.write(request)
            answers = await asyncio.gather(
                *(_drain_until_answer(r, 1, 3 if ctx.break_recovery else 60) for r, _ in conns)
            )
        elapsed = (time.monotonic() - started) * 1000
        for ok in answers:
            tally.check(ok, "client not answered")
        for _, writer in conns:
            writer.close()
    return tally.result(
        f"{count} clients at once",
        elapsed if tally.lost == 0 else float("inf"),
        1,
        seed_ms=5_000,
        goal_ms=1_000,
        ok=tally.lost == 0,
        detail=f"{count} sockets connected, one ping each; RTO = connect to the last answer. ",
    )
