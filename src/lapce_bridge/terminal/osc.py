"""Sans-I/O streaming parser for shell-integration sequences (OSC 633, OSC 133, OSC 7).

Theory of operation
-------------------
Bytes go in through ``feed()``; ``Text`` and ``Marker`` events come out in stream order. No I/O,
no clocks, no asyncio: the terminal driver owns all of that.

The stream is ground-state text interrupted by *strings* that begin with an introducer: ``ESC ]``
(OSC) always, and with ``strip_ansi`` also ``ESC P`` / ``ESC X`` / ``ESC ^`` / ``ESC _``
(DCS, SOS, PM, APC). Everything else (CSI, two-byte escapes, C0 controls, raw 0x9c/0x9d which are
UTF-8 continuation bytes far more often than C1 controls) is ground text. A string ends:

* at BEL (OSC only) or ST ``ESC \\``            -> complete: decoded (OSC) or dropped (others);
* at CAN / SUB                                  -> aborted: string bytes and the CAN/SUB dropped;
* at any other ESC                              -> aborted: string bytes dropped, the ESC is parsed
                                                   again as the start of what follows, so a marker
                                                   right after a broken sequence is never lost;
* when it reaches ``max_buffer`` bytes undecided -> overflow: the introducer is demoted to text
                                                   and parsing resumes right after it.

C0 controls other than those stop bytes (CR, LF, TAB, ...) are ignored inside a string, as in
DEC's parser and xterm.js: they do not end it and are not part of its value (``Marker.raw``
keeps them). A complete OSC 633/133/7 becomes a Marker; one that does not decode (unknown
kind, bad URL) is removed and counted as invalid. Other OSCs (titles, hyperlinks) stay in the
Text untouched, or are removed with ``strip_ansi``. ``flush()`` demotes a pending string the
way overflow does.

Dropping aborted strings is what a VT terminal does (it displays nothing for them), so no byte a
terminal would have displayed is lost. The overflow point depends only on the sequence's length,
never on how the stream was split, so these invariants hold for any chunking:

1. Events (after merging adjacent Text) and statistics are identical however the stream is split.
2. With ``strip_ansi`` False, if nothing was aborted or invalid, joining ``Text.data`` and
   ``Marker.raw`` in order gives back the input byte for byte; input without ESC comes out whole.
3. With ``strip_ansi`` True no Text contains ESC, and the markers are the same as without it.
4. Pending state is bounded: a string under ``max_buffer`` bytes, or (strip mode) an unfinished
   CSI of at most ~275 bytes, or (plain mode) a single trailing ESC.

Decoded values (``\\\\`` -> ``\\``, ``\\xHH`` -> byte, one pass; OSC 7 percent escapes) are
decoded as UTF-8 with ``errors="replace"``: every value stays JSON-encodable (orjson rejects lone
surrogates); the exact bytes remain in ``Marker.raw``.

Speed: without ``strip_ansi``, CSI is never tokenised; a chunk without ``ESC ]`` costs one
``bytes.find`` and at most one slice (with it, a chunk without ESC). A short chunk fed from a
clean state whose parse left nothing pending, aborted or invalid is remembered with its events
(immutable) and marker count, 64 at most: an integrated shell writes the same chunks at every
command (its prompt, the line editor's clear and redraw), which then cost a dictionary lookup.
With
``strip_ansi`` text runs go through an ``EscapeStripper``: output repeats a handful of
sequences (``ls --color`` puts one of five SGRs around every name), and removing those with
``bytes.replace`` runs at memory speed, where ``re.sub`` pays about 0.5 us a match (12-45 MB/s
on colour-dense output here).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TypeAlias
from urllib.parse import unquote_to_bytes

from lapce_bridge.terminal.frozen import quick_init

__all__ = [
    "EscapeStripper",
    "Event",
    "Marker",
    "OscParser",
    "ParserStats",
    "Text",
    "strip_markers",
]


@quick_init
@dataclass(frozen=True, slots=True)
class Text:
    """Bytes to display: everything that is not a shell-integration marker."""

    data: bytes


@quick_init
@dataclass(frozen=True, slots=True)
class Marker:
    """One shell-integration sequence, decoded.

    ``trusted`` is True only for nonce-bearing kinds (633 ``E`` and ``Env*``) whose nonce equals
    the parser's; ``command_line`` is set only then. ``value`` of an ``E`` marker holds the command
    line *as sent* (untrusted: any program can print it), for display and debugging only.
    """

    osc: int
    kind: str
    exit_code: int | None = None
    command_line: str | None = None
    nonce: str | None = None
    trusted: bool = False
    key: str | None = None
    value: str | None = None
    raw: bytes = b""


Event: TypeAlias = Text | Marker
_ChunkCache: TypeAlias = dict[bytes, tuple[tuple[Event, ...], int]]


@dataclass(frozen=True, slots=True)
class ParserStats:
    bytes_fed: int
    markers: int
    overflows: int
    aborted: int
    invalid: int


_OSC_START = b"\x1b]"
# Strip mode: every string introducer (OSC, DCS, SOS, PM, APC); their bodies may hold BEL or ';'.
_STRING_START = re.compile(rb"\x1b[\]PX^_]")
_OSC_STOP = re.compile(rb"[\x07\x18\x1a\x1b]")
_STRING_STOP = re.compile(rb"[\x18\x1a\x1b]")  # DCS/SOS/PM/APC end with ST only, not BEL
# Escape sequences removed from text in strip mode: CSI, nF (ESC ( B ...), two-byte, lone ESC.
# Repeats are bounded so that an unfinished sequence held back between feeds stays small.
_ESCAPE = re.compile(
    rb"\x1b(?:\[[\x30-\x3f]{0,256}+[\x20-\x2f]{0,16}+[\x40-\x7e]|[\x20-\x2f]{1,16}+[\x30-\x7e]"
    rb"|[\x30-\x7e]?)"
)
# A match of _ESCAPE that is the same at every occurrence, whatever follows it: a CSI or an nF
# sequence ends with its final byte, a two-byte escape with its second (not `[`, which alone
# is what is left of a CSI too long or broken). A lone ESC depends on the next byte: never.
# String introducers (ESC ] P X ^ _) are not ground text and are never learned, so one left
# in a reduced run still shows (`OscParser._strip_fast`).
_SELF_DELIMITED = re.compile(
    rb"\x1b(?:\[[\x30-\x3f]*[\x20-\x2f]*[\x40-\x7e]|[\x20-\x2f]+[\x30-\x7e]"
    rb"|[\x30-\x4f\x51-\x57\x59\x5a\x5c\x60-\x7e])"
)
# A tail that _ESCAPE could still match differently once more bytes arrive.
_ESCAPE_PREFIX = re.compile(rb"\x1b(?:\[[\x30-\x3f]{0,256}[\x20-\x2f]{0,16}|[\x20-\x2f]{0,16})")
# The common chunk of an integrated shell: text and complete OSCs ended by BEL, with no control
# byte inside them (so nothing for `_parse` to ignore, abort or hold). Split on those, the
# chunk alternates text runs and whole sequences (`OscParser._split_fast`).
_WHOLE_OSC = re.compile(rb"(\x1b\][\x20-\xff]*\x07)")
_OSC_IGNORED = bytes(b for b in range(0x20) if b not in (0x07, 0x18, 0x1A, 0x1B))
_VALUE_ESCAPE = re.compile(rb"\\(?:\\|x([0-9a-fA-F]{2}))")
_INT = re.compile(rb"-?[0-9]{1,18}")

_SIMPLE_633 = {k: k.decode() for k in (b"A", b"B", b"C", b"F", b"G", b"H", b"I")}
_KINDS_133 = {k: k.decode() for k in (b"A", b"B", b"C", b"D")}
_MIN_BUFFER = 8
_CACHE_SIZE = 256
# Chunks kept (per mode): a command's chunks that carry its nonce never come again, so the
# table fills with those and is emptied; the ones that repeat are back after one miss.
_CHUNKS_KEPT = 64
_CACHE_MAX_RAW = 512


def _unescape_match(m: re.Match[bytes]) -> bytes:
    hex_digits = m.group(1)
    return b"\\" if hex_digits is None else bytes((int(hex_digits, 16),))


def _unescape(value: bytes) -> str:
    # One pass, so "\\x41" is a backslash followed by "x41", as VS Code's deserializer reads it.
    if b"\\" in value:
        value = _VALUE_ESCAPE.sub(_unescape_match, value)
    return value.decode("utf-8", "replace")


def _text(value: bytes) -> str:
    return value.decode("utf-8", "replace")


def _exit_code(fields: list[bytes]) -> int | None:
    # "D;abc" or a bare "D" is a finished command whose status is unknown, not an error.
    if len(fields) > 1 and _INT.fullmatch(fields[1]):
        return int(fields[1])
    return None


def _cwd_from_url(url: bytes) -> str | None:
    if url.startswith(b"file://"):
        slash = url.find(b"/", 7)  # skip the host part
        return None if slash < 0 else _text(unquote_to_bytes(url[slash:]))
    if url.startswith(b"kitty-shell-cwd://"):  # kitty's variant is not percent-encoded
        slash = url.find(b"/", 18)
        return None if slash < 0 else _text(url[slash:])
    return _text(url) if url.startswith(b"/") else None


class EscapeStripper:
    """Removes escape sequences from ground text: `_ESCAPE.sub(b"", text)`, faster on dense runs.

    `re.sub` pays about 0.2 us of CPU a match; colour-dense output (`ls --color` puts SGRs
    around every name) has one every ~10 bytes, while it repeats a handful of sequences. So
    the stripper learns the sequences a stream repeats (at most `max_known`), and in a run
    dense in escapes replaces each known one by placeholders (NULs) with `bytes.replace`, one
    pass a sequence at memory speed (`reduce`); the regex then removes what is left, and the
    placeholders are deleted (`finish`).

    Why the answer is the regex's: (1) the regex matches at every ESC (a lone ESC matches
    alone), and a match holds no other ESC; (2) a learned sequence is self-delimited
    (`_SELF_DELIMITED`): wherever it occurs it is the regex's whole match there; (3) the
    placeholder, absent from the run, is outside every byte class of the regex, as ESC is: so
    the regex reads a NUL where an ESC was exactly as it read that ESC (it ends the match
    there), never matches at a NUL, and no NUL is part of a later sequence's occurrence; the
    regex's matches at the ESCs left are the same as in the original, and the replaced spans
    were its matches too. Deleting the placeholders leaves what the regex alone leaves.

    A stream whose sequences never repeat (cursor addressing) would pay for learning on every
    run: after `patience` dense runs in a row that the known sequences covered poorly, it
    stops learning for the next `rest` ones.
    """

    __slots__ = (
        "_escapes",
        "_idle",
        "_known",
        "_misses",
        "dense",
        "max_known",
        "patience",
        "rest",
    )

    # A replace pass costs about what the regex pays for one match per 100 bytes scanned:
    # passes are worth it when escapes * _PASS_RATIO > len(known) * len(text).
    _PASS_RATIO = 100
    _MIN_RUN = 512
    _MIN_ESCAPES = _MIN_RUN // _PASS_RATIO  # fewer in a run of _MIN_RUN bytes: sparse

    def __init__(self, *, max_known: int = 8, patience: int = 8, rest: int = 256) -> None:
        self.max_known = max_known
        self.patience = patience
        self.rest = rest
        # Whether the last run was dense in escapes: only then are they counted up front (a
        # pass over the run, which sparse output, most of it, would pay for nothing).
        self.dense = False
        self._known: dict[bytes, int] = {}  # sequence -> times seen, the most seen first
        self._escapes = 0  # ESCs in the run `reduce` last passed
        self._misses = 0  # dense runs in a row that the known sequences covered poorly
        self._idle = 0  # dense runs left before learning is tried again

    @property
    def known(self) -> tuple[bytes, ...]:
        """The sequences learned, the most seen first."""
        return tuple(self._known)

    def __call__(self, text: bytes) -> bytes:
        if 27 not in text:  # ESC
            return text
        if self.dense:
            reduced = self.reduce(text)
            if reduced is not None:
                return self.finish(reduced)
            return _ESCAPE.sub(b"", text)
        stripped, escapes = _ESCAPE.subn(b"", text)  # every ESC is a match: counted for free
        if escapes > self._MIN_ESCAPES and self._worth_passes(escapes, len(text)):
            self.dense = True
            self._escapes = escapes
            self._learn(text, escapes)
        return stripped

    def _worth_passes(self, escapes: int, size: int) -> bool:
        # A short run (between two markers, say) costs the regex little whatever it holds.
        return (
            size >= self._MIN_RUN and escapes * self._PASS_RATIO > max(1, len(self._known)) * size
        )

    def reduce(self, text: bytes) -> bytes | None:
        """`text` with every known sequence replaced by NULs; None for a run with few escapes
        (the regex alone is cheaper) or one holding NUL itself."""
        if self.dense and self._known:
            self._escapes = -1  # a dense stream: counted after the passes (`finish`), not before
        else:
            escapes = text.count(b"\x1b")
            self.dense = self._worth_passes(escapes, len(text))
            if not self.dense:
                return None
            self._escapes = escapes
        if b"\x00" in text:
            return None
        for sequence in self._known:
            # As long as the sequence: a replacement of the same length is made in place, in
            # one pass (a shorter one counts the matches first, then builds: two).
            text = text.replace(sequence, b"\x00" * len(sequence))
        return text

    def finish(self, reduced: bytes) -> bytes:
        """The stripped text from what `reduce` gave."""
        left = reduced.count(b"\x1b")
        if left:
            stripped = _ESCAPE.sub(b"", reduced)
            out = stripped.translate(None, b"\x00")
            placeholders = len(stripped) - len(out)
        else:
            out = reduced.translate(None, b"\x00")
            placeholders = len(reduced) - len(out)
        if self._escapes < 0:
            # At most one sequence for every 4 placeholders (`ESC [ 0 m` is the shortest).
            self._escapes = left + placeholders // 4
            self.dense = self._worth_passes(self._escapes, len(reduced))
        if left:
            self._learn(reduced, left)
        else:
            self._misses = 0
        return out

    def _learn(self, reduced: bytes, left: int) -> None:
        if self._idle:
            self._idle -= 1
            return
        if 4 * left > self._escapes:  # covered under 3/4: a poor run
            self._misses += 1
            if self._misses > self.patience:  # nothing here repeats: rest, then try again
                self._misses = 0
                self._idle = self.rest
                self._known.clear()
                return
        else:
            self._misses = 0
        known = self._known
        for sequence in _ESCAPE.findall(reduced):
            if sequence in known:
                known[sequence] += 1
            elif _SELF_DELIMITED.fullmatch(sequence):
                known[sequence] = 1
        ordered = sorted(known.items(), key=lambda item: -item[1])[: self.max_known]
        known.clear()
        known.update(ordered)


def _flush(text: list[bytes], events: list[Event]) -> None:
    """The text gathered since the last marker, as one event (none if it was all empty)."""
    joined = b"".join(text)
    if joined:
        events.append(Text(joined))
    text.clear()


class OscParser:
    """Streaming shell-integration parser. See the module docstring for the invariants."""

    __slots__ = (
        "_aborted",
        "_buf",
        "_bytes_fed",
        "_cache",
        "_cache_nonce",
        "_chunks",
        "_invalid",
        "_markers",
        "_overflows",
        "_pending_stop",
        "_pending_strip",
        "_resume",
        "_strip",
        "max_buffer",
        "nonce",
        "passthrough",
        "strip_ansi",
    )

    def __init__(
        self,
        *,
        nonce: str | None = None,
        strip_ansi: bool = False,
        max_buffer: int = 64 * 1024,
        passthrough: bool = False,
    ) -> None:
        if max_buffer < _MIN_BUFFER:
            raise ValueError(f"max_buffer must be at least {_MIN_BUFFER}, got {max_buffer}")
        self.nonce = nonce
        self.strip_ansi = strip_ansi
        self.max_buffer = max_buffer
        self.passthrough = passthrough
        self._bytes_fed = self._markers = self._overflows = self._aborted = self._invalid = 0
        self._cache: dict[bytes, Marker] = {}
        # Whole chunks' events and marker counts, per mode (`strip_ansi` False, True).
        self._chunks: tuple[_ChunkCache, _ChunkCache] = ({}, {})
        self._cache_nonce = nonce
        self._strip = EscapeStripper()
        self.reset()

    def reset(self) -> None:
        """Forget any partial sequence (its bytes are discarded). Statistics are kept."""
        self._buf = bytearray()
        # While a string is pending: the stop-byte pattern it was scanned with, the mode, and how
        # far (from the buffer start) it is known to hold no stop byte, so no byte is rescanned.
        self._pending_stop: re.Pattern[bytes] | None = None
        self._pending_strip = False
        self._resume = 0

    def statistics(self) -> ParserStats:
        return ParserStats(
            self._bytes_fed, self._markers, self._overflows, self._aborted, self._invalid
        )

    def feed(self, data: bytes | bytearray | memoryview) -> list[Event]:
        """Parse the next chunk; return the events it completes, in stream order."""
        if type(data) is not bytes:
            data = bytes(data)  # events hold immutable bytes, never a view of a reused buffer
        self._bytes_fed += len(data)
        buf = self._buf
        resume = 0
        if buf:
            stop = self._pending_stop
            if stop is not None and self._pending_strip == self.strip_ansi:
                resume = self._resume
                if (
                    resume == len(buf)
                    and not self.passthrough
                    and resume + len(data) < self.max_buffer
                    and stop.search(data) is None
                ):
                    # Still inside the same undecided string: append without rescanning, which
                    # keeps byte-by-byte feeding of a long sequence linear.
                    buf += data
                    self._resume = len(buf)
                    return []
            data = bytes(buf) + data
            self.reset()
        elif not data:
            return []
        if self.passthrough:
            return [Text(data)]
        if resume or len(data) > _CACHE_MAX_RAW:
            return self._events(data, resume)
        # A short chunk parsed from a clean state: its events depend on its bytes alone, and
        # an integrated shell writes the same ones at every command (its prompt, the line
        # editor's redraw, the marks without a nonce).
        if self._cache_nonce != self.nonce:
            self._markers_cache()  # (emptied with it when the nonce changes)
        chunks = self._chunks[self.strip_ansi]
        hit = chunks.get(data)
        if hit is not None:
            self._markers += hit[1]
            return list(hit[0])
        markers, faults = self._markers, self._overflows + self._aborted + self._invalid
        events = self._events(data, 0)
        if not self._buf and faults == self._overflows + self._aborted + self._invalid:
            if len(chunks) >= _CHUNKS_KEPT:
                chunks.clear()
            chunks[data] = (tuple(events), self._markers - markers)
        return events

    def _events(self, data: bytes, resume: int) -> list[Event]:
        """The events of `data` (the pending bytes first, `resume` of them known to hold no
        stop byte)."""
        if self.strip_ansi:
            if 27 not in data:  # no escape at all: nothing to strip, no sequence
                return [Text(data)]
            if self._strip.dense:
                fast = self._strip_fast(data)
                if fast is not None:
                    return fast
        elif data.find(_OSC_START) < 0:
            # Fast path: the common chunk holds no OSC at all.
            if data[-1] == 0x1B:
                self._buf = bytearray(b"\x1b")  # may become ESC ]
                return [Text(data[:-1])] if len(data) > 1 else []
            return [Text(data)]
        if not resume:
            whole = self._split_fast(data)
            if whole is not None:
                return whole
        return self._parse(data, resume, final=False)

    def _strip_fast(self, data: bytes) -> list[Event] | None:
        """Strip mode, a chunk dense in escapes: its known sequences replaced first, so the
        search for a string introducer runs over what is left. None when a string is in it
        (or the stripper has nothing to gain): `_parse` then does the whole work."""
        k = data.rfind(b"\x1b")
        if k < 0:
            return [Text(data)]
        body = data[:k] if _ESCAPE_PREFIX.fullmatch(data, k) else data  # unfinished: held
        reduced = self._strip.reduce(body)
        # Introducers are never learned, so one in `body` is still in `reduced`.
        if reduced is None or _STRING_START.search(reduced) is not None:
            return None
        if body is not data:
            self._buf = bytearray(data[k:])
        text = self._strip.finish(reduced)
        return [Text(text)] if text else []

    def _split_fast(self, data: bytes) -> list[Event] | None:
        """A chunk of text runs and whole BEL-ended OSCs (what our hooks print): one split
        instead of `_parse`'s searches a sequence. None when anything else is in it (another
        string, a control byte inside a sequence, an escape left open at its end): `_parse`
        does the whole work, so the events are the same either way.

        The checks run once over all the text runs joined (a C search, not a loop a run):
        joining can only add an introducer across two runs (a run's last ESC and the next
        one's first byte), which sends the chunk to `_parse` for nothing, never hide one."""
        parts = _WHOLE_OSC.split(data)
        if len(parts) == 1:
            return None
        strip = self.strip_ansi
        runs = parts[0::2]
        joined = b"".join(runs)
        if 27 in joined and (
            _STRING_START.search(joined) is not None if strip else _OSC_START in joined
        ):
            return None
        if len(data) >= self.max_buffer and max(map(len, parts[1::2])) >= self.max_buffer:
            return None  # `_parse` demotes it (overflow)
        tail = runs[-1]
        if 27 in tail:  # an escape left open at the end is held for the next chunk, as in `_parse`
            if strip:
                k = tail.rfind(b"\x1b")
                if _ESCAPE_PREFIX.fullmatch(tail, k):
                    self._buf = bytearray(tail[k:])
                    runs[-1] = tail[:k]
            elif tail[-1] == 0x1B:
                self._buf = bytearray(b"\x1b")
                runs[-1] = tail[:-1]
        cache = self._cache if self._cache_nonce == self.nonce else self._markers_cache()
        events: list[Event] = []
        text: list[bytes] = []
        found = 0
        for run, osc in zip(runs, parts[1::2], strict=False):  # the last run: after
            if run:
                text.append(self._strip(run) if strip and 27 in run else run)
            marker = cache.get(osc)
            if marker is None:
                marker = self._decode_raw(osc, osc[2:-1], strip, text)
                if marker is None:
                    continue
            found += 1
            if text:
                _flush(text, events)
            events.append(marker)
        self._markers += found
        run = runs[-1]
        if run:
            text.append(self._strip(run) if strip and 27 in run else run)
        if text:
            _flush(text, events)
        return events

    def _decode_raw(
        self, raw: bytes, payload: bytes, strip: bool, text: list[bytes]
    ) -> Marker | None:
        """The marker of a complete OSC (`raw`, its `payload` without ignored controls), cached;
        None for another OSC (kept in `text` unless stripping) or an invalid one (counted)."""
        semi = payload.find(b";")
        number = payload if semi < 0 else payload[:semi]
        if number != b"633" and number != b"133" and number != b"7":
            if not strip:
                text.append(raw)  # titles, hyperlinks, ...: untouched
            return None
        marker = self._decode(number, b"" if semi < 0 else payload[semi + 1 :], raw)
        if marker is None:
            self._invalid += 1
            return None
        if len(raw) <= _CACHE_MAX_RAW:  # bounded: at most 256 small entries
            cache = self._cache
            if len(cache) >= _CACHE_SIZE:
                cache.clear()
            cache[raw] = marker
        return marker

    def flush(self) -> list[Event]:
        """End of stream: an unfinished sequence is not a sequence; its bytes come out as Text
        (in strip mode its escape bytes are removed, the rest is kept)."""
        data = bytes(self._buf)
        self.reset()
        if not data:
            return []
        if self.passthrough:
            return [Text(data)]
        return self._parse(data, 0, final=True)

    def _markers_cache(self) -> dict[bytes, Marker]:
        """Markers repeat (A, B, C, D;0, P;Cwd=...): the immutable decoded Marker is reused.
        Trust depends on the nonce, so the cache only holds markers decoded under the
        current one."""
        if self._cache_nonce != self.nonce:
            self._cache.clear()
            self._chunks[0].clear()
            self._chunks[1].clear()
            self._cache_nonce = self.nonce
        return self._cache

    def _parse(self, data: bytes, resume: int, *, final: bool) -> list[Event]:
        strip = self.strip_ansi
        cache = self._markers_cache()
        events: list[Event] = []
        text: list[bytes] = []
        n = len(data)
        max_buffer = self.max_buffer
        pos = 0
        while True:
            if strip:
                found = _STRING_START.search(data, pos)
                i = -1 if found is None else found.start()
            else:
                i = data.find(_OSC_START, pos)
            if i < 0:
                break
            if i > pos:
                run = data[pos:i]
                text.append(self._strip(run) if strip and 27 in run else run)
            is_osc = data[i + 1] == 0x5D
            stop = _OSC_STOP if is_osc else _STRING_STOP
            limit = i + max_buffer  # a deciding byte must lie before this index
            start = resume if i == 0 and resume > 2 else i + 2
            hit = stop.search(data, start, min(n, limit))
            d = -1 if hit is None else hit.start()
            c = -1 if d < 0 else data[d]
            if c == 0x1B and d + 1 >= limit:
                d = -1  # ST would end past the bound, whatever follows: overflow
            if d < 0 or (c == 0x1B and d + 1 == n):
                if n >= limit:  # undecided at the bound
                    self._overflows += 1
                elif not final:
                    # Undecided: keep the string for the next feed.
                    self._buf = bytearray(data[i:])
                    self._pending_stop = stop
                    self._pending_strip = strip
                    self._resume = n - i if d < 0 else d - i
                    pos = n
                    break
                # Overflow or end of stream: the introducer is demoted to text.
                if not strip:
                    text.append(data[i : i + 2])
                pos = i + 2
                continue
            if c == 0x1B and data[d + 1] != 0x5C:
                self._aborted += 1  # ESC that is not ST: drop the string, reparse from the ESC
                pos = d
                continue
            if c == 0x18 or c == 0x1A:
                self._aborted += 1  # CAN/SUB cancel the string, and are consumed with it
                pos = d + 1
                continue
            end = d + 2 if c == 0x1B else d + 1
            pos = end
            if not is_osc:
                continue  # a complete DCS/SOS/PM/APC in strip mode: removed
            raw = data[i:end]
            marker = cache.get(raw)
            if marker is None:
                # Inside the string, C0 controls other than BEL/CAN/SUB/ESC (the stop bytes)
                # are ignored, as DEC's parser and xterm.js do: a CR/LF a shell's line
                # wrapping put inside `ESC ] 633;A ... BEL` must not cost the marker.
                payload = data[i + 2 : d].translate(None, _OSC_IGNORED)
                marker = self._decode_raw(raw, payload, strip, text)
                if marker is None:
                    continue
            self._markers += 1
            if text:
                _flush(text, events)
            events.append(marker)
        if pos < n:
            tail = data[pos:]
            if not final:
                if strip:
                    k = tail.rfind(b"\x1b")
                    if k >= 0 and _ESCAPE_PREFIX.fullmatch(tail, k):
                        self._buf = bytearray(tail[k:])
                        tail = tail[:k]
                elif tail[-1] == 0x1B:
                    self._buf = bytearray(b"\x1b")
                    tail = tail[:-1]
            text.append(self._strip(tail) if strip and 27 in tail else tail)
        if text:
            _flush(text, events)
        return events

    def _decode(self, number: bytes, rest: bytes, raw: bytes) -> Marker | None:
        """Decode one shell-integration OSC; None means invalid (skipped and counted)."""
        if number == b"7":
            cwd = _cwd_from_url(rest)
            return None if cwd is None else Marker(7, "cwd", key="Cwd", value=cwd, raw=raw)
        fields = rest.split(b";")
        head = fields[0]
        if number == b"133":
            kind = _KINDS_133.get(head)
            if kind is None:
                return None
            code = _exit_code(fields) if kind == "D" else None
            return Marker(133, kind, exit_code=code, raw=raw)
        simple = _SIMPLE_633.get(head)
        if simple is not None:
            return Marker(633, simple, raw=raw)
        if head == b"D":
            return Marker(633, "D", exit_code=_exit_code(fields), raw=raw)
        if head == b"P":
            if len(fields) < 2:
                return None
            # Rest of the payload, not just one field: a naive script's unescaped ';' in a path
            # then still yields the whole path.
            name, eq, setting = rest[2:].partition(b"=")
            return Marker(
                633, "P", key=_unescape(name), value=_unescape(setting) if eq else None, raw=raw
            )
        # Nonce-bearing kinds. The nonce is the last field, so an unescaped ';' inside a command
        # line does not cost the marker its trust; a wrong nonce never earns it.
        if head == b"E":
            if len(fields) >= 3:
                cmd, nonce = _unescape(b";".join(fields[1:-1])), _text(fields[-1])
            else:
                cmd, nonce = (_unescape(fields[1]) if len(fields) > 1 else ""), None
            trusted = nonce is not None and nonce == self.nonce
            return Marker(
                633,
                "E",
                command_line=cmd if trusted else None,
                nonce=nonce,
                trusted=trusted,
                value=cmd,
                raw=raw,
            )
        key: str | None = None
        value: str | None = None
        nonce_index: int
        if head == b"EnvJson" or head == b"EnvSingleStart":
            # EnvJson;<json>;<nonce>   EnvSingleStart;<clear 0|1>;<nonce>
            value = _unescape(fields[1]) if len(fields) > 1 else None
            nonce_index = 2
        elif head == b"EnvSingleEntry":  # EnvSingleEntry;<key>;<value>;<nonce>
            key = _unescape(fields[1]) if len(fields) > 1 else None
            value = _unescape(fields[2]) if len(fields) > 2 else None
            nonce_index = 3
        elif head == b"EnvSingleEnd":  # EnvSingleEnd;<nonce>
            nonce_index = 1
        else:
            return None
        env_nonce = _text(fields[nonce_index]) if len(fields) > nonce_index else None
        return Marker(
            633,
            head.decode(),
            nonce=env_nonce,
            trusted=env_nonce is not None and env_nonce == self.nonce,
            key=key,
            value=value,
            raw=raw,
        )


def strip_markers(data: bytes, *, strip_ansi: bool = False) -> bytes:
    """Return ``data`` with shell-integration sequences removed (and every escape sequence, with
    ``strip_ansi``); an unfinished trailing sequence is kept as text."""
    parser = OscParser(strip_ansi=strip_ansi)
    events = parser.feed(data) + parser.flush()
    return b"".join([e.data for e in events if isinstance(e, Text)])
