"""Parser fed garbage: random bytes, broken and unterminated sequences between real markers.

Recovery must be immediate (RTO 0: the next marker in the same feed is parsed) and lossless
(RPO 0: every `D;n` marker sent comes out, in order, with its exit code), however the stream is
split into reads.
"""

from __future__ import annotations

import random
import time

from lapce_bridge.chaos.scenario import ChaosContext, ChaosResult
from lapce_bridge.terminal.osc import Marker, OscParser, Text

_GARBAGE_PIECES = (
    b"\x1b]633;",  # unterminated marker
    b"\x1b]633;D;",  # unterminated finish
    b"\x1b]0;title",  # unterminated title
    b"\x1b]",
    b"\x18",  # CAN
    b"\x1a",  # SUB
    b"\x1b[31m",
    b"\x1b[",
    b"\x9c\x9d",  # C1 bytes that are UTF-8 continuation bytes in text
    b"\xff\xfe",  # invalid UTF-8
    b"\x1bP1;2|junk",  # unterminated DCS
    b"\x07",
    b"\x1b\\",
    b"\x1b]633;E;spoofed;wrongnonce\x07",
)


def garbage_stream(rng: random.Random, markers: int) -> bytes:
    parts: list[bytes] = []
    for i in range(markers):
        for _ in range(rng.randrange(0, 6)):
            if rng.random() < 0.5:
                parts.append(rng.choice(_GARBAGE_PIECES))
            else:
                parts.append(rng.randbytes(rng.randrange(1, 64)))
        parts.append(b"\x1b]633;D;%d\x07" % (i % 256))
    return b"".join(parts)


def feed_split(parser: OscParser, data: bytes, rng: random.Random) -> list[int | None]:
    codes: list[int | None] = []
    pos = 0
    while pos < len(data):
        step = rng.randrange(1, 4096)
        codes.extend(_finishes(parser.feed(data[pos : pos + step])))
        pos += step
    codes.extend(_finishes(parser.flush()))
    return codes


def _finishes(events: list[Text | Marker]) -> list[int | None]:
    return [e.exit_code for e in events if isinstance(e, Marker) and e.osc == 633 and e.kind == "D"]


async def run(ctx: ChaosContext) -> ChaosResult:
    rng = random.Random(633)
    rounds = ctx.n(20, 3)
    markers = ctx.n(5000, 500)
    lost = 0
    spent = 0.0
    fed = 0
    for _ in range(rounds):
        data = garbage_stream(rng, markers)
        fed += len(data)
        parser = OscParser(nonce="n0nce", max_buffer=4096)
        started = time.perf_counter()
        codes = feed_split(parser, data, rng)
        spent += time.perf_counter() - started
        expected = [i % 256 for i in range(markers)]
        # Count each expected marker not matched in order: a lost or corrupted finish.
        lost += _missing(expected, codes)
    return ChaosResult(
        "parser fed garbage",
        0.0 if lost == 0 else float("inf"),
        lost,
        rounds,
        seed_ms=0.0,
        goal_ms=0.0,
        ok=lost == 0,
        detail=f"{rounds * markers} markers among garbage, random splits",
        extra={"MB_per_s": fed / 1e6 / spent if spent else 0.0},
    )


def _missing(expected: list[int], got: list[int | None]) -> int:
    """How many expected finishes do not appear, in order, among those parsed."""
    missing = 0
    pos = 0
    for want in expected:
        try:
            pos = got.index(want, pos) + 1
        except ValueError:  # lost: the search for the next one starts where this one would be
            missing += 1
    return missing
