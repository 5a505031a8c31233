"""Benchmark rows, verdicts against BENCHMARKS.md, and the medians of repeated runs.

A row is either a latency (samples in seconds, reported as p50/p99/p99.9 in microseconds) or
a single figure (a rate, a size, a recovery time) with a direction: higher or lower is better.
Each row carries the seed target and our goal, so the verdict is computed where it is printed.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

Verdict = Literal["goal", "seed", "miss", "info"]


def percentile(sorted_samples: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of already sorted samples (q in 0..100)."""
    if not sorted_samples:
        return math.nan
    # A product meant to be whole comes out an ulp or two over (99.9 / 100 * 1000 is
    # 999.0000000000001), which would report the maximum as the p99.9 of 1000 samples.
    x = q * len(sorted_samples) / 100
    rank = max(1, math.ceil(x - x * 1e-15))
    return sorted_samples[min(rank, len(sorted_samples)) - 1]


@dataclass(frozen=True, slots=True)
class Row:
    suite: str
    name: str
    unit: str  # "us" for latency rows; "MB/s", "ops/s", "msg/s", "MB", "ms", "%" otherwise
    p50: float | None = None  # latency rows
    p99: float | None = None
    p999: float | None = None
    value: float | None = None  # single-figure rows
    higher_is_better: bool = False
    seed: tuple[float, ...] = ()  # latency: (p50, p99, p99.9); figure: (value,)
    goal: tuple[float, ...] = ()  # latency: (p50, p99); figure: (value,)
    samples: int = 0
    note: str = ""
    extra: dict[str, float] = field(default_factory=dict)
    # Latency rows: the 0th..100th percentiles of the samples (us), for distribution plots.
    dist: tuple[float, ...] = ()

    @property
    def is_latency(self) -> bool:
        return self.p50 is not None

    def verdict(self) -> Verdict:
        if self.is_latency:
            got = (self.p50, self.p99, self.p999)
            # The goal names no p99.9, so a row reaches it only if it also meets the seed's.
            seed_met = _all_within(got, self.seed, higher=False)
            if self.goal and seed_met and _all_within(got, self.goal, higher=False):
                return "goal"
            if self.seed and seed_met:
                return "seed"
            return "miss" if (self.seed or self.goal) else "info"
        if self.value is None or not (self.seed or self.goal):
            return "info"
        if self.goal and _all_within((self.value,), self.goal, self.higher_is_better):
            return "goal"
        if self.seed and _all_within((self.value,), self.seed, self.higher_is_better):
            return "seed"
        return "miss"

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "suite": self.suite,
            "name": self.name,
            "unit": self.unit,
            "verdict": self.verdict(),
            "samples": self.samples,
        }
        for key in ("p50", "p99", "p999", "value"):
            val = getattr(self, key)
            if val is not None:
                out[key] = round(val, 3)
        if self.seed:
            out["seed"] = list(self.seed)
        if self.goal:
            out["goal"] = list(self.goal)
        if self.note:
            out["note"] = self.note
        if self.extra:
            out["extra"] = {k: round(v, 3) for k, v in self.extra.items()}
        return out


def _all_within(got: Sequence[float | None], target: Sequence[float], higher: bool) -> bool:
    for value, limit in zip(got, target, strict=False):
        if value is None or math.isnan(value):
            return False
        if (value < limit) if higher else (value > limit):
            return False
    return True


def latency_row(
    suite: str,
    name: str,
    samples_s: Sequence[float],
    *,
    seed: tuple[float, float, float] | tuple[()] = (),
    goal: tuple[float, float] | tuple[()] = (),
    note: str = "",
) -> Row:
    """A latency row from raw samples in seconds; figures are reported in microseconds."""
    ordered = sorted(s * 1e6 for s in samples_s)
    return Row(
        suite,
        name,
        "us",
        p50=percentile(ordered, 50),
        p99=percentile(ordered, 99),
        p999=percentile(ordered, 99.9),
        seed=seed,
        goal=goal,
        samples=len(ordered),
        note=note,
        dist=tuple(percentile(ordered, q) for q in range(101)) if ordered else (),
    )


def figure_row(
    suite: str,
    name: str,
    value: float,
    unit: str,
    *,
    higher_is_better: bool,
    seed: float | None = None,
    goal: float | None = None,
    note: str = "",
    samples: int = 1,
    extra: dict[str, float] | None = None,
) -> Row:
    return Row(
        suite,
        name,
        unit,
        value=value,
        higher_is_better=higher_is_better,
        seed=() if seed is None else (seed,),
        goal=() if goal is None else (goal,),
        note=note,
        samples=samples,
        extra=extra or {},
    )


def median_rows(runs: Sequence[Sequence[Row]]) -> list[Row]:
    """Merge repeated runs row by row (by suite and name), taking the median of each figure."""
    order: list[tuple[str, str]] = []
    grouped: dict[tuple[str, str], list[Row]] = {}
    for run in runs:
        for row in run:
            key = (row.suite, row.name)
            if key not in grouped:
                order.append(key)
                grouped[key] = []
            grouped[key].append(row)
    merged: list[Row] = []
    for key in order:
        rows = grouped[key]
        first = rows[0]

        def med(attr: str, rows: list[Row] = rows) -> float | None:
            vals = [getattr(r, attr) for r in rows if getattr(r, attr) is not None]
            return statistics.median(vals) if vals else None

        merged.append(
            replace(
                first,
                p50=med("p50"),
                p99=med("p99"),
                p999=med("p999"),
                value=med("value"),
                samples=sum(r.samples for r in rows),
                extra={k: statistics.median(r.extra[k] for r in rows if k in r.extra)
                       for k in dict.fromkeys(k for r in rows for k in r.extra)},
                dist=_median_dist([r.dist for r in rows if r.dist]),
            )
        )  # fmt: skip
    return merged


def _median_dist(dists: Sequence[tuple[float, ...]]) -> tuple[float, ...]:
    """The pointwise median of several runs' percentile curves."""
    if not dists:
        return ()
    return tuple(statistics.median(points) for points in zip(*dists, strict=True))
