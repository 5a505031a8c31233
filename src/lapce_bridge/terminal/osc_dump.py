"""``lapce-bridge osc-dump``: show the shell-integration markers in a captured terminal stream.

Output modes (``strip`` wins over ``json_lines``):

* human (default): one line per marker, ``633 D exitCode=0``, string values JSON-quoted, then a
  ``# ...`` summary line with the parser statistics;
* ``json_lines``: one JSON object per marker, ``{"osc": 633, "kind": "D", "exitCode": 0}``. Fields
  that are null are omitted, so every key present carries information; ``trusted`` appears only
  on markers that carry a nonce. An ``E`` marker's command line is under ``commandLine`` (the
  agreed key) and, as before, ``value``; ``trusted`` says whether its nonce matched ``nonce``
  (without it, the line is only what the stream claims);
* ``strip``: the input with shell-integration sequences removed, written as bytes.

The stream is fed in ``chunk_size`` pieces, so a capture can be replayed exactly as the terminal
read it (``--chunk-size 1`` exercises every split point).
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import sys
from collections.abc import Callable
from typing import BinaryIO, NoReturn, TextIO, cast

import orjson

from lapce_bridge.terminal.osc import Marker, OscParser, ParserStats, Text

__all__ = ["end_on_closed_stdout", "marker_to_dict", "run"]


def marker_to_dict(marker: Marker) -> dict[str, object]:
    """The JSON shape of a marker: camelCase keys, null fields left out."""
    out: dict[str, object] = {"osc": marker.osc, "kind": marker.kind}
    if marker.exit_code is not None:
        out["exitCode"] = marker.exit_code
    command_line = marker.command_line
    if command_line is None and marker.osc == 633 and marker.kind == "E":
        command_line = marker.value  # as sent; `trusted` says whether the nonce vouched for it
    if command_line is not None:
        out["commandLine"] = command_line
    if marker.nonce is not None:
        out["nonce"] = marker.nonce
        out["trusted"] = marker.trusted
    if marker.key is not None:
        out["key"] = marker.key
    if marker.value is not None:
        out["value"] = marker.value
    return out


def _human(marker: Marker) -> str:
    fields = marker_to_dict(marker)
    parts = [f"{fields.pop('osc')} {fields.pop('kind')}"]
    parts.extend(f"{name}={orjson.dumps(value).decode()}" for name, value in fields.items())
    return " ".join(parts)


def _summary(stats: ParserStats) -> str:
    return (
        f"# bytes={stats.bytes_fed} markers={stats.markers} overflows={stats.overflows}"
        f" aborted={stats.aborted} invalid={stats.invalid}"
    )


def _byte_writer(out: TextIO | BinaryIO, *, raw: bool) -> Callable[[bytes], object]:
    """A ``write(bytes)`` for ``out``. Raw (stripped) output to a text stream goes to its binary
    ``buffer`` when it has one; otherwise bytes are decoded with surrogateescape (lossless)."""
    if not (isinstance(out, io.TextIOBase) or hasattr(out, "encoding")):
        return out.write
    text = cast(TextIO, out)
    buffer = getattr(text, "buffer", None)
    if raw and buffer is not None:
        text.flush()  # whatever the text layer holds goes out first
        write: Callable[[bytes], object] = buffer.write
        return write
    return lambda data: text.write(data.decode("utf-8", "surrogateescape"))


def run(
    source: BinaryIO,
    out: TextIO | BinaryIO,
    *,
    json_lines: bool,
    strip: bool,
    chunk_size: int = 65536,
    nonce: str | None = None,
) -> int:
    """Parse ``source`` and write markers (or the stripped stream) to ``out``; return 0.

    ``out`` may be a text or a binary stream. ``nonce`` lets ``E``/``Env*`` markers be
    recognised as trusted. I/O errors propagate to the caller (the CLI maps them).
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    write = _byte_writer(out, raw=strip)
    parser = OscParser(nonce=nonce)
    while True:
        chunk = source.read(chunk_size)
        events = parser.feed(chunk) if chunk else parser.flush()
        if strip:
            for event in events:
                if isinstance(event, Text):
                    write(event.data)
        else:
            lines = [
                orjson.dumps(marker_to_dict(e)) if json_lines else _human(e).encode()
                for e in events
                if isinstance(e, Marker)
            ]
            if lines:
                write(b"\n".join(lines) + b"\n")
        if not chunk:
            break
    if not strip and not json_lines:
        write(_summary(parser.statistics()).encode() + b"\n")
    out.flush()
    return 0


def end_on_closed_stdout() -> NoReturn:
    """Whoever read our output has gone (`osc-dump ... | head`): end as `cat` would, by
    SIGPIPE, silently. Output still buffered would fail again at exit, so stdout goes nowhere."""
    with contextlib.suppress(OSError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGPIPE)
    sys.exit(128 + signal.SIGPIPE)  # only where SIGPIPE does not end a process
