"""`serve --metrics-port`: Prometheus `/metrics` on the server's own event loop, bounded.

Theory of operation: an `asyncio` listener on loopback answers `GET /metrics` with
`metrics_export.render()` and anything else with 404, then closes (HTTP/1.0, one request a
connection). Every bound is explicit, so a client cannot exhaust the server through it:
at most `max_clients` connections at once (more are closed at once), the request head must
arrive within `read_timeout` seconds and fit in `max_head_bytes`, and the answer must be
taken within `read_timeout` too. No thread is started (the stock exporter starts one per
connection, with no timeout).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

from lapce_bridge.core.metrics import MetricsRegistry
from lapce_bridge.metrics_export import CONTENT_TYPE, render


async def serve_metrics(
    metrics: MetricsRegistry,
    port: int,
    *,
    addr: str = "127.0.0.1",
    max_clients: int = 16,
    read_timeout: float = 5.0,
    max_head_bytes: int = 8192,
) -> tuple[int, Callable[[], Awaitable[None]]]:
    """Listen for scrapes; returns the bound port and an async stop function."""
    active: set[asyncio.Task[None]] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if len(active) >= max_clients:
            writer.close()
            return
        active.add(task)
        try:
            async with asyncio.timeout(read_timeout):
                head = await reader.readuntil(b"\r\n\r\n")
                if len(head) > max_head_bytes:
                    raise ValueError("request head too large")
                line = head.split(b"\r\n", 1)[0].split()
                if len(line) >= 2 and line[0] == b"GET" and line[1].split(b"?")[0] == b"/metrics":
                    body = render(metrics)
                    status, kind = b"200 OK", CONTENT_TYPE.encode()
                else:
                    body, status, kind = b"not found\n", b"404 Not Found", b"text/plain"
                writer.write(
                    b"HTTP/1.0 " + status + b"\r\nContent-Type: " + kind
                    + b"\r\nContent-Length: " + str(len(body)).encode()
                    + b"\r\nConnection: close\r\n\r\n" + body
                )  # fmt: skip
                await writer.drain()
        except (TimeoutError, ValueError, ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.LimitOverrunError:
            pass
        finally:
            active.discard(task)
            writer.close()

    server = await asyncio.start_server(handle, addr, port, limit=max_head_bytes)
    bound = int(server.sockets[0].getsockname()[1])

    async def stop() -> None:
        server.close()
        for task in list(active):
            task.cancel()
        with contextlib.suppress(Exception):
            await server.wait_closed()

    return bound, stop


__all__ = ["serve_metrics"]
