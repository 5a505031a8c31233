"""The command file: rewritten in place through its descriptor, always exactly the new text."""

from __future__ import annotations

from pathlib import Path

import pytest

from lapce_bridge.terminal.files import CommandFile, new_private_dir


@pytest.fixture
def cmd_file(tmp_path: Path) -> CommandFile:
    folder = new_private_dir(tmp_path / "t1")
    return CommandFile(folder / "cmd")


@pytest.mark.parametrize(
    "texts",
    [
        [b"echo test\n", b"echo test\n"],  # the same length again: no cut needed
        [b"ls\n", b"echo a longer one\n"],  # longer: the write alone covers the old text
        [b"echo a longer one\n", b"ls\n"],  # shorter: the old tail is cut
        [b"echo a longer one\n", b"ls\n", b"pwd\n", b"\n", b""],  # ever shorter, then empty
        [b"", b"x\n", b"echo a longer one\n", b"ab\n", b"echo a longer one\n"],
    ],
)
def test_each_write_leaves_exactly_its_text(cmd_file: CommandFile, texts: list[bytes]) -> None:
    for text in texts:
        cmd_file.write(text)
        assert cmd_file.path.read_bytes() == text


def test_a_large_command_is_written_whole(cmd_file: CommandFile) -> None:
    big = b"".join(b"echo line %d\n" % i for i in range(200_000))  # ~2.6 MB
    cmd_file.write(big)
    assert cmd_file.path.read_bytes() == big
    cmd_file.write(b"true\n")
    assert cmd_file.path.read_bytes() == b"true\n"


def test_a_closed_file_refuses_writes(cmd_file: CommandFile) -> None:
    cmd_file.close()
    with pytest.raises(OSError, match="closed"):
        cmd_file.write(b"echo\n")
