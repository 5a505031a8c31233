"""The LSP framing codec: frames whole, byte by byte, split anywhere; faults and resync."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lapce_bridge.core.errors import MessageTooLarge, ParseError
from lapce_bridge.ipc.framing import Event, Frame, FrameDecoder, FrameError, encode


def feed_all(decoder: FrameDecoder, chunks: list[bytes]) -> list[Event]:
    events: list[Event] = []
    for chunk in chunks:
        events.extend(decoder.feed(chunk))
    return events


def bodies(events: list[Event]) -> list[bytes | str]:
    """Frames as their bodies, errors as their class name (plus id when fatal/known)."""
    out: list[bytes | str] = []
    for ev in events:
        if isinstance(ev, Frame):
            out.append(ev.body)
        else:
            out.append(f"{type(ev.error).__name__}:{ev.request_id}:{ev.fatal}")
    return out


def splits(data: bytes) -> list[list[bytes]]:
    """The input whole, byte by byte, and split in two at every offset."""
    ways = [[data], [data[i : i + 1] for i in range(len(data))]]
    ways.extend([data[:i], data[i:]] for i in range(1, len(data)))
    return ways


STREAM = (
    encode(b'{"jsonrpc":"2.0","id":1,"method":"ping"}')
    + b"Content-Type: application/vscode-jsonrpc; charset=utf-8\r\n"
    + b"content-length: 2\r\n\r\n{}"
    + encode(b"")
    + b"CONTENT-LENGTH:3\r\n\r\n[1]"
)
EXPECTED: list[bytes | str] = [b'{"jsonrpc":"2.0","id":1,"method":"ping"}', b"{}", b"", b"[1]"]


def test_encode_is_lsp_framing() -> None:
    assert encode(b'{"a":1}') == b'Content-Length: 7\r\n\r\n{"a":1}'


@pytest.mark.parametrize("chunks", splits(STREAM))
def test_frames_do_not_depend_on_splits(chunks: list[bytes]) -> None:
    decoder = FrameDecoder()
    assert bodies(feed_all(decoder, chunks)) == EXPECTED
    assert not decoder.in_frame
    assert decoder.buffered == 0
    assert decoder.frames == 4


def test_partial_frame_is_reported_in_frame() -> None:
    decoder = FrameDecoder()
    assert decoder.feed(b"Content-Len") == []
    assert decoder.in_frame
    assert decoder.feed(b"gth: 4\r\n\r\nab") == []
    assert decoder.in_frame
    assert decoder.buffered == 2
    assert bodies(decoder.feed(b"cd")) == [b"abcd"]
    assert not decoder.in_frame


@pytest.mark.parametrize(
    ("header", "why"),
    [
        (b"Content-Type: x\r\n\r\n", "without Content-Length"),
        (b"Content-Length: abc\r\n\r\n", "bad Content-Length"),
        (b"Content-Length: -5\r\n\r\n", "bad Content-Length"),
        (b"Content-Length: 5\r\nContent-Length: 6\r\n\r\n", "conflicting"),
        (b"Content-Length: 99999999999999999999999\r\n\r\n", "bad Content-Length"),
        (b"\r\n\r\n", "malformed header line"),
    ],
)
def test_malformed_header_is_one_error_then_resync(header: bytes, why: str) -> None:
    stream = header + b"junk {\x00\xff" + encode(b'{"ok":1}')
    for chunks in splits(stream):
        events = feed_all(FrameDecoder(), chunks)
        assert len(events) == 2, chunks
        first, second = events
        assert isinstance(first, FrameError)
        assert isinstance(first.error, ParseError)
        assert why in str(first.error)
        assert not first.fatal
        assert second == Frame(b'{"ok":1}')


def test_resync_skips_to_the_next_content_length_even_mid_line() -> None:
    decoder = FrameDecoder()
    events = decoder.feed(b"hello\r\n\r\nxxContent-Length: 2\r\n\r\n{}")
    assert bodies(events) == ["ParseError:None:False", b"{}"]


def test_stray_bytes_glued_to_a_header_do_not_lose_the_frame() -> None:
    for stream in (
        b"stray print" + encode(b"[1]"),
        b"stray line\r\n" + encode(b"[1]"),
    ):
        for chunks in splits(stream):
            events = feed_all(FrameDecoder(), chunks)
            assert bodies(events) == ["ParseError:None:False", b"[1]"], chunks


def test_resync_does_not_match_the_bad_block_itself() -> None:
    # The malformed block starts with "Content-Length:"; resync must skip past it.
    decoder = FrameDecoder()
    events = decoder.feed(b"Content-Length: x\r\n\r\nContent-Length: 1\r\n\r\n7")
    assert bodies(events) == ["ParseError:None:False", b"7"]


def test_garbage_without_any_header_keeps_a_bounded_buffer_and_one_error() -> None:
    decoder = FrameDecoder(max_header_bytes=64)
    events: list[Event] = []
    for _ in range(1000):
        events += decoder.feed(b"z" * 100)
        assert decoder.buffered <= 64
    assert bodies(events) == ["ParseError:None:False"]
    assert not decoder.in_frame  # garbage already reported: no partial-frame timer for it
    assert bodies(decoder.feed(encode(b"[]"))) == [b"[]"]


def test_header_too_long_without_terminator() -> None:
    decoder = FrameDecoder(max_header_bytes=32)
    events = decoder.feed(b"Content-Length: 2\r\nX-Pad: " + b"p" * 40 + b"\r\n\r\n{}")
    assert isinstance(events[0], FrameError)
    assert "too long" in str(events[0].error)
    assert events[1:] == []  # the "{}" was part of the discarded block


def test_header_at_exactly_the_limit_is_accepted() -> None:
    header = b"Content-Length: 2\r\n\r\n"
    decoder = FrameDecoder(max_header_bytes=len(header))
    assert bodies(decoder.feed(header + b"{}")) == [b"{}"]


@pytest.mark.parametrize(
    ("body", "expected_id"),
    [
        (b'{"jsonrpc":"2.0","id":42,"method":"fs/write","params":{"c":"', 42),
        (b'{"jsonrpc":"2.0","id": "req-7","method":"x","params":"', "req-7"),
        (b'{"method":"x","id":-3,', -3),
        (b'{"jsonrpc":"2.0","method":"x","params":{"content":"', None),
        (b'{"id":1.5,"method":"x"', None),
        (b'{"id":"a\\"b","method":"x"', None),
    ],
)
def test_oversize_frame_reports_the_id_from_the_first_bytes(
    body: bytes, expected_id: int | str | None
) -> None:
    limit = 100
    size = 150
    full = body + b"x" * (size - len(body))
    stream = b"Content-Length: %d\r\n\r\n" % size + full + encode(b'{"next":1}')
    for chunks in [*splits(stream)[:3], [stream]]:
        decoder = FrameDecoder(limit, peek_bytes=64)
        events = feed_all(decoder, chunks)
        assert len(events) == 2
        error, after = events
        assert isinstance(error, FrameError)
        assert isinstance(error.error, MessageTooLarge)
        assert error.error.code == -32007
        assert error.request_id == expected_id
        assert error.error.data == {"size": size, "limit": limit}
        assert not error.fatal  # skippable: the connection stays usable
        assert after == Frame(b'{"next":1}')


def test_oversize_is_detected_before_the_body_arrives() -> None:
    decoder = FrameDecoder(1000, peek_bytes=16)
    events = decoder.feed(b'Content-Length: 5000\r\n\r\n{"id":9,"method":"a"')
    assert len(events) == 1
    assert isinstance(events[0], FrameError)
    assert events[0].request_id == 9
    # The rest of the body is discarded without being held.
    assert decoder.feed(b"y" * 2000) == []
    assert decoder.buffered <= 5000


def test_short_oversize_body_waits_only_for_its_own_length() -> None:
    decoder = FrameDecoder(4, peek_bytes=256)
    events = decoder.feed(b'Content-Length: 8\r\n\r\n{"id":1}')
    assert bodies(events) == ["MessageTooLarge:1:False"]


def test_oversize_beyond_skip_limit_is_fatal_and_closes_the_decoder() -> None:
    decoder = FrameDecoder(100, max_skip_bytes=1000, peek_bytes=8)
    events = decoder.feed(b'Content-Length: 5000\r\n\r\n{"id":5,')
    assert bodies(events) == ["MessageTooLarge:5:True"]
    assert decoder.closed
    assert decoder.feed(encode(b"{}")) == []


def test_limits_are_checked() -> None:
    with pytest.raises(ValueError):
        FrameDecoder(0)
    with pytest.raises(ValueError):
        FrameDecoder(10, max_header_bytes=4)


# -- properties ---------------------------------------------------------------------------
payloads = st.lists(st.binary(max_size=300), max_size=8)


@settings(max_examples=200, deadline=None)
@given(payloads, st.data())
def test_random_splits_give_the_same_frames(items: list[bytes], data: st.DataObject) -> None:
    stream = b"".join(encode(p) for p in items)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=20)))
    chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    decoder = FrameDecoder(max_message_bytes=400)
    assert bodies(feed_all(decoder, chunks)) == list(items)


noise = st.one_of(
    st.binary(max_size=200),
    st.sampled_from(
        [b"Content-Length: ", b"\r\n", b"\r\n\r\n", b"content-length:5", b"Content-Type: x"]
    ),
    st.builds(encode, st.binary(max_size=50)),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(noise, max_size=12), st.data())
def test_random_bytes_never_raise_and_split_invariant(
    parts: list[bytes], data: st.DataObject
) -> None:
    stream = b"".join(parts)
    whole = bodies(FrameDecoder(64, max_header_bytes=48, peek_bytes=8).feed(stream))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    decoder = FrameDecoder(64, max_header_bytes=48, peek_bytes=8)
    assert bodies(feed_all(decoder, chunks)) == whole
    assert decoder.buffered <= 64 + 48 + 400  # bounded: at most a header and a body
