"""What a chaos scenario reports, and how it becomes a benchmark row."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

from lapce_bridge.bench.report import Row, figure_row


@dataclass(frozen=True, slots=True)
class ChaosContext:
    workdir: Path
    quick: bool = False  # fewer rounds: a smoke test
    shells: tuple[str, ...] = ("bash",)
    seed: int = 14  # every random choice of a scenario (kill delays, file contents) from it
    # Tests only: each scenario breaks its own recovery path, to prove it would see the loss.
    break_recovery: bool = False

    def n(self, full: int, quick: int = 1) -> int:
        return quick if self.quick else full

    def patience(self, seconds: float) -> float:
        """How long to wait for a recovery: shorter where it was broken on purpose."""
        return min(seconds, 3.0) if self.break_recovery else seconds

    def rng(self, salt: str) -> random.Random:
        return random.Random(f"{self.seed}:{salt}")


@dataclass(frozen=True, slots=True)
class ChaosResult:
    """One scenario's outcome. RTO figures are medians over `rounds` in milliseconds."""

    scenario: str
    rto_ms: float
    lost: int  # items lost: markers, requests, writes, output bytes (RPO; must be 0)
    rounds: int
    seed_ms: float
    goal_ms: float
    ok: bool
    detail: str = ""
    extra: dict[str, float] = field(default_factory=dict)
    more: list[Row] = field(default_factory=list)  # a scenario's own figures (a success rate)

    def rows(self) -> list[Row]:
        return [
            figure_row(
                "chaos",
                f"{self.scenario}: RTO",
                self.rto_ms,
                "ms",
                higher_is_better=False,
                seed=self.seed_ms,
                goal=self.goal_ms,
                note=self.detail,
                samples=self.rounds,
                extra=self.extra,
            ),
            figure_row(
                "chaos",
                f"{self.scenario}: lost (RPO)",
                float(self.lost),
                "items",
                higher_is_better=False,
                seed=0.0,
                goal=0.0,
                samples=self.rounds,
            ),
            *self.more,
        ]
