"""The MCP bench rows time a real `lapce-bridge mcp` through the official Python client, and
the same client against a canned server (its own floor); every figure comes from a clock
and every answer is checked."""

from __future__ import annotations

import shutil
from pathlib import Path

import orjson
import pytest

from lapce_bridge.bench.canned_mcp import answer
from lapce_bridge.bench.mcp import run
from lapce_bridge.bench.runner import SUITES, BenchContext
from lapce_bridge.mcp.tools import TOOLS

pytestmark = [
    pytest.mark.timeout(300),
    pytest.mark.skipif(
        shutil.which("bash") is None or shutil.which("grep") is None, reason="needs bash, grep"
    ),
]


async def test_mcp_rows_time_the_server_and_the_clients_own_floor(tmp_path: Path) -> None:
    assert SUITES["mcp"] == "lapce_bridge.bench.mcp"
    rows = await run(BenchContext(workdir=tmp_path, quick=True))
    by_name = {row.name: row for row in rows}
    echo = by_name["run_command echo test (MCP stdio)"]
    floor = by_name["run_command echo test: the SDK client alone (canned server)"]
    assert echo.samples == floor.samples == 300
    assert echo.extra["lost"] == 0
    assert "the server's shell with an empty HOME" in echo.note  # no rc file of the machine's
    assert echo.extra["server_cpu_us"] > 0  # the server process was found and measured
    # The terminal's share, from the answers' own duration_ms: within the call, never all.
    assert echo.p50 is not None
    assert 0 < echo.extra["terminal_us"] < echo.p50
    assert "0 answers wrong" in floor.note
    assert echo.p50 is not None
    assert floor.p50 is not None
    assert floor.p50 > 0
    # The floor is the client's work for exactly this call: the canned server answers with
    # the real tool list and the real server's last answer. (Which median is larger is the
    # bench's to say: the rows run minutes apart, and a loaded machine swaps them.)
    canned = orjson.loads((tmp_path / "mcp-canned.json").read_bytes())
    assert [tool["name"] for tool in canned["tools"]] == [tool.name for tool in TOOLS]
    assert canned["call"]["structuredContent"]["output"] == "test\n"
    assert canned["call"]["structuredContent"]["exit_code"] == 0
    for name in (
        "fs/search / grep -rn, 1000 files (JSON-RPC)",
        "search_files / grep -rn, 1000 files (MCP stdio)",
    ):
        row = by_name[name]
        assert row.extra["matches"] == row.extra["grep_matches"] > 0, row.note


def test_the_canned_server_answers_each_request_from_its_file() -> None:
    canned = {"tools": [{"name": "t"}], "call": {"content": [], "structuredContent": {"a": 1}}}
    init = answer({"method": "initialize", "params": {"protocolVersion": "2025-06-18"}}, canned)
    assert init["protocolVersion"] == "2025-06-18"
    assert answer({"method": "tools/list"}, canned) == {"tools": [{"name": "t"}]}
    assert answer({"method": "tools/call", "params": {}}, canned) is canned["call"]
    assert answer({"method": "ping"}, canned) == {}
