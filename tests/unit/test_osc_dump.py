"""``osc-dump``: markers as JSON lines or human-readable lines, or the stream with them stripped."""

from __future__ import annotations

import io

import orjson
import pytest

from lapce_bridge.terminal.osc import Marker, strip_markers
from lapce_bridge.terminal.osc_dump import marker_to_dict, run


def osc(body: bytes) -> bytes:
    return b"\x1b]" + body + b"\x07"


CAPTURE = (
    osc(b"633;A")
    + b"$ "
    + osc(b"633;B")
    + osc(b"633;E;echo hi\\x3b ls;N")
    + osc(b"633;C")
    + b"\x1b[1mhi\x1b[0m\r\n"
    + osc(b"0;title")
    + osc(b"633;D;0")
    + osc(b"633;P;Cwd=/tmp/a b")
    + osc(b"7;file://h/srv/%C3%A9")
    + osc(b"133;D;3")
    + osc(b"633;Bogus")
    + b"tail\x1b]633;D"
)


def dump(*, json_lines: bool, strip: bool = False, chunk_size: int = 65536, **kw: str) -> bytes:
    out = io.BytesIO()
    rc = run(
        io.BytesIO(CAPTURE), out, json_lines=json_lines, strip=strip, chunk_size=chunk_size, **kw
    )
    assert rc == 0
    return out.getvalue()


def test_json_lines_one_object_per_marker_nulls_omitted() -> None:
    lines = [orjson.loads(line) for line in dump(json_lines=True).splitlines()]
    assert lines == [
        {"osc": 633, "kind": "A"},
        {"osc": 633, "kind": "B"},
        {
            "osc": 633,
            "kind": "E",
            "commandLine": "echo hi; ls",  # the agreed key; untrusted without the nonce
            "nonce": "N",
            "trusted": False,
            "value": "echo hi; ls",
        },
        {"osc": 633, "kind": "C"},
        {"osc": 633, "kind": "D", "exitCode": 0},
        {"osc": 633, "kind": "P", "key": "Cwd", "value": "/tmp/a b"},
        {"osc": 7, "kind": "cwd", "key": "Cwd", "value": "/srv/é"},
        {"osc": 133, "kind": "D", "exitCode": 3},
    ]


def test_json_with_nonce_marks_command_line_trusted() -> None:
    lines = [orjson.loads(line) for line in dump(json_lines=True, nonce="N").splitlines()]
    (e,) = [line for line in lines if line["kind"] == "E"]
    assert e == {
        "osc": 633,
        "kind": "E",
        "commandLine": "echo hi; ls",
        "nonce": "N",
        "trusted": True,
        "value": "echo hi; ls",
    }


def test_human_readable_lines_and_summary() -> None:
    lines = dump(json_lines=False).decode().splitlines()
    assert lines[0] == "633 A"
    assert lines[2] == (
        '633 E commandLine="echo hi; ls" nonce="N" trusted=false value="echo hi; ls"'
    )
    assert lines[4] == "633 D exitCode=0"
    assert lines[5] == '633 P key="Cwd" value="/tmp/a b"'
    assert lines[-1] == (f"# bytes={len(CAPTURE)} markers=8 overflows=0 aborted=0 invalid=1")
    assert len(lines) == 9


def test_strip_writes_input_without_shell_integration() -> None:
    stripped = dump(json_lines=False, strip=True)
    assert stripped == strip_markers(CAPTURE)
    assert stripped == b"$ \x1b[1mhi\x1b[0m\r\n" + osc(b"0;title") + b"tail\x1b]633;D"


def test_strip_to_a_text_stream_uses_its_binary_buffer() -> None:
    raw = io.BytesIO()
    text = io.TextIOWrapper(raw, encoding="ascii")
    text.write("head:")
    run(io.BytesIO(b"\xff" + osc(b"633;A") + b"\xfe"), text, json_lines=False, strip=True)
    assert raw.getvalue() == b"head:\xff\xfe"


def test_text_stream_without_buffer_gets_decoded_output() -> None:
    out = io.StringIO()
    run(io.BytesIO(CAPTURE), out, json_lines=True, strip=False)
    assert orjson.loads(out.getvalue().splitlines()[4]) == {"osc": 633, "kind": "D", "exitCode": 0}
    stripped = io.StringIO()
    run(io.BytesIO(b"a\xff" + osc(b"633;A")), stripped, json_lines=False, strip=True)
    assert stripped.getvalue().encode("utf-8", "surrogateescape") == b"a\xff"


@pytest.mark.parametrize("chunk_size", [1, 2, 3, 17])
def test_chunk_size_does_not_change_the_output(chunk_size: int) -> None:
    for json_lines, strip in ((True, False), (False, False), (False, True)):
        assert dump(json_lines=json_lines, strip=strip, chunk_size=chunk_size) == dump(
            json_lines=json_lines, strip=strip
        )


def test_bad_chunk_size() -> None:
    with pytest.raises(ValueError, match="chunk_size"):
        run(io.BytesIO(b""), io.BytesIO(), json_lines=True, strip=False, chunk_size=0)


def test_marker_to_dict_keeps_only_known_fields() -> None:
    marker = Marker(633, "EnvSingleEntry", nonce="x", key="K", value="", raw=b"ignored")
    assert marker_to_dict(marker) == {
        "osc": 633,
        "kind": "EnvSingleEntry",
        "nonce": "x",
        "trusted": False,
        "key": "K",
        "value": "",
    }
