"""A canned MCP server on stdio, for the bench: the floor an MCP client puts under a call.

Theory of operation: `python -m lapce_bridge.bench.canned_mcp ANSWERS` reads JSON-RPC
messages, one a line, from stdin and answers each request at once from the JSON file
`ANSWERS` (`{"tools": [...], "call": {...}}`: the tool list and one `tools/call` result,
both as a real `lapce-bridge mcp` gave them): `initialize` with the client's protocol
version, `tools/list` with the tools, `tools/call` with the call's result, anything else
with `{}`. Notifications are read and dropped. No SDK, no pydantic, blocking reads and
writes on the raw descriptors: the time a client takes for one call against it is the
client's own time (and the pipes'), which the bench sets beside the real server's.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import orjson


def answer(message: dict[str, Any], canned: dict[str, Any]) -> dict[str, Any]:
    """The result for one request."""
    method = message.get("method")
    if method == "initialize":
        version = (message.get("params") or {}).get("protocolVersion", "2025-11-25")
        return {
            "protocolVersion": version,
            "capabilities": {"tools": {}},
            "serverInfo": {"name": "canned", "version": "0"},
        }
    if method == "tools/list":
        return {"tools": canned["tools"]}
    if method == "tools/call":
        result: dict[str, Any] = canned["call"]
        return result
    return {}


def serve(canned: dict[str, Any], fd_in: int = 0, fd_out: int = 1) -> None:
    """Answer requests from `fd_in` on `fd_out` until EOF."""
    pending = b""
    while True:
        chunk = os.read(fd_in, 1 << 20)
        if not chunk:
            return
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            if not line.strip():
                continue
            message = orjson.loads(line)
            if "id" not in message or "method" not in message:
                continue  # a notification, or an answer to nothing we asked
            reply = {"jsonrpc": "2.0", "id": message["id"], "result": answer(message, canned)}
            out = memoryview(orjson.dumps(reply, option=orjson.OPT_APPEND_NEWLINE))
            while out:
                out = out[os.write(fd_out, out) :]


def main(argv: list[str]) -> None:
    serve(orjson.loads(Path(argv[0]).read_bytes()))


if __name__ == "__main__":
    main(sys.argv[1:])

__all__ = ["answer", "main", "serve"]
