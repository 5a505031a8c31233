"""Output normalisation: PTY bytes, in any chunks, to the text a result carries.

Theory of operation: the PTY delivers bytes in arbitrary chunks. `OutputNormalizer.feed`
turns each chunk into text: `\\r\\n` becomes `\\n` (a `\\r` at the end of a chunk is held back
until the next byte shows whether a `\\n` follows), and UTF-8 is decoded incrementally, so a
character split across reads is decoded whole rather than as U+FFFD. Invalid bytes become
U+FFFD; the normalised output is that text, and its size is its UTF-8 length.

Invariant: for any split of a byte stream, the concatenation of `feed(chunk)` results plus
`flush()` equals the normalisation of the whole stream.
"""

from __future__ import annotations

import codecs

_CR = 0x0D
_UTF8 = codecs.getincrementaldecoder("utf-8")  # looked up once, not at every command


class OutputNormalizer:
    __slots__ = ("_decoder", "_held_cr")

    def __init__(self) -> None:
        self._decoder = _UTF8("replace")
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
