"""Output normalisation and the head + tail view of a long output.

Theory of operation: the PTY delivers bytes in arbitrary chunks. `OutputNormalizer.feed`
turns each chunk into text: `\\r\\n` becomes `\\n` (a `\\r` at the end of a chunk is held back
until the next byte shows whether a `\\n` follows), and UTF-8 is decoded incrementally, so a
character split across reads is decoded whole rather than as U+FFFD. Invalid bytes become
U+FFFD; the normalised output is that text, and its size is its UTF-8 length.

Invariant: for any split of a byte stream, the concatenation of `feed(chunk)` results plus
`flush()` equals the normalisation of the whole stream.

`head_tail` builds the view a result carries when the output is over its budget: the first
and the last bytes, each cut on a character boundary, with a marker line between that says
how much was left out and where to read all of it.
"""

from __future__ import annotations

import codecs

_CR = 0x0D


class OutputNormalizer:
    __slots__ = ("_decoder", "_held_cr")

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._held_cr = False

    def feed(self, data: bytes) -> str:
        if self._held_cr:
            data = b"\r" + data
            self._held_cr = False
        if data and data[-1] == _CR:
            self._held_cr = True
            data = data[:-1]
        if b"\r\n" in data:
            data = data.replace(b"\r\n", b"\n")
        return self._decoder.decode(data)

    def flush(self) -> str:
        """End of the output: what was held back (a lone `\\r`, an unfinished character)."""
        tail = b"\r" if self._held_cr else b""
        self._held_cr = False
        return self._decoder.decode(tail, final=True)


def normalize(data: bytes) -> str:
    """The normalisation of a whole byte string, as the streaming form computes it."""
    n = OutputNormalizer()
    return n.feed(data) + n.flush()


def cut_head(data: bytes | bytearray) -> bytes:
    """`data` without an unfinished UTF-8 character at its end."""
    end = len(data)
    i = end - 1
    # Walk back over at most 3 continuation bytes to the lead byte of the last character.
    while i >= 0 and end - i <= 4 and (data[i] & 0xC0) == 0x80:
        i -= 1
    if i < 0:
        return bytes(data)
    lead = data[i]
    need = 1 if lead < 0x80 else 2 if lead >> 5 == 0b110 else 3 if lead >> 4 == 0b1110 else 4
    if lead >= 0x80 and (lead & 0xC0) == 0x80:
        return bytes(data)  # not UTF-8 here: nothing to protect
    return bytes(data[: i if end - i < need else end])


def cut_tail(data: bytes | bytearray) -> bytes:
    """`data` without the continuation bytes of a character cut off at its start."""
    i = 0
    while i < len(data) and i < 3 and (data[i] & 0xC0) == 0x80:
        i += 1
    return bytes(data[i:])


def truncation_marker(omitted: int, total: int, execution_id: str) -> str:
    return (
        f"\n[... {omitted} of {total} bytes of output omitted here; the whole output is "
        f'readable with terminal/readOutput {{"executionId": "{execution_id}"}} ...]\n'
    )


def head_tail(head: bytes, tail: bytes, total: int, execution_id: str) -> str:
    """The result text for an output of `total` bytes whose first bytes are `head` and whose
    last bytes are `tail` (`head + tail` may overlap or cover the whole)."""
    if total <= len(head):
        return head[:total].decode("utf-8", "replace")
    if total <= len(head) + len(tail):
        rest = tail[len(tail) - (total - len(head)) :]
        return (head + rest).decode("utf-8", "replace")
    first = cut_head(head)
    last = cut_tail(tail)
    omitted = total - len(first) - len(last)
    return (
        first.decode("utf-8", "replace")
        + truncation_marker(omitted, total, execution_id)
        + last.decode("utf-8", "replace")
    )


__all__ = [
    "OutputNormalizer",
    "cut_head",
    "cut_tail",
    "head_tail",
    "normalize",
    "truncation_marker",
]
