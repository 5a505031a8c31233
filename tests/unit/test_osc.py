"""The streaming shell-integration parser: every input whole, byte by byte, split at every offset,
plus Hypothesis properties for the invariants stated in the module docstring."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterable, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lapce_bridge.terminal.osc import (
    _ESCAPE,
    EscapeStripper,
    Event,
    Marker,
    OscParser,
    ParserStats,
    Text,
    strip_markers,
)

ESC = b"\x1b"
BEL = b"\x07"
ST = b"\x1b\\"


def osc(body: bytes, terminator: bytes = BEL) -> bytes:
    return b"\x1b]" + body + terminator


def coalesce(events: Iterable[Event]) -> list[Event]:
    out: list[Event] = []
    for event in events:
        if isinstance(event, Text) and out and isinstance(out[-1], Text):
            out[-1] = Text(out[-1].data + event.data)
        else:
            out.append(event)
    return out


def run_chunks(chunks: Iterable[bytes], **options: object) -> tuple[list[Event], ParserStats]:
    parser = OscParser(**options)  # type: ignore[arg-type]
    events: list[Event] = []
    for chunk in chunks:
        events.extend(parser.feed(chunk))
    events.extend(parser.flush())
    assert not [e for e in events if isinstance(e, Text) and not e.data], "empty Text emitted"
    return coalesce(events), parser.statistics()


def split_at(data: bytes, cuts: Sequence[int]) -> list[bytes]:
    bounds = [0, *sorted(cuts), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


def parse_all_ways(data: bytes, *, every_offset: bool = True, **options: object) -> list[Event]:
    """Parse whole, byte by byte and (if asked) split at every offset; all must agree."""
    expected = run_chunks([data], **options)
    assert run_chunks([bytes([b]) for b in data], **options) == expected, "byte by byte"
    if every_offset:
        for cut in range(len(data) + 1):
            assert run_chunks(split_at(data, [cut]), **options) == expected, f"split at {cut}"
    return expected[0]


def texts(events: Iterable[Event]) -> bytes:
    return b"".join(e.data for e in events if isinstance(e, Text))


def markers(events: Iterable[Event]) -> list[Marker]:
    return [e for e in events if isinstance(e, Marker)]


def kinds(events: Iterable[Event]) -> list[tuple[int, str]]:
    return [(m.osc, m.kind) for m in markers(events)]


# --- plain text -------------------------------------------------------------------------------


def test_a_marker_is_a_frozen_dataclass_with_its_defaults() -> None:
    # (Its __init__ is `quick_init`'s: the fields, their order and defaults, equality,
    # hashing and immutability must stay the dataclass's.)
    values: dict[str, object] = {"osc": 633, "kind": "E", "exit_code": 3, "command_line": "ls"}
    values.update(nonce="n", trusted=True, key="k", value="v", raw=b"raw")
    assert [f.name for f in dataclasses.fields(Marker)] == list(values)
    full = Marker(*values.values())  # type: ignore[arg-type]
    assert full == Marker(**values) == dataclasses.replace(Marker(633, "A"), **values)  # type: ignore[arg-type]
    assert hash(full) == hash(Marker(**values))  # type: ignore[arg-type]
    bare = dataclasses.astuple(Marker(633, "A"))
    assert bare == (633, "A", None, None, None, False, None, None, b"")
    with pytest.raises(dataclasses.FrozenInstanceError):
        full.kind = "D"  # type: ignore[misc]


def test_plain_text_passes_through_untouched() -> None:
    data = b"hello\r\nworld \x1b[31mred\x1b[0m\ttab\x00nul\x18can\x1asub"
    for strip_ansi in (False, True):
        events = parse_all_ways(data, strip_ansi=strip_ansi)
        expected = data if not strip_ansi else b"hello\r\nworld red\ttab\x00nul\x18can\x1asub"
        assert events == [Text(expected)]


def test_c1_bytes_inside_utf8_are_text() -> None:
    # "ŝ" is c5 9d (0x9d = C1 OSC), "✓" is e2 9c 93 (0x9c = C1 ST): never sequence bytes.
    data = "ŝ✓ ĝ\u015d".encode() + b"\x9d633;A\x07\x9c" + osc(b"633;A") + "œ".encode()
    events = parse_all_ways(data)
    assert events == [
        Text("ŝ✓ ĝ\u015d".encode() + b"\x9d633;A\x07\x9c"),
        Marker(633, "A", raw=osc(b"633;A")),
        Text("œ".encode()),
    ]


def test_invalid_utf8_text_passes_and_values_use_replacement() -> None:
    data = b"\xff\xfe bad" + osc(b"633;P;Cwd=/tmp/\xff\\xfe") + b"\xc3"
    events = parse_all_ways(data)
    assert texts(events) == b"\xff\xfe bad\xc3"
    (marker,) = markers(events)
    assert marker.value == "/tmp/\ufffd\ufffd"
    assert marker.raw == osc(b"633;P;Cwd=/tmp/\xff\\xfe")  # exact bytes stay available


# --- OSC 633 ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["A", "B", "C", "F", "G", "H", "I"])
def test_simple_633_markers(kind: str) -> None:
    seq = osc(b"633;" + kind.encode())
    events = parse_all_ways(b"x" + seq + b"y")
    assert events == [Text(b"x"), Marker(633, kind, raw=seq), Text(b"y")]


@pytest.mark.parametrize(
    ("body", "exit_code"),
    [(b"D;0", 0), (b"D;130", 130), (b"D;-1", -1), (b"D", None), (b"D;", None), (b"D;abc", None)],
)
def test_633_d_exit_code(body: bytes, exit_code: int | None) -> None:
    (marker,) = markers(parse_all_ways(osc(b"633;" + body)))
    assert (marker.kind, marker.exit_code) == ("D", exit_code)


def test_command_line_trusted_only_with_matching_nonce() -> None:
    seq = osc(b'633;E;git commit -m "a\\x3bb";n0nce')
    (good,) = markers(parse_all_ways(seq, nonce="n0nce"))
    assert good.trusted
    assert good.command_line == 'git commit -m "a;b"'
    assert good.nonce == "n0nce"
    (wrong,) = markers(parse_all_ways(seq, nonce="other"))
    assert not wrong.trusted
    assert wrong.command_line is None
    assert wrong.nonce == "n0nce"
    assert wrong.value == 'git commit -m "a;b"'  # as sent, for display only
    (unset,) = markers(parse_all_ways(seq))
    assert not unset.trusted
    assert unset.command_line is None


def test_spoofed_command_line_without_nonce_is_untrusted() -> None:
    (marker,) = markers(parse_all_ways(osc(b"633;E;rm -rf /"), nonce="secret"))
    assert (marker.trusted, marker.command_line, marker.nonce) == (False, None, None)
    assert marker.value == "rm -rf /"


def test_unescaped_semicolon_in_command_line_keeps_the_nonce_last() -> None:
    (marker,) = markers(parse_all_ways(osc(b"633;E;a;b;N"), nonce="N"))
    assert marker.trusted
    assert marker.command_line == "a;b"


def test_changing_the_nonce_re_evaluates_trust_of_a_repeated_marker() -> None:
    seq = osc(b"633;E;ls;N")
    parser = OscParser(nonce="N")
    assert markers(parser.feed(seq))[0].trusted
    parser.nonce = "M"
    assert not markers(parser.feed(seq))[0].trusted
    parser.nonce = "N"
    assert markers(parser.feed(seq))[0].command_line == "ls"


def test_multiline_command_line_escaped_and_raw_newline() -> None:
    escaped = osc(b"633;E;python -c 'a\\x0ab';N")
    raw_newline = osc(b"633;E;echo a\nb;N")
    (first, second) = markers(parse_all_ways(escaped + raw_newline, nonce="N"))
    assert first.command_line == "python -c 'a\nb'"
    # A raw newline is a C0 control inside the string: ignored, as xterm.js does, so VS Code
    # and we read the same command line. Only the escaped form carries a newline.
    assert second.command_line == "echo ab"
    assert second.raw == raw_newline


@pytest.mark.parametrize(
    ("body", "key", "value"),
    [
        (b"P;Cwd=/home/u/a\\x3bb", "Cwd", "/home/u/a;b"),
        (b"P;Cwd=C:\\\\Users\\\\u", "Cwd", "C:\\Users\\u"),
        (b"P;Cwd=/x\\\\x3b", "Cwd", "/x\\x3b"),  # one pass: "\\\\" then a literal "x3b"
        (b"P;Cwd=/a;b", "Cwd", "/a;b"),  # an unescaped ';' from a naive script is kept
        (b"P;Cwd=/a\\qb\\x4", "Cwd", "/a\\qb\\x4"),  # not escapes: kept literally
        (b"P;IsWindows=False", "IsWindows", "False"),
        (b"P;HasRichCommandDetection=True", "HasRichCommandDetection", "True"),
        (b"P;K=a=b", "K", "a=b"),
        (b"P;Flag", "Flag", None),
        (b"P;Cwd=/\xc3\xa9t\xc3\xa9", "Cwd", "/été"),
    ],
)
def test_633_properties(body: bytes, key: str, value: str | None) -> None:
    (marker,) = markers(parse_all_ways(osc(b"633;" + body)))
    assert (marker.osc, marker.kind, marker.key, marker.value) == (633, "P", key, value)


def test_env_family() -> None:
    data = (
        osc(b"633;EnvSingleStart;1;N")
        + osc(b"633;EnvSingleEntry;PATH;/bin\\x3a/usr/bin;N")
        + osc(b"633;EnvSingleEnd;N")
        + osc(b'633;EnvJson;{"A":"1"};X')
    )
    start, entry, end, json_env = markers(parse_all_ways(data, nonce="N"))
    assert (start.kind, start.value, start.nonce, start.trusted) == (
        "EnvSingleStart",
        "1",
        "N",
        True,
    )
    assert (entry.kind, entry.key, entry.value) == ("EnvSingleEntry", "PATH", "/bin:/usr/bin")
    assert (end.kind, end.nonce, end.trusted) == ("EnvSingleEnd", "N", True)
    assert (json_env.kind, json_env.value, json_env.trusted) == ("EnvJson", '{"A":"1"}', False)


@pytest.mark.parametrize(
    "body", [b"633", b"633;", b"633;Z", b"633;a", b"633;AB", b"633;P", b"633;EnvBogus;x", b"133;Z"]
)
def test_invalid_shell_integration_sequences_are_skipped_and_counted(body: bytes) -> None:
    data = b"a" + osc(body) + b"b" + osc(b"633;A")
    events, stats = run_chunks([data])
    assert events == [Text(b"ab"), Marker(633, "A", raw=osc(b"633;A"))]
    assert stats.invalid == 1
    assert stats.markers == 1
    parse_all_ways(data)


# --- OSC 133 and OSC 7 ------------------------------------------------------------------------


def test_osc_133() -> None:
    data = osc(b"133;A") + b"$ " + osc(b"133;B") + osc(b"133;C") + b"out\n"
    data += osc(b"133;D;2") + osc(b"133;D") + osc(b"133;A;cl=m;aid=7") + osc(b"133;D;0;aid=7")
    events = parse_all_ways(data)
    assert kinds(events) == [(133, k) for k in "ABCDDAD"]
    assert [m.exit_code for m in markers(events) if m.kind == "D"] == [2, None, 0]
    assert texts(events) == b"$ out\n"


@pytest.mark.parametrize(
    ("url", "path"),
    [
        (b"file://host/home/u/my%20dir/%C3%A9", "/home/u/my dir/é"),
        (b"file:///tmp/a%3Bb", "/tmp/a;b"),
        (b"file://h/%ff", "/\ufffd"),
        (b"kitty-shell-cwd://host/tmp/100%", "/tmp/100%"),
        (b"/plain/path", "/plain/path"),
    ],
)
def test_osc_7_cwd(url: bytes, path: str) -> None:
    (marker,) = markers(parse_all_ways(osc(b"7;" + url)))
    assert (marker.osc, marker.kind, marker.key, marker.value) == (7, "cwd", "Cwd", path)


@pytest.mark.parametrize("url", [b"file://hostonly", b"http://x/y", b"", b"relative/path"])
def test_osc_7_garbage_is_invalid(url: bytes) -> None:
    events, stats = run_chunks([osc(b"7;" + url) + b"t"])
    assert events == [Text(b"t")]
    assert stats.invalid == 1


# --- other sequences ---------------------------------------------------------------------------

TITLE = osc(b"0;my title")
TITLE_ST = osc(b"2;other", ST)
LINK = osc(b"8;;https://example.com/a;b") + b"link" + osc(b"8;;")
DCS = b"\x1bP1$r0m\x1b\\"
APC = b"\x1b_Gf=100;AAAA\x07still\x1b\\"


def test_other_sequences_pass_through_unchanged() -> None:
    data = TITLE + b"a" + TITLE_ST + LINK + DCS + b"\x1b(B\x1b7\x1b[?25l" + osc(b"633;C") + b"z"
    before = data[: -len(osc(b"633;C")) - 1]
    events = parse_all_ways(data)
    assert events == [Text(before), Marker(633, "C", raw=osc(b"633;C")), Text(b"z")]


def test_strip_ansi_removes_every_escape_sequence() -> None:
    data = (
        TITLE + b"a" + TITLE_ST + LINK + DCS + APC + b"\x1b(B\x1b)0\x1b7\x1b8\x1b=\x1b[?25l"
        b"\x1b[38;2;1;2;3mrgb\x1b[0m\x1b[2K\x1b[1 q\x1bX sos \x1b\\\x1b^pm\x1b\\" + osc(b"633;C")
    )
    events = parse_all_ways(data, strip_ansi=True)
    assert events == [Text(b"alinkrgb"), Marker(633, "C", raw=osc(b"633;C"))]


def test_strip_ansi_csi_split_across_feeds() -> None:
    data = b"\x1b[01;34mdir\x1b[0m \x1b[38;5;196mred\x1b[m\x1b"
    assert parse_all_ways(data, strip_ansi=True) == [Text(b"dir red")]


@pytest.mark.parametrize("terminator", [BEL, ST])
def test_terminators(terminator: bytes) -> None:
    seq = osc(b"633;D;7", terminator)
    events = parse_all_ways(b"a" + seq + b"b")
    assert events == [Text(b"a"), Marker(633, "D", exit_code=7, raw=seq), Text(b"b")]


# --- recovery ---------------------------------------------------------------------------------


def test_unterminated_osc_comes_out_as_text_at_flush() -> None:
    data = b"out" + b"\x1b]633;D;0"
    events, stats = run_chunks([data])
    assert events == [Text(data)]
    assert stats.markers == 0
    assert parse_all_ways(data, strip_ansi=True) == [Text(b"out633;D;0")]
    parse_all_ways(data)


def test_trailing_esc_is_held_until_flush() -> None:
    parser = OscParser()
    assert parser.feed(b"ab\x1b") == [Text(b"ab")]
    assert parser.flush() == [Text(b"\x1b")]
    assert parser.flush() == []


@pytest.mark.parametrize("cancel", [b"\x18", b"\x1a"])
def test_can_or_sub_aborts_the_sequence(cancel: bytes) -> None:
    data = b"a" + b"\x1b]633;E;secret" + cancel + b"b" + osc(b"633;A")
    events, stats = run_chunks([data])
    assert events == [Text(b"ab"), Marker(633, "A", raw=osc(b"633;A"))]
    assert stats.aborted == 1
    parse_all_ways(data)
    parse_all_ways(data, strip_ansi=True)


def test_esc_inside_osc_aborts_it_and_starts_the_next_sequence() -> None:
    data = b"\x1b]0;broken title" + osc(b"633;D;1") + b"\x1b]633;B\x1b[31mred"
    events, stats = run_chunks([data])
    assert events == [Marker(633, "D", exit_code=1, raw=osc(b"633;D;1")), Text(b"\x1b[31mred")]
    assert stats.aborted == 2
    assert parse_all_ways(data) == events
    assert kinds(parse_all_ways(data, strip_ansi=True)) == [(633, "D")]


def test_huge_osc_overflows_to_text_and_later_marker_survives() -> None:
    payload = b"0;" + b"x" * 200_000
    data = b"\x1b]" + payload + BEL + b"after" + osc(b"633;D;0")
    expected = [
        Text(data[: -len(osc(b"633;D;0"))]),
        Marker(633, "D", exit_code=0, raw=osc(b"633;D;0")),
    ]
    for chunks in ([data], [bytes([b]) for b in data], split_at(data, [70_000, 130_000])):
        events, stats = run_chunks(chunks)
        assert events == expected
        assert stats.overflows == 1
    stripped, _ = run_chunks([data], strip_ansi=True)
    assert stripped == [Text(payload + BEL + b"after"), expected[1]]


def test_newline_inside_osc_is_ignored_and_bounded() -> None:
    seq = osc(b"633;P;Cwd=/a\nb")
    (marker,) = markers(parse_all_ways(seq))
    assert marker.value == "/ab"
    assert marker.raw == seq
    long_seq = b"\x1b]633;P;Cwd=" + b"line\n" * 10 + BEL
    events = parse_all_ways(long_seq + osc(b"633;A"), max_buffer=32)
    assert events == [Text(long_seq), Marker(633, "A", raw=osc(b"633;A"))]


C0_IGNORED = [bytes([b]) for b in range(0x20) if b not in (0x07, 0x18, 0x1A, 0x1B)]


@pytest.mark.parametrize("control", C0_IGNORED, ids=[f"0x{c[0]:02x}" for c in C0_IGNORED])
def test_c0_controls_inside_an_osc_string_are_ignored(control: bytes) -> None:
    # As DEC's parser and xterm.js: the control neither ends the string nor joins its value.
    a = b"\x1b]633;A" + control + b"\r\n" + BEL
    d = b"\x1b]633;D;" + control + b"1" + control + BEL
    cwd = osc(b"7;file://host/tmp/" + control + b"x")
    e = osc(b"633;E;l" + control + b"s;N")
    events = parse_all_ways(b"before" + a + d + cwd + e + b"after", nonce="N")
    assert texts(events) == b"beforeafter"
    assert events[1:-1] == [
        Marker(633, "A", raw=a),
        Marker(633, "D", exit_code=1, raw=d),
        Marker(7, "cwd", key="Cwd", value="/tmp/x", raw=cwd),
        Marker(633, "E", command_line="ls", nonce="N", trusted=True, value="ls", raw=e),
    ]
    stripped = parse_all_ways(b"before" + a + d + cwd + e + b"after", strip_ansi=True, nonce="N")
    assert markers(stripped) == markers(events)
    assert parse_all_ways(osc(b"633;A" + control)) == [
        Marker(633, "A", raw=osc(b"633;A" + control))
    ]


def test_c0_controls_inside_other_osc_strings_stay_untouched() -> None:
    title = osc(b"0;a\r\nb")
    assert parse_all_ways(b"x" + title + b"y") == [Text(b"x" + title + b"y")]
    assert parse_all_ways(b"x" + title + b"y", strip_ansi=True) == [Text(b"xy")]


@settings(max_examples=200, deadline=None)
@given(
    body=st.sampled_from([b"633;A", b"633;D;0", b"633;P;Cwd=/a\\x3bb", b"133;D;2", b"7;/t"]),
    controls=st.lists(st.tuples(st.integers(0, 40), st.sampled_from(C0_IGNORED)), max_size=6),
)
def test_c0_controls_anywhere_in_a_marker_decode_the_same(
    body: bytes, controls: list[tuple[int, bytes]]
) -> None:
    noisy = bytearray(body)
    for at, control in controls:
        noisy[min(at, len(noisy)) : min(at, len(noisy))] = control
    (clean,) = markers(run_chunks([osc(body)])[0])
    events, stats = run_chunks([osc(bytes(noisy))])
    (found,) = markers(events)
    assert found == dataclasses.replace(clean, raw=osc(bytes(noisy)))
    assert stats.invalid == 0


def test_overflow_bound_is_on_sequence_length_not_chunking() -> None:
    fits = osc(b"633;D;1")  # 10 bytes
    assert kinds(parse_all_ways(fits, max_buffer=10)) == [(633, "D")]
    assert parse_all_ways(fits, max_buffer=9) == [Text(fits)]
    fits_st = osc(b"633;D;1", ST)  # 11 bytes
    assert kinds(parse_all_ways(fits_st, max_buffer=11)) == [(633, "D")]
    assert parse_all_ways(fits_st, max_buffer=10) == [Text(fits_st)]


@pytest.mark.parametrize("chunk", [1, 7, 64])
def test_pending_bytes_never_exceed_max_buffer(chunk: int) -> None:
    # Memory stays bounded: overflow is decided when the bound is reached, not at a terminator
    # that may never come.
    parser = OscParser(max_buffer=64)
    data = b"\x1b]0;" + b"z" * 60  # exactly 64 bytes, still undecided
    out: list[Event] = []
    for piece in split_at(data, range(chunk, len(data), chunk)):
        out.extend(parser.feed(piece))
    assert texts(out) == data
    assert parser.statistics().overflows == 1
    assert parser.flush() == []


def test_byte_by_byte_long_sequence_is_buffered_linearly() -> None:
    parser = OscParser(max_buffer=1 << 20)
    data = osc(b"633;P;Cwd=/" + b"d" * 300_000)
    events: list[Event] = []
    for b in data:
        events.extend(parser.feed(bytes([b])))
    assert markers(events)[0].value == "/" + "d" * 300_000


def test_passthrough_parses_nothing_and_releases_pending_bytes() -> None:
    parser = OscParser()
    assert parser.feed(b"a\x1b]633;") == [Text(b"a")]
    parser.passthrough = True
    assert parser.feed(b"A\x07" + osc(b"633;B")) == [Text(b"\x1b]633;A\x07" + osc(b"633;B"))]
    parser.passthrough = False
    assert kinds(parser.feed(osc(b"633;C"))) == [(633, "C")]


def test_reset_discards_pending_sequence() -> None:
    parser = OscParser()
    parser.feed(b"\x1b]633;E;partial")
    parser.reset()
    assert parser.feed(b"x") == [Text(b"x")]
    assert parser.flush() == []


def test_statistics() -> None:
    parser = OscParser(max_buffer=16)
    parser.feed(osc(b"633;A") + osc(b"633;Q") + b"\x1b]0;t\x18" + osc(b"0;" + b"y" * 20))
    assert parser.statistics() == ParserStats(
        bytes_fed=47, markers=1, overflows=1, aborted=1, invalid=1
    )


def test_settable_strip_ansi_and_bytes_like_input() -> None:
    parser = OscParser()
    assert parser.feed(bytearray(b"\x1b[1mA")) == [Text(b"\x1b[1mA")]
    parser.strip_ansi = True
    assert parser.feed(memoryview(b"\x1b[1mB")) == [Text(b"B")]


def test_max_buffer_must_hold_a_sequence() -> None:
    with pytest.raises(ValueError, match="max_buffer"):
        OscParser(max_buffer=2)


def test_strip_markers() -> None:
    data = b"a" + osc(b"633;C") + b"\x1b[1mb" + osc(b"633;D;0") + osc(b"0;t") + b"\x1b]633"
    assert strip_markers(data) == b"a\x1b[1mb" + osc(b"0;t") + b"\x1b]633"
    assert strip_markers(data, strip_ansi=True) == b"ab633"


# --- properties -------------------------------------------------------------------------------

PIECES = [
    b"\x1b", b"]", b"633;", b"133;", b"7;", b"A", b"D;0", b"E;ls;N", b"P;Cwd=/a\\x3b", b"\x07",
    b"\x1b\\", b"\x18", b"\x1a", b"[", b"31m", b"\x1bP", b"\x1b_", b"(B", b"\n", b"\xc5\x9d",
    b"\x9c", b"x", b"0;title", b"\\\\", b"%20", b"file:///t", b"\r", b"\x00", b"\t",
]  # fmt: skip
streams = st.one_of(
    st.lists(st.sampled_from(PIECES), max_size=40).map(b"".join),
    st.binary(max_size=200),
)
options = st.fixed_dictionaries(
    {
        "strip_ansi": st.booleans(),
        "max_buffer": st.sampled_from([8, 16, 64, 64 * 1024]),
        "nonce": st.sampled_from([None, "N"]),
    }
)


@settings(max_examples=200, deadline=None)
@given(data=streams, opts=options, cuts=st.lists(st.integers(0, 200), max_size=8))
def test_any_split_gives_the_same_events_and_statistics(
    data: bytes, opts: dict[str, object], cuts: list[int]
) -> None:
    cuts = [c for c in cuts if c <= len(data)]
    assert run_chunks(split_at(data, cuts), **opts) == run_chunks([data], **opts)


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=300).map(lambda b: b.replace(ESC, b"")), opts=options)
def test_text_without_esc_is_never_changed(data: bytes, opts: dict[str, object]) -> None:
    events, _ = run_chunks([data[:7], data[7:]], **opts)
    assert events == ([Text(data)] if data else [])


@settings(max_examples=200, deadline=None)
@given(data=streams, max_buffer=st.sampled_from([8, 64, 64 * 1024]))
def test_nothing_lost_when_nothing_aborted_or_invalid(data: bytes, max_buffer: int) -> None:
    events, stats = run_chunks([data], max_buffer=max_buffer)
    if stats.aborted == 0 and stats.invalid == 0:
        rebuilt = b"".join(e.data if isinstance(e, Text) else e.raw for e in events)
        assert rebuilt == data


@settings(max_examples=200, deadline=None)
@given(data=streams, max_buffer=st.sampled_from([8, 64, 64 * 1024]))
def test_strip_mode_leaves_no_esc_and_finds_the_same_markers(data: bytes, max_buffer: int) -> None:
    plain, plain_stats = run_chunks([data], max_buffer=max_buffer)
    stripped, stripped_stats = run_chunks([data], max_buffer=max_buffer, strip_ansi=True)
    assert all(ESC not in e.data for e in stripped if isinstance(e, Text))
    assert markers(stripped) == markers(plain)
    assert stripped_stats.markers == plain_stats.markers


# --- the escape stripper's fast path ----------------------------------------------------------

DENSE = [
    b"\x1b[0m", b"\x1b[01;34m", b"\x1b[00m", b"\x1b[1;31m", b"\x1b(B", b"\x1b7", b"\x1b[K",
    b"\x1b", b"\x1b[", b"\x1b[1", b"\x1b[12;3", b"m", b"[0m", b"x", b"ab", b"\x00", b";",
    b"\x1b]", b"\x1bP", b"\x1b\\", b"\x07", b"(", b"\x1b[?25l", b"\x1b[2 q",
]  # fmt: skip
dense_runs = st.lists(st.sampled_from(DENSE), max_size=60).map(b"".join)


class RegexOnly(EscapeStripper):
    """The reference: every run through the regex, nothing learned."""

    def __call__(self, text: bytes) -> bytes:
        return _ESCAPE.sub(b"", text)

    def reduce(self, text: bytes) -> bytes | None:
        return None


@settings(max_examples=300, deadline=None)
@given(
    runs=st.lists(dense_runs, min_size=1, max_size=12),
    max_known=st.sampled_from([1, 2, 8]),
    patience=st.sampled_from([0, 1, 8]),
)
def test_the_stripper_answers_what_the_regex_does(
    runs: list[bytes], max_known: int, patience: int
) -> None:
    stripper = EscapeStripper(max_known=max_known, patience=patience, rest=2)
    for run in runs * 3:  # again and again: with what earlier runs taught it
        assert stripper(run) == _ESCAPE.sub(b"", run)
        reduced = stripper.reduce(run)
        if reduced is not None:
            assert stripper.finish(reduced) == _ESCAPE.sub(b"", run)


def test_the_stripper_learns_what_repeats_and_replaces_it() -> None:
    stripper = EscapeStripper()
    run = b"\x1b[0m\x1b[01;34mdir\x1b[0m  \x1b[0m\x1b[01;32mexe\x1b[0m\n" * 20
    assert stripper(run) == b"dir  exe\n" * 20  # the regex's answer, and learned from it
    reduced = stripper.reduce(run)
    assert reduced is not None
    assert b"\x1b" not in reduced  # every escape replaced without the regex
    assert stripper.finish(reduced) == b"dir  exe\n" * 20
    sparse = b"prose with one \x1b[0m escape in a line of a hundred bytes or so, as a log has it\n"
    assert stripper(sparse * 4) == _ESCAPE.sub(b"", sparse * 4)  # seen to be sparse now
    assert stripper.reduce(sparse * 4) is None  # few escapes: the regex is cheaper
    assert stripper.reduce(b"\x00" + run) is None  # NUL in the text: no placeholder to use


def test_a_stream_that_never_repeats_stops_the_learning_for_a_while() -> None:
    stripper = EscapeStripper(patience=2, rest=3)
    moves = [b"".join(b"\x1b[%d;%dHx" % (row, col) for col in range(80)) for row in range(12)]
    learned = []
    for run in moves:
        assert stripper(run) == b"x" * 80
        learned.append(len(stripper.known))
    # Learned from the first runs; three poor runs in a row (patience 2): forgotten, and
    # nothing learned for the next three; then it tries again.
    assert learned[:3] == [8, 8, 0]
    assert learned[3:6] == [0, 0, 0]
    assert learned[6] == 8


def test_introducers_are_never_learned() -> None:
    stripper = EscapeStripper()
    run = b"\x1b]\x1bP\x1bX\x1b^\x1b_\x1b[0mx" * 40
    assert stripper(run) == _ESCAPE.sub(b"", run)
    reduced = stripper.reduce(run)
    assert reduced is not None
    assert reduced.count(b"\x1b") == 5 * 40


@settings(max_examples=200, deadline=None)
@given(
    data=st.lists(st.sampled_from([*DENSE, *PIECES]), max_size=120).map(b"".join),
    cuts=st.lists(st.integers(0, 600), max_size=10),
    max_buffer=st.sampled_from([16, 64 * 1024]),
)
def test_strip_mode_with_the_fast_path_gives_the_regex_only_events(
    data: bytes, cuts: list[int], max_buffer: int
) -> None:
    chunks = split_at(data, [c for c in cuts if c <= len(data)])
    reference = OscParser(strip_ansi=True, max_buffer=max_buffer, nonce="N")
    reference._strip = RegexOnly()
    events: list[Event] = []
    for chunk in chunks * 2:  # twice: the second time with what the first taught it
        events.extend(reference.feed(chunk))
    events.extend(reference.flush())
    fast = run_chunks(chunks * 2, strip_ansi=True, max_buffer=max_buffer, nonce="N")
    assert fast[0] == coalesce(events)
    assert fast[1] == reference.statistics()


def test_colour_dense_output_goes_through_the_fast_path() -> None:
    listing = b"\x1b[0m\x1b[01;34msrc\x1b[0m  \x1b[0m\x1b[01;32mrun.sh\x1b[0m\r\n" * 400
    parser = OscParser(strip_ansi=True)
    out: list[Event] = []
    for i in range(0, len(listing), 4096):
        out.extend(parser.feed(listing[i : i + 4096]))
    out.extend(parser.feed(osc(b"633;D;0")))  # a marker after it is still found
    out.extend(parser.flush())
    assert texts(out) == b"src  run.sh\r\n" * 400
    assert kinds(out) == [(633, "D")]


# What zsh prints for `echo test` (its marks, zle's escapes, an open escape at the end).
ZSH_CHUNK = (
    b"\x1b]633;E;echo test;N\x07\x1b]633;P;LbZle=N\x07echo test\x1b[?1l\x1b>\x1b[?2004l\r\r\n"
    b"\x1b]633;P;LbEdit\x07\x1b]633;C\x07test\r\n\x1b]633;P;Cwd=/h\x07\x1b]633;D;0;N\x07"
    b"\x1b[0m\x1b[J\x1b]633;A\x07vm# \x1b]633;B\x07\x1b[K\x1b]0;title\x07\x1b["
)


class _CountingParser(OscParser):
    parsed = 0

    def _parse(self, data: bytes, resume: int, *, final: bool) -> list[Event]:
        self.parsed += 1
        return super()._parse(data, resume, final=final)


@pytest.mark.parametrize("strip", [True, False])
def test_a_chunk_of_whole_marks_takes_the_split_and_gives_the_same_events(strip: bool) -> None:
    stream = ZSH_CHUNK + b"K"  # the escape left open ends in the next chunk
    one_by_one = run_chunks(split_at(stream, list(range(len(stream)))), strip_ansi=strip)
    parser = _CountingParser(strip_ansi=strip)
    events = parser.feed(ZSH_CHUNK)
    assert parser.parsed == 0  # the split alone answered
    events += parser.feed(b"K") + parser.flush()
    assert (coalesce(events), parser.statistics()) == one_by_one
    assert [m.kind for m in events if isinstance(m, Marker)] == list("EPPCPDAB")


def test_a_repeated_chunk_gives_the_same_events_and_statistics_again() -> None:
    # An integrated shell writes the same chunks at every command (its prompt, the redraw):
    # the second time the answer is the first one's, counted as if parsed.
    prompt = osc(b"633;A") + b"\x1b[1m$ \x1b[0m" + osc(b"633;B")
    parser = OscParser(strip_ansi=True)
    first = parser.feed(prompt)
    assert first == [
        Marker(633, "A", raw=osc(b"633;A")),
        Text(b"$ "),
        Marker(633, "B", raw=osc(b"633;B")),
    ]
    assert parser.feed(prompt) == first
    assert parser.statistics().markers == 4
    # What leaves a sequence open, or aborts or drops one, is parsed again each time.
    opened = b"x" + osc(b"633;P;Cwd=/a", b"")
    assert parser.feed(opened) == [Text(b"x")]
    assert parser.feed(b"b" + BEL) == [
        Marker(633, "P", key="Cwd", value="/ab", raw=osc(b"633;P;Cwd=/ab"))
    ]
    assert parser.feed(opened) == [Text(b"x")]
    assert markers(parser.feed(b"c" + BEL))[0].value == "/ac"
    aborted = osc(b"633;A", b"\x18") + b"y"
    for count in (1, 2):
        assert parser.feed(aborted) == [Text(b"y")]
        assert parser.statistics().aborted == count
    invalid = osc(b"633;Q") + b"z"
    for count in (1, 2):
        assert parser.feed(invalid) == [Text(b"z")]
        assert parser.statistics().invalid == count
