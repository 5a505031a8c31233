"""The chaos scenarios that need no shell or server, run in quick mode."""

from __future__ import annotations

import random
from pathlib import Path

from click.testing import CliRunner

from lapce_bridge.chaos import parser
from lapce_bridge.chaos.runner import chaos
from lapce_bridge.chaos.scenario import ChaosContext
from lapce_bridge.terminal.osc import OscParser


async def test_parser_garbage_loses_no_marker(tmp_path: Path) -> None:
    result = await parser.run(ChaosContext(tmp_path, quick=True))
    assert result.lost == 0
    assert result.ok
    assert result.rto_ms == 0.0


def test_missing_counts_lost_markers() -> None:
    # The scenario's own loss count must be able to see a loss.
    assert parser._missing([1, 2, 3], [1, 99, 3]) == 1
    assert parser._missing([1, 2, 3], [1, 2, 7, 3]) == 0
    assert parser._missing([1, 2], []) == 2


def test_garbage_stream_actually_contains_broken_sequences() -> None:
    data = parser.garbage_stream(random.Random(1), 200)
    assert data.count(b"\x1b]633;D;") > 200  # unterminated finishes mixed in
    codes = parser.feed_split(OscParser(), data, random.Random(2))
    assert parser._missing([i % 256 for i in range(200)], codes) == 0


def test_cli_rejects_unknown_scenario() -> None:
    out = CliRunner().invoke(chaos, ["--only", "nonsense"])
    assert out.exit_code == 2
    assert "unknown scenario" in out.output


def test_cli_json_rows() -> None:
    out = CliRunner().invoke(chaos, ["--only", "parser-garbage", "--quick", "--json"])
    assert out.exit_code == 0, out.output
    lines = [line for line in out.output.splitlines() if line.startswith("{")]
    assert len(lines) == 2
    assert '"verdict":"goal"' in lines[0]
