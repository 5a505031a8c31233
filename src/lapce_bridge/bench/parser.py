"""OSC parser rows: cost per KiB, and throughput on typical and colour-dense output.

Inputs are built to look like what a PTY delivers: typical output is lines of prose and code
with an occasional colour and a full set of shell-integration markers every few KiB; colour-
dense output is `ls --color` (an SGR sequence around every ~20 bytes). Both parser modes are
measured: markers only (`ansi: "keep"`) and markers plus every escape removed (`"strip"`, the
default for command results).
"""

from __future__ import annotations

import random
import time

from lapce_bridge.bench.report import Row, figure_row, latency_row
from lapce_bridge.bench.runner import BenchContext
from lapce_bridge.terminal.osc import OscParser

KiB = 1024
_WORDS = (
    b"the quick brown fox jumps over lazy dogs def return import class self value error "
    b"build test passed failed warning src/lapce_bridge/terminal/osc.py:42 0x7f3a 12.5ms"
).split()


def typical_output(size: int, rng: random.Random) -> bytes:
    out = bytearray()
    n = 0
    while len(out) < size:
        line = b" ".join(rng.choice(_WORDS) for _ in range(rng.randrange(4, 14)))
        if rng.random() < 0.05:
            line = b"\x1b[1;31m" + line + b"\x1b[0m"
        out += line + b"\r\n"
        if len(out) // 4096 > n:  # a command boundary every ~4 KiB
            n += 1
            out += (
                b"\x1b]633;D;0\x07\x1b]633;P;Cwd=/home/user/project\x07\x1b]633;A\x07$ "
                b"\x1b]633;B\x07\x1b]633;E;make test;f00dfeed\x07\x1b]633;C\x07"
            )
    return bytes(out[:size])


def colour_dense_output(size: int, rng: random.Random) -> bytes:
    colours = (b"01;34", b"01;32", b"00", b"01;36", b"40;33;01")
    out = bytearray()
    while len(out) < size:
        name = b"".join(rng.choice(_WORDS)[:6] for _ in range(2))
        out += b"\x1b[0m\x1b[" + rng.choice(colours) + b"m" + name + b"\x1b[0m  "
        if rng.random() < 0.2:
            out += b"\r\n"
    return bytes(out[:size])


def throughput(data: bytes, strip: bool, rounds: int, chunk: int = 4096) -> tuple[float, float]:
    """MB/s feeding `data` in PTY-sized chunks, the best of `rounds` (least disturbed): on the
    wall clock, and on this thread's CPU clock (what the parser costs, without the time other
    processes on a busy machine take from it)."""
    chunks = [data[i : i + chunk] for i in range(0, len(data), chunk)]
    best = best_cpu = float("inf")
    for _ in range(rounds):
        parser = OscParser(nonce="f00dfeed", strip_ansi=strip)
        feed = parser.feed
        started, started_cpu = time.perf_counter(), time.thread_time()
        for piece in chunks:
            feed(piece)
        parser.flush()
        best = min(best, time.perf_counter() - started)
        best_cpu = min(best_cpu, time.thread_time() - started_cpu)
    return len(data) / best / 1e6, len(data) / max(best_cpu, 1e-9) / 1e6


def per_kib_samples(data: bytes, strip: bool) -> list[float]:
    parser = OscParser(nonce="f00dfeed", strip_ansi=strip)
    clock = time.perf_counter_ns
    samples = []
    for i in range(0, len(data) - KiB + 1, KiB):
        piece = data[i : i + KiB]
        started = clock()
        parser.feed(piece)
        samples.append((clock() - started) / 1e9)
    return samples


async def run(ctx: BenchContext) -> list[Row]:
    rng = random.Random(7)
    size = ctx.n(4 * 1024 * KiB, 256 * KiB)
    typical = typical_output(size, rng)
    dense = colour_dense_output(size, rng)
    rounds = ctx.n(5, 1)
    rows: list[Row] = []
    for strip in (False, True):
        mode = "strip" if strip else "keep"
        rows.append(
            latency_row(
                "parser",
                f"OSC parser, per KiB ({mode})",
                per_kib_samples(typical, strip),
                seed=(10, 50, 100),
                goal=(7, 20),
            )
        )
        for label, data, goal in (
            ("typical output", typical, 150),
            ("colour-dense ls --color", dense, 100),
        ):
            wall, cpu = throughput(data, strip, rounds)
            rows.append(
                figure_row(
                    "parser",
                    f"OSC parser, {label} ({mode})",
                    wall,
                    "MB/s",
                    higher_is_better=True,
                    seed=100,
                    goal=goal,
                    note=f"wall clock, best of {rounds}; on the thread's CPU clock {cpu:.0f} MB/s",
                )
            )
    return rows
