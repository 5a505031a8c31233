"""A thousand clients at once: connections wait in the listen backlog, none is refused.

The server is stopped (SIGSTOP) so it accepts nothing while 600 clients connect: each
connection must wait in the kernel's backlog (1,024), not be refused. The loop listens once
more when it starts serving, with its own default of 100 unless told, and past the backlog
a non-blocking connect to a Unix socket fails at once (EAGAIN), which uvloop reports as
refused. Then the server goes on and every client is answered.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
from pathlib import Path

import orjson

from lapce_bridge.ipc.framing import Frame, FrameDecoder, encode
from tests.integration.serve_process import serve

CLIENTS = 600


async def test_clients_arriving_while_the_server_is_busy_wait_and_are_answered(
    tmp_path: Path,
) -> None:
    async with serve(tmp_path) as served:
        socks: list[socket.socket] = []
        refused = 0
        os.kill(served.proc.pid, signal.SIGSTOP)
        try:
            for _ in range(CLIENTS):
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.setblocking(False)
                try:
                    sock.connect(str(served.socket))
                except (BlockingIOError, ConnectionRefusedError):
                    refused += 1
                    sock.close()
                    continue
                socks.append(sock)
        finally:
            os.kill(served.proc.pid, signal.SIGCONT)
        try:
            assert refused == 0
            ping = encode(orjson.dumps({"jsonrpc": "2.0", "id": 1, "method": "ping"}))
            loop = asyncio.get_running_loop()
            for sock in socks:
                await loop.sock_sendall(sock, ping)

            async def answered(sock: socket.socket) -> bool:
                decoder = FrameDecoder()
                while True:
                    data = await loop.sock_recv(sock, 65536)
                    if not data:
                        return False
                    for event in decoder.feed(data):
                        assert isinstance(event, Frame), event
                        if orjson.loads(event.body).get("result") == {"pong": True}:
                            return True

            results = await asyncio.wait_for(asyncio.gather(*map(answered, socks)), 60)
            assert all(results)
            assert len(results) == CLIENTS
        finally:
            for sock in socks:
                sock.close()
