"""`ipc.standby`'s pieces on real pipes and files: the line that wakes it, what ends it, and
how it tells that the code it loaded changed."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from lapce_bridge.ipc.standby import GO, changed, package_files, wait_for_go


def _pipe_with(*writes: bytes) -> int:
    read, write = os.pipe()
    for data in writes:
        os.write(write, data)
    os.close(write)
    return read


def test_the_line_wakes_it_even_in_pieces() -> None:
    fd = _pipe_with(GO[:2], GO[2:])
    try:
        assert wait_for_go(fd)
    finally:
        os.close(fd)


def test_the_end_of_stdin_or_another_line_does_not() -> None:
    for writes in ((), (b"serv",), (b"stop\n",)):
        fd = _pipe_with(*writes)
        try:
            assert not wait_for_go(fd)
        finally:
            os.close(fd)


def test_a_rewritten_or_removed_file_is_told(tmp_path: Path) -> None:
    one, two = tmp_path / "one.py", tmp_path / "two.py"
    one.write_text("x = 1\n")
    two.write_text("y = 2\n")
    files = {str(p): (p.stat().st_ino, p.stat().st_size, p.stat().st_mtime_ns) for p in (one, two)}
    assert changed(files) == []
    one.write_text("x = 10\n")
    two.unlink()
    assert sorted(changed(files)) == sorted([str(one), str(two)])


def test_the_package_files_are_the_loaded_modules_of_the_package() -> None:
    files = package_files()
    assert os.path.realpath(sys.modules["lapce_bridge.ipc.standby"].__file__ or "") in {
        os.path.realpath(p) for p in files
    }
    assert all("lapce_bridge" in p for p in files)
    assert changed(files) == []
