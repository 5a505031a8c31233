"""IPC rows: ping round trip, pipelined throughput, 1,000 clients, terminal through IPC, RTO.

The server runs in its own process (`python -m lapce_bridge serve`), as an editor runs it:
client and server then each have a core and their own event loop, so a figure is what a
client sees, not how one loop schedules two parties. The latency client is a blocking socket
with the framing codec (the floor any client can reach); a second, informational row uses
`BridgeClient` to show what the full client adds. The recovery row kills the server with
SIGKILL while a `BridgeClient` with an outbox keeps sending, and times from the kill until
every request queued meanwhile has its answer (the supervisor restarts the server).
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import signal
import statistics
import sys
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson

from lapce_bridge.bench.report import Row, figure_row, latency_row
from lapce_bridge.bench.runner import BenchContext
from lapce_bridge.ipc.client import BridgeClient
from lapce_bridge.ipc.framing import Frame, FrameDecoder
from lapce_bridge.ipc.raw import BlockingRawClient, frame

SUITE = "ipc"


@asynccontextmanager
async def server_process(workdir: Path, name: str, *args: str) -> AsyncIterator[Path]:
    """A `lapce-bridge serve` subprocess on a fresh socket (more options in `args`); yields
    the socket path."""
    sock = workdir / name / "bridge.sock"
    workspace = workdir / name / "workspace"
    workspace.mkdir(parents=True, exist_ok=True)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "lapce_bridge", "serve", "--socket", str(sock),
        "--state-dir", str(workdir / name / "state"), "--workspace", str(workspace), *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stderr is not None
    try:
        line = await asyncio.wait_for(proc.stderr.readline(), 60)
        if b"listening" not in line:
            rest = await proc.stderr.read()
            raise RuntimeError(f"server did not start: {(line + rest).decode(errors='replace')}")
        yield sock
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 20)
            except TimeoutError:
                proc.kill()
                await proc.wait()


def ping_round_trips(
    sock: Path, count: int, warmup: int, *, skip_notifications: bool = True
) -> list[float]:
    """Round trips of one ping at a time; `skip_notifications` False for an echo server,
    whose answer is the request itself (it has a "method")."""
    client = BlockingRawClient.connect_unix(sock)
    request = frame({"jsonrpc": "2.0", "id": 1, "method": "ping"})
    send, recv, clock = client.send_bytes, client.recv_body, time.perf_counter
    samples = []
    try:
        for i in range(warmup + count):
            started = clock()
            send(request)
            while b'"method"' in recv() and skip_notifications:
                pass  # a server notification (health/alert): not ours
            if i >= warmup:
                samples.append(clock() - started)
    finally:
        client.close()
    return samples


def pipelined_rate(sock: Path, count: int) -> float:
    """Messages per second: `count` pings written back to back while a reader drains.

    The reader counts the answers' fixed `result` text with `bytes.count` over what arrives
    (keeping a short carry for a match split between reads) instead of decoding frames, so
    the figure is the server's rate, not this client's parser's; a notification the server
    sends meanwhile (a health alert) is not counted.
    """
    client = BlockingRawClient.connect_unix(sock, timeout=60)
    payload = b"".join(frame({"jsonrpc": "2.0", "id": i, "method": "ping"}) for i in range(count))
    marker = b'"result":{"pong":true}'
    started = time.perf_counter()
    sender = threading.Thread(target=client.sock.sendall, args=(payload,))
    sender.start()
    answered = 0
    carry = b""
    try:
        while answered < count:
            data = client.sock.recv(1 << 20)
            if not data:
                raise RuntimeError("the server closed the connection")
            window = carry + data
            answered += window.count(marker)
            # Keep only bytes that could begin a match not yet complete.
            carry = window[-(len(marker) - 1) :] if not window.endswith(marker) else b""
        elapsed = time.perf_counter() - started
    finally:
        sender.join()
        client.close()
    if answered != count:
        raise RuntimeError(f"expected {count} answers, counted {answered}")
    return count / elapsed


async def concurrent_clients(sock: Path, count: int) -> tuple[int, float, int]:
    """How many of `count` simultaneously connected clients get their ping answered."""
    request = frame({"jsonrpc": "2.0", "id": 1, "method": "ping"})
    conns: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    retries = 0
    started = time.perf_counter()
    try:
        for _ in range(count):
            for _attempt in range(100):
                try:
                    conn = await asyncio.open_unix_connection(str(sock))
                    break
                except BlockingIOError:  # the listen backlog is full: a client waits its turn
                    retries += 1
                    await asyncio.sleep(0.001)
            else:
                raise RuntimeError("the server stopped accepting connections")
            conns.append(conn)
        for _, writer in conns:
            writer.write(request)

        async def answered(reader: asyncio.StreamReader) -> bool:
            decoder = FrameDecoder()
            while True:
                data = await reader.read(4096)
                if not data:
                    return False
                for event in decoder.feed(data):
                    if isinstance(event, Frame):
                        return bool(orjson.loads(event.body).get("result") == {"pong": True})

        results = await asyncio.wait_for(
            asyncio.gather(*(answered(r) for r, _ in conns), return_exceptions=True), 60
        )
        elapsed = time.perf_counter() - started
    finally:
        for _, writer in conns:
            writer.close()
    return sum(1 for r in results if r is True), elapsed, retries


async def client_round_trips(sock: Path, count: int) -> list[float]:
    samples = []
    async with BridgeClient(sock) as client:
        for i in range(count + 200):
            started = time.perf_counter()
            await client.request("ping")
            if i >= 200:
                samples.append(time.perf_counter() - started)
    return samples


async def terminal_rows(ctx: BenchContext, sock: Path) -> list[Row]:
    rows: list[Row] = []
    async with BridgeClient(sock, request_timeout=120) as client:
        await client.request("terminal/execute", {"command": "true"})  # the default terminal
        samples = []
        for _ in range(ctx.n(1000, 50)):
            started = time.perf_counter()
            await client.request("terminal/execute", {"command": "echo test"})
            samples.append(time.perf_counter() - started)
        rows.append(
            latency_row(
                SUITE,
                "terminal command, echo test, end to end through IPC",
                samples,
                seed=(1000, 10000, 100000),
                goal=(800, 3000),
            )
        )
        size = 20_000_000 if not ctx.quick else 2_000_000
        received = 0

        def on_data(params: Any) -> None:
            nonlocal received
            received += len(params.get("data", ""))

        client.on_notification("terminal/data", on_data)
        started = time.perf_counter()
        command = f"head -c {size} /dev/zero | tr '\\0' 'x'"
        await client.request(
            "terminal/execute", {"command": command, "stream": True, "maxOutputBytes": 1024}
        )
        elapsed = time.perf_counter() - started
        rows.append(
            figure_row(
                SUITE,
                "terminal output streamed to a client",
                received / elapsed / 1e6,
                "MB/s",
                higher_is_better=True,
                seed=10,
                goal=50,
                extra={"bytes": float(received)},
            )
        )
    return rows


_ECHO_SERVER = """
import asyncio, sys, uvloop
class Echo(asyncio.Protocol):
    def connection_made(self, transport): self.transport = transport
    def data_received(self, data): self.transport.write(data)
