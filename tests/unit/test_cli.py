from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import orjson
from click.testing import CliRunner

from lapce_bridge.cli import COMMANDS, group

main = group()

STREAM = (
    b"\x1b]633;A\x07$ \x1b]633;B\x07\x1b]633;E;ls;abc\x07\x1b]633;C\x07"
    b"file.txt\r\n\x1b]633;D;2\x07\x1b]633;P;Cwd=/tmp\x07"
)


def test_help_lists_every_command() -> None:
    out = CliRunner().invoke(main, ["--help"])
    assert out.exit_code == 0
    for name in COMMANDS:
        assert name in out.output


def test_unknown_command_is_a_usage_error() -> None:
    out = CliRunner().invoke(main, ["nonsense"])
    assert out.exit_code == 2
    assert "No such command" in out.output


def test_osc_dump_json_lines(tmp_path: Path) -> None:
    capture = tmp_path / "capture.bin"
    capture.write_bytes(STREAM)
    out = CliRunner().invoke(main, ["osc-dump", "--json", "--nonce", "abc", str(capture)])
    assert out.exit_code == 0, out.output
    markers = [orjson.loads(line) for line in out.output.splitlines() if line.startswith("{")]
    assert [m["kind"] for m in markers] == ["A", "B", "E", "C", "D", "P"]
    assert markers[2]["commandLine"] == "ls"
    assert markers[4]["exitCode"] == 2
    assert markers[5]["value"] == "/tmp"


def test_osc_dump_strip_from_stdin_byte_by_byte() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "lapce_bridge", "osc-dump", "--strip", "--chunk-size", "1", "-"],
        input=STREAM,
        capture_output=True,
        check=True,
    )
    assert proc.stdout == b"$ file.txt\r\n"


def test_osc_dump_into_a_pipe_closed_early_ends_quietly(tmp_path: Path) -> None:
    capture = tmp_path / "capture.bin"
    capture.write_bytes(STREAM * 20_000)  # far more lines than a pipe buffer holds
    for args in (["--json"], [], ["--strip"]):
        proc = subprocess.Popen(
            [sys.executable, "-m", "lapce_bridge", "osc-dump", *args, str(capture)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert proc.stdout is not None
        assert proc.stderr is not None
        assert proc.stdout.read(10)  # `| head -c 10`
        proc.stdout.close()
        assert proc.wait(60) == -signal.SIGPIPE, args  # as cat ends: the shell shows 141
        assert proc.stderr.read() == b"", args
        proc.stderr.close()


def test_osc_dump_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    out = CliRunner().invoke(main, ["osc-dump", str(tmp_path / "absent")])
    assert out.exit_code == 2
    assert "No such file or directory" in out.output


def test_version() -> None:
    out = CliRunner().invoke(main, ["--version"])
    assert out.exit_code == 0
    assert "lapce-bridge" in out.output
