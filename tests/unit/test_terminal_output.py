"""Output normalisation: incremental UTF-8 and CRLF, however the bytes are cut."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from lapce_bridge.terminal.output import OutputNormalizer


def feed_all(chunks: list[bytes]) -> str:
    norm = OutputNormalizer()
    return "".join(norm.feed(c) for c in chunks) + norm.flush()


def test_crlf_becomes_lf_and_lone_cr_stays() -> None:
    assert feed_all([b"a\r\nb\rc\r\n"]) == "a\nb\rc\n"


def test_crlf_split_across_reads() -> None:
    assert feed_all([b"a\r", b"\nb"]) == "a\nb"
    assert feed_all([b"a\r", b"", b"\n"]) == "a\n"
    assert feed_all([b"a\r"]) == "a\r"


def test_multibyte_split_is_not_replaced() -> None:
    euro = "€".encode()
    assert feed_all([b"x" + euro[:1], euro[1:2], euro[2:] + b"\r\n"]) == "x€\n"


def test_invalid_bytes_become_replacement_characters() -> None:
    assert feed_all([b"a\xffb"]) == "a\ufffdb"
    assert feed_all([b"a\xe2\x82"]) == "a\ufffd"  # truncated at the very end


@given(text=st.text(alphabet=st.sampled_from("a\r\n€🎉é"), max_size=60), data=st.data())
def test_any_split_gives_the_same_text(text: str, data: st.DataObject) -> None:
    raw = text.encode()
    cuts = sorted(data.draw(st.lists(st.integers(0, len(raw)), max_size=8)))
    chunks = [raw[a:b] for a, b in zip([0, *cuts], [*cuts, len(raw)], strict=True)]
    assert feed_all(chunks) == text.replace("\r\n", "\n")
