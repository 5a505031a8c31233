"""Here-documents typed line by line, with the body and its delimiter line handed to the shell
in one load (bash, zsh: real shells). What lands in the file is exactly what a typed shell
writes: quoting, `$` expansion, tab stripping, several on a line, inside a block."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from lapce_bridge.terminal.result import Status
from lapce_bridge.terminal.terminal import Terminal

# Lines a shell must not touch inside a quoted here-document.
ODD_LINES = [
    "plain text",
    "$HOME and `date` and $(id)",
    "\tleading tab, trailing space ",
    "quotes ' and \" and \\ backslash",
    "if then fi ;; && || <<EOF",
    "",
    "unicode: \u00e9\u00e8 \u2713",
]


@pytest_asyncio.fixture(params=["bash", "zsh"])
async def term(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Terminal]:
    async with await Terminal.start(
        shell=str(request.param),
        cwd=str(tmp_path),
        env={"HOME": str(tmp_path)},
        state_dir=tmp_path / "state",
    ) as t:
        yield t


async def test_a_long_quoted_heredoc_arrives_whole(term: Terminal, tmp_path: Path) -> None:
    body = [f"{i}: {ODD_LINES[i % len(ODD_LINES)]}" for i in range(500)]
    command = "cat > out.txt <<'EOF'\n" + "\n".join(body) + "\nEOF\necho written"
    result = await term.execute(command, timeout=60)
    assert (result.output, result.exit_code) == ("written\n", 0)
    assert (tmp_path / "out.txt").read_text() == "\n".join(body) + "\n"


async def test_heredoc_forms_behave_as_typed(term: Terminal, tmp_path: Path) -> None:
    command = "\n".join(
        [
            "cat > a.txt <<EOF",  # unquoted: expanded
            "home=$HOME",
            "EOF",
            "cat > b.txt <<-END",  # <<-: leading tabs stripped, the delimiter's too
            "\tindented",
            "\tEND",
            "cat > c.txt <<ONE; cat > d.txt <<'TWO'",  # two on one line
            "first",
            "ONE",
            "$second",
            "TWO",
            "if true; then",  # inside a block
            "  cat > e.txt <<X",
            "in block",
            "X",
            "fi",
            "echo done",
        ]
    )
    result = await term.execute(command, timeout=30)
    assert (result.output, result.exit_code) == ("done\n", 0)
    assert (tmp_path / "a.txt").read_text() == f"home={tmp_path}\n"
    assert (tmp_path / "b.txt").read_text() == "indented\n"
    assert (tmp_path / "c.txt").read_text() == "first\n"
    assert (tmp_path / "d.txt").read_text() == "$second\n"
    assert (tmp_path / "e.txt").read_text() == "in block\n"


async def test_the_lines_after_a_heredoc_keep_their_own_errors(term: Terminal) -> None:
    # A syntax error on the line after a here-document drops nothing that follows it.
    command = "cat <<EOF\nbody\nEOF\nif then fi\necho after"
    result = await term.execute(command, timeout=30)
    assert result.output.startswith("body\n")
    assert result.output.endswith("after\n")
    assert result.exit_code == 0


async def test_a_heredoc_without_its_delimiter_is_incomplete(term: Terminal) -> None:
    result = await term.execute("cat <<EOF\nnever\nclosed", timeout=30)
    assert result.status is Status.COMPLETED
    assert result.exit_code == 130
    assert [r.action for r in result.recoveries] == ["incomplete_command"]
    assert (await term.execute("echo next", timeout=10)).output == "next\n"