async def main():
    server = await asyncio.get_running_loop().create_unix_server(Echo, sys.argv[1])
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
uvloop.run(main())
"""


async def echo_floor(workdir: Path, count: int) -> list[float]:
    """Round trips to a bare uvloop echo server: the floor of any Python server here."""
    sock = workdir / "echo" / "echo.sock"
    sock.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _ECHO_SERVER, str(sock),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    assert proc.stdin is not None
    try:
        await asyncio.wait_for(proc.stdout.readline(), 30)
        return await asyncio.to_thread(ping_round_trips, sock, count, 500, skip_notifications=False)
    finally:
        proc.stdin.close()
        await proc.wait()


async def restart_rto(workdir: Path, rounds: int, queued: int) -> list[float]:
    """Seconds from SIGKILL to the last of `queued` requests sent meanwhile being answered."""
    sock = workdir / "rto" / "bridge.sock"
    workspace = workdir / "rto" / "workspace"
    workspace.mkdir(parents=True, exist_ok=True)
    args = ("--state-dir", str(workdir / "rto" / "state"), "--workspace", str(workspace))
    client = await BridgeClient.spawn(sock, server_args=args, max_crashes=rounds + 2)
    times = []
    try:
        for _ in range(rounds):
            await client.send_with_recovery("ping")
            sup = client.supervisor
            assert sup is not None
            assert sup.process is not None
            killed_at = time.perf_counter()
            os.kill(sup.process.pid, signal.SIGKILL)
            await asyncio.gather(*(client.send_with_recovery("ping") for _ in range(queued)))
            times.append(time.perf_counter() - killed_at)
    finally:
        await client.close()
    return times


async def run(ctx: BenchContext) -> list[Row]:
    rows: list[Row] = []
    async with server_process(ctx.workdir, "ipc") as sock:
        samples = await asyncio.to_thread(ping_round_trips, sock, ctx.n(20000, 1000), 500)
        rows.append(
            latency_row(
                SUITE,
                "IPC round trip (ping)",
                samples,
                seed=(100, 500, 2000),
                goal=(60, 200),
                note="blocking socket client; server in its own process",
            )
        )
        rows.append(
            latency_row(
                SUITE,
                "IPC round trip (ping), BridgeClient",
                await client_round_trips(sock, ctx.n(10000, 500)),
                note="the full asyncio client: futures, timeouts on the clock",
            )
        )
        if ctx.baselines:
            floor = await echo_floor(ctx.workdir, ctx.n(20000, 1000))
            rows.append(
                latency_row(
                    SUITE,
                    "baseline: uvloop echo over a Unix socket",
                    floor,
                    note="the same client against a server that only echoes: the floor",
                )
            )
        rates = [
            await asyncio.to_thread(pipelined_rate, sock, ctx.n(100_000, 5000)) for _ in range(3)
        ]
        rows.append(
            figure_row(
                SUITE,
                "IPC messages, pipelined",
                statistics.median(rates),
                "msg/s",
                higher_is_better=True,
                seed=10_000,
                goal=100_000,
                samples=len(rates),
            )
        )
        clients = 1000
        answered, elapsed, retries = await concurrent_clients(sock, clients)
        rows.append(
            figure_row(
                SUITE,
                "concurrent IPC clients, each answered",
                answered,
                "clients",
                higher_is_better=True,
                goal=1000,
                extra={"connected": float(clients), "seconds": elapsed, "retries": retries},
            )
        )
        if importlib.util.find_spec("lapce_bridge.terminal.service") is not None:
            rows.extend(await terminal_rows(ctx, sock))
    rto = await restart_rto(ctx.workdir, 3 if ctx.quick else 5, 50)
    rows.append(
        figure_row(
            SUITE,
            "IPC disconnect / server restart, 50 queued requests delivered",
            statistics.median(rto) * 1e3,
            "ms",
            higher_is_better=False,
            seed=5000,
            goal=500,
            samples=len(rto),
            extra={"max_ms": max(rto) * 1e3},
            note="SIGKILL to the last queued answer; includes the new process starting",
        )
    )
    return rows


__all__ = ["run"]
