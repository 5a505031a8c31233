"""Spool head/tail math, whole-character reads, and the store's bounds."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lapce_bridge.core.errors import InvalidParams
from lapce_bridge.terminal.spool import (
    OutputExpired,
    Spool,
    SpoolStore,
    dropped_marker,
    truncation_marker,
    whole_chars,
)

TEXT = st.text(alphabet=st.sampled_from("ab\n€日🎉"), max_size=400)


def test_small_output_is_kept_whole_in_memory(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "a.out", 100)
    spool.write("hello ")
    spool.write("wörld\n")
    assert spool.result() == ("hello wörld\n", False)
    assert spool.total == len("hello wörld\n".encode())
    assert not spool.on_disk
    assert not (tmp_path / "a.out").exists()


def test_the_partial_last_line_is_taken_back(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "a.out", 100)
    spool.write("out\nbash-5.2€# ")
    spool.drop_partial_line()
    assert (spool.result(), spool.total) == (("out\n", False), 4)
    spool.drop_partial_line()  # nothing after the last newline: nothing taken
    assert spool.total == 4
    prompt_only = Spool(tmp_path / "b.out", 100)
    prompt_only.write("vm% ")
    prompt_only.drop_partial_line()
    assert (prompt_only.result(), prompt_only.total) == (("", False), 0)


def test_large_output_keeps_head_and_tail_and_moves_to_disk(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "b.out", 20)
    text = "".join(f"{i:04d}\n" for i in range(1000))
    for i in range(0, len(text), 7):
        spool.write(text[i : i + 7])
    output, truncated = spool.result()
    assert truncated
    assert spool.on_disk
    # Cut at line ends: the head ends its own line, so the marker adds no blank line.
    assert output == text[:10] + truncation_marker(len(text) - 20)[1:] + text[-10:]
    assert spool.memory_bytes <= 3 * 20
    spool.finish()
    assert (tmp_path / "b.out").read_text() == text


def test_exactly_max_bytes_is_not_truncated(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "c.out", 10)
    spool.write("0123456789")
    assert spool.result() == ("0123456789", False)
    spool.write("x")
    assert spool.result()[1] is True
    spool.delete()


def test_cuts_never_split_a_character(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "d.out", 10)
    spool.write("€" * 40)  # 3 bytes each: a cut at 5 bytes falls inside the second one
    output, truncated = spool.result()
    assert truncated
    assert "\ufffd" not in output
    head, tail = output.split(truncation_marker(120 - 6))  # what was left out, exactly
    assert head == "€"
    assert tail == "€"
    spool.delete()
    assert not (tmp_path / "d.out").exists()


def test_a_limit_below_one_character_returns_that_character(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "g.out", 100)
    spool.write("🎉€")
    spool.finish()
    assert spool.read(0, 1) == ("🎉", 4, False)
    assert spool.read(4, 2) == ("€", 7, True)


def test_whole_chars_drops_only_partial_edges() -> None:
    data = "a€b".encode()
    assert whole_chars(data[:2], at_start=False, at_end=True) == "a"
    assert whole_chars(data[2:], at_start=True, at_end=False) == "b"
    assert whole_chars(data, at_start=True, at_end=True) == "a€b"


@settings(max_examples=150, deadline=None)
@given(chunks=st.lists(TEXT, max_size=12), max_bytes=st.integers(16, 300), limit=st.integers(1, 50))
def test_pages_reassemble_the_whole_output(
    tmp_path_factory: pytest.TempPathFactory, chunks: list[str], max_bytes: int, limit: int
) -> None:
    spool = Spool(tmp_path_factory.mktemp("s") / "x.out", max_bytes)
    for chunk in chunks:
        spool.write(chunk)
    spool.finish()
    whole = "".join(chunks)
    assert spool.total == len(whole.encode())
    output, truncated = spool.result()
    assert truncated == (spool.total > max_bytes)
    if not truncated:
        assert output == whole
    else:
        assert len(output.encode()) <= max_bytes + len(truncation_marker(spool.total).encode())
        head = re.split(r"\n?\[\.\.\. ", output, maxsplit=1)[0]
        assert whole.startswith(head)
    pages: list[str] = []
    offset, eof = 0, spool.total == 0
    if eof:
        assert spool.read(0, limit) == ("", 0, True)
    while not eof:
        text, nxt, eof = spool.read(offset, limit)
        assert nxt > offset
        assert "\ufffd" not in text
        pages.append(text)
        offset = nxt
    assert "".join(pages) == whole
    spool.delete()


def test_read_refuses_bad_ranges(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "e.out", 10)
    with pytest.raises(InvalidParams):
        spool.read(-1, 10)
    with pytest.raises(InvalidParams):
        spool.read(0, 0)


def test_running_spool_reads_without_eof(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "f.out", 4)
    spool.write("abcdefgh")
    assert spool.read(0, 100) == ("abcdefgh", 8, False)
    spool.finish()
    assert spool.read(8, 100) == ("", 8, True)
    assert spool.read(0, 3) == ("abc", 3, False)


def test_store_evicts_oldest_finished_by_count(tmp_path: Path) -> None:
    store = SpoolStore(tmp_path, max_count=3)
    for i in range(3):
        store.create(f"e{i}", 100).write("x")
        store.finished(f"e{i}")
    store.create("e3", 100)  # still running
    with pytest.raises(OutputExpired, match="output of execution 'e0' has expired") as info:
        store.get("e0")
    assert info.value.data == {"executionId": "e0", "expired": True}
    with pytest.raises(InvalidParams, match="unknown executionId 'never'"):
        store.get("never")
    assert store.read("e1", 0, 10) == ("x", 1, True)
    assert store.statistics().evicted == 1


def test_the_expiry_reason_names_the_budget_in_force(tmp_path: Path) -> None:
    store = SpoolStore(tmp_path, max_count=1, max_bytes=1000)
    for name in ("a", "b"):
        store.create(name, 100).write(name)
        store.finished(name)
    store.max_count, store.max_bytes = 2, 2000  # (a budget changed while serving)
    for name in ("c", "d"):
        store.create(name, 100).write(name)
        store.finished(name)
    with pytest.raises(OutputExpired, match="within 1 outputs and 1000 bytes"):
        store.get("a")
    with pytest.raises(OutputExpired, match="within 2 outputs and 2000 bytes"):
        store.get("b")


def test_store_never_evicts_a_running_spool(tmp_path: Path) -> None:
    store = SpoolStore(tmp_path, max_count=1)
    store.create("a", 10).write("1")
    store.create("b", 10).write("2")
    assert store.read("a", 0, 10) == ("1", 1, False)
    assert store.read("b", 0, 10) == ("2", 1, False)
    store.finished("a")
    assert store.statistics().spools == 1


def test_store_bounds_bytes_and_trims(tmp_path: Path) -> None:
    store = SpoolStore(tmp_path, max_bytes=250)
    for i in range(4):
        store.create(f"e{i}", 50).write("y" * 100)
        store.finished(f"e{i}")
    assert store.finished_bytes == 200
    assert store.statistics().spools == 2
    assert store.trim(100) == 100
    assert store.finished_bytes == 100
    assert store.trim(0) == 100
    assert store.statistics().spools == 0
    assert list(tmp_path.iterdir()) == []


def test_store_expires_least_recently_read_first(tmp_path: Path) -> None:
    store = SpoolStore(tmp_path, max_count=2)
    for name in ("old", "new"):
        store.create(name, 100).write(name)
        store.finished(name)
    assert store.read("old", 0, 10) == ("old", 3, True)  # read: now the most recent
    store.create("third", 100).write("3")
    store.finished("third")
    with pytest.raises(OutputExpired, match="'new'"):
        store.read("new", 0, 10)
    assert store.read("old", 0, 10) == ("old", 3, True)


def test_spill_moves_finished_outputs_to_disk_and_keeps_them_readable(tmp_path: Path) -> None:
    store = SpoolStore(tmp_path)
    store.create("small", 1000).write("é" * 300)
    store.finished("small")
    store.create("running", 1000).write("r" * 100)
    before = store.statistics().memory_bytes
    freed = store.spill()
    assert freed == 600  # the finished one only; a running spool keeps writing where it is
    after = store.statistics()
    assert after.memory_bytes == before - freed
    assert after.spilled == 1
    assert (tmp_path / "small.out").read_text() == "é" * 300
    assert store.read("small", 0, 10_000) == ("é" * 300, 600, True)
    assert store.get("small").result() == ("é" * 300, False)
    assert store.finished_bytes == 600
    assert store.spill() == 0  # nothing left in memory to move


def test_running_spool_is_capped_keeping_head_and_tail_and_stating_the_loss(
    tmp_path: Path,
) -> None:
    spool = Spool(tmp_path / "yes.out", 20, max_running_bytes=1000)
    lines = [f"{i:05d}\n" for i in range(2000)]  # 12,000 bytes
    for line in lines:
        spool.write(line)
    text = "".join(lines)
    assert spool.total == 12_000
    assert (tmp_path / "yes.out").stat().st_size <= 1000
    lost = spool.lost_bytes
    assert lost >= 12_000 - 1000
    output, truncated = spool.result()
    assert truncated
    assert f"{lost} of them were dropped" in output
    assert output.endswith(text[-10:])
    # Paging from 0 yields the head, one marker for the dropped range, then the kept tail.
    offset, pages = 0, []
    while True:
        data, offset, eof = spool.read(offset, 128)
        pages.append(data)
        if offset >= spool.total:
            break
    joined = "".join(pages)
    head_len = 500
    marker = dropped_marker(head_len, head_len + lost)
    assert joined == text[:head_len] + marker + text[head_len + lost :]
    assert not eof
    spool.finish()
    assert spool.read(spool.total - 6, 100) == (text[-6:], 12_000, True)


def test_running_cap_never_splits_a_character(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "u.out", 10, max_running_bytes=100)
    for _ in range(200):
        spool.write("€🎉a")
    spool.finish()
    offset, out = 0, []
    while offset < spool.total:
        data, offset, _ = spool.read(offset, 7)
        out.append(data)
    assert "\ufffd" not in "".join(out)


def test_truncation_cuts_at_a_line_end_when_one_is_near(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "lines.out", 200)
    lines = [f"line {i:03d} " + "x" * 20 + "\n" for i in range(50)]  # 30 bytes each
    for line in lines:
        spool.write(line)
    output, truncated = spool.result()
    assert truncated
    head, marker, tail = re.split(r"(\[\.\.\. \d+ bytes omitted[^\n]*\]\n)", output)
    # Whole lines on both sides of the marker, and no blank line around it.
    assert head == "".join(lines[:3])
    assert tail == "".join(lines[-3:])
    assert f"[... {30 * 44} bytes omitted" in marker
    spool.delete()
    # No newline near the cut: cut where the budget ends, the marker on a line of its own.
    flat = Spool(tmp_path / "flat.out", 200)
    flat.write("y" * 1000)
    text, _ = flat.result()
    assert (
        text
        == "y" * 100
        + "\n"
        + "[... 800 bytes omitted; terminal/readOutput returns all of them ...]\n"
        + "y" * 100
    )
    flat.delete()
