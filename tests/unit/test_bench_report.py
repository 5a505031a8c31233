"""The benchmark report: percentiles, verdicts, medians of runs; the kernel suite end to end."""

from __future__ import annotations

import math
from fractions import Fraction
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lapce_bridge.bench import kernel
from lapce_bridge.bench.report import Row, figure_row, latency_row, median_rows, percentile
from lapce_bridge.bench.runner import BenchContext, render, run_label, run_suites

# -- percentile ------------------------------------------------------------------------------


def test_percentile_is_nearest_rank() -> None:
    ten = [float(i) for i in range(1, 11)]
    assert percentile(ten, 50) == 5.0
    assert percentile(ten, 90) == 9.0
    assert percentile(ten, 91) == 10.0
    assert percentile(ten, 99) == 10.0
    assert percentile(ten, 100) == 10.0
    assert percentile(ten, 0) == 1.0
    assert percentile([7.0], 99.9) == 7.0
    assert math.isnan(percentile([], 50))


def test_p999_of_a_thousand_samples_is_not_the_maximum() -> None:
    # 99.9 / 100 * 1000 is 999.0000000000001 in floats; rounding that up gave the maximum.
    samples = [float(i) for i in range(1, 1001)]
    assert percentile(samples, 99.9) == 999.0
    assert percentile([float(i) for i in range(1, 2001)], 99.9) == 1998.0


@given(
    n=st.integers(1, 3000),
    q=st.sampled_from([50, 90, 95, 99, 99.5, 99.9, 99.99, 12.5, 33.3, 100]),
)
def test_percentile_matches_exact_decimal_ranks(n: int, q: float) -> None:
    samples = [float(i) for i in range(1, n + 1)]
    rank = max(1, math.ceil(Fraction(str(q)) * n / 100))
    assert percentile(samples, q) == float(rank)


# -- rows and verdicts -----------------------------------------------------------------------


def test_latency_row_reports_microseconds_from_seconds() -> None:
    row = latency_row("s", "op", [i * 1e-6 for i in range(1, 1001)], seed=(1, 2, 3))
    assert (row.p50, row.p99, row.p999) == pytest.approx((500.0, 990.0, 999.0))
    assert row.unit == "us"
    assert row.samples == 1000
    assert row.is_latency


@pytest.mark.parametrize(
    ("p50", "p99", "p999", "verdict"),
    [
        (0.4, 1.9, 50.0, "goal"),  # the goal has no p99.9: it is not judged there
        (0.4, 2.1, 50.0, "seed"),
        (0.9, 1.0, 99.0, "seed"),
        (0.9, 11.0, 99.0, "miss"),
        (0.4, 1.9, 101.0, "miss"),  # at the goal, yet over the seed's p99.9
        (1.1, 1.9, 5.0, "miss"),
    ],
)
def test_latency_verdicts(p50: float, p99: float, p999: float, verdict: str) -> None:
    row = Row("s", "op", "us", p50=p50, p99=p99, p999=p999, seed=(1, 10, 100), goal=(0.5, 2))
    assert row.verdict() == verdict


def test_a_goal_without_a_seed_is_judged_alone() -> None:
    assert Row("s", "op", "us", p50=0.6, p99=1.5, p999=9.0, goal=(2, 2)).verdict() == "goal"
    assert Row("s", "op", "us", p50=0.6, p99=2.5, p999=9.0, goal=(2, 2)).verdict() == "miss"


def test_latency_without_targets_is_info_and_without_samples_a_miss() -> None:
    assert latency_row("s", "op", [1e-6]).verdict() == "info"
    empty = latency_row("s", "op", [], seed=(1, 10, 100))
    assert math.isnan(empty.p50 or 0.0)
    assert empty.verdict() == "miss"


@pytest.mark.parametrize(
    ("value", "higher", "verdict"),
    [
        (1_500_000.0, True, "goal"),
        (500_000.0, True, "seed"),
        (50_000.0, True, "miss"),
        (1_000_000.0, True, "goal"),  # reaching the target counts
    ],
)
def test_rate_verdicts(value: float, higher: bool, verdict: str) -> None:
    row = figure_row(
        "s", "rate", value, "events/s", higher_is_better=higher, seed=100_000, goal=1_000_000
    )
    assert row.verdict() == verdict


@pytest.mark.parametrize(("value", "verdict"), [(0.5, "goal"), (5.0, "seed"), (12.0, "miss")])
def test_lower_is_better_figures(value: float, verdict: str) -> None:
    row = figure_row("s", "peak", value, "MB", higher_is_better=False, seed=10.0, goal=1.0)
    assert row.verdict() == verdict


def test_figure_without_targets_or_value_is_info() -> None:
    assert figure_row("s", "x", 3.0, "ms", higher_is_better=False).verdict() == "info"
    assert Row("s", "x", "ms", value=None, seed=(1.0,)).verdict() == "info"


def test_to_json_rounds_and_omits_what_is_absent() -> None:
    row = figure_row(
        "kernel",
        "rate",
        1234.56789,
        "events/s",
        higher_is_better=True,
        seed=100.0,
        note="n",
        extra={"x": 1.23456},
    )
    out = row.to_json()
    assert out == {
        "suite": "kernel",
        "name": "rate",
        "unit": "events/s",
        "verdict": "seed",
        "samples": 1,
        "value": 1234.568,
        "seed": [100.0],
        "note": "n",
        "extra": {"x": 1.235},
    }
    lat = latency_row("kernel", "op", [1e-6, 2e-6]).to_json()
    assert set(lat) == {"suite", "name", "unit", "verdict", "samples", "p50", "p99", "p999"}


# -- medians of runs -------------------------------------------------------------------------


def test_median_rows_merges_runs_by_suite_and_name_in_first_seen_order() -> None:
    def run(scale: float, extra: dict[str, float]) -> list[Row]:
        return [
            Row("k", "lat", "us", p50=1 * scale, p99=2 * scale, p999=3 * scale, samples=10),
            figure_row("k", "rate", 100 * scale, "ops/s", higher_is_better=True, extra=extra),
        ]

    runs = [run(1.0, {"a": 1.0}), run(3.0, {"a": 3.0, "b": 7.0}), run(2.0, {"a": 2.0})]
    runs[2].append(figure_row("k", "late", 5.0, "ms", higher_is_better=False))
    merged = median_rows(runs)
    assert [r.name for r in merged] == ["lat", "rate", "late"]
    lat, rate, late = merged
    assert (lat.p50, lat.p99, lat.p999) == (2.0, 4.0, 6.0)
    assert lat.samples == 30
    assert rate.value == 200.0
    assert rate.extra == {"a": 2.0, "b": 7.0}  # a key seen in only some runs is kept
    assert late.value == 5.0


def test_bench_context_takes_fewer_samples_when_quick() -> None:
    full = BenchContext(Path("."))
    quick = BenchContext(Path("."), quick=True)
    assert full.n(20_000, 500) == 20_000
    assert quick.n(20_000, 500) == 500
    assert quick.n(20_000) == 1000
    assert quick.n(10) == 1


# -- the kernel suite, run for real (quick: a smoke test of the rows, not their figures) -----


async def test_kernel_suite_produces_every_row_with_its_targets(tmp_path: Path) -> None:
    rows = await kernel.run(BenchContext(tmp_path, quick=True))
    by_name = {row.name: row for row in rows}
    assert set(by_name) == {
        "event dispatch, in-process",
        "event processing, in-process",
        "histogram record",
        "metrics observe (per request)",
        "health record (per request)",
        "retry success path",
    }
    dispatch = by_name["event dispatch, in-process"]
    assert (dispatch.seed, dispatch.goal) == ((1, 10, 100), (0.5, 2))
    assert dispatch.samples == 1000
    processing = by_name["event processing, in-process"]
    assert processing.higher_is_better
    assert (processing.seed, processing.goal) == ((100_000,), (1_000_000,))
    for row in rows:
        figures = (row.p50, row.p99, row.p999) if row.is_latency else (row.value,)
        assert all(f is not None and 0 < f < math.inf for f in figures), row
        assert row.verdict() in {"goal", "seed", "miss", "info"}
    assert by_name["retry success path"].extra["bare_await_p50_us"] > 0


def test_run_suites_repeats_and_render_prints_the_table(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    progress: list[str] = []
    rows = run_suites(["kernel"], BenchContext(tmp_path, quick=True), 2, progress.append)
    assert progress == ["run 1/2: kernel", "run 2/2: kernel"]
    assert len(rows) == 6
    assert rows[0].samples == 2000  # two runs' samples together
    render(rows, run_label(2, quick=False))
    out = capsys.readouterr().out
    assert "median of 2 runs" in out
    assert "seed: the specification's target" in out  # the columns are explained
    assert "event dispatch, in-process" in out
    assert "RetryPolicy.run_async" in out  # notes are printed as footnotes


# -- the command: --check, --quick's label, --report -------------------------------------------


def test_latency_rows_keep_their_percentile_curve_and_runs_merge_it() -> None:
    row = latency_row("s", "op", [i * 1e-6 for i in range(1, 201)])
    assert len(row.dist) == 101
    assert row.dist[0] == pytest.approx(1.0)
    assert row.dist[100] == pytest.approx(200.0)
    assert row.dist[50] == pytest.approx(100.0)
    other = latency_row("s", "op", [i * 3e-6 for i in range(1, 201)])
    third = latency_row("s", "op", [i * 2e-6 for i in range(1, 201)])
    (merged,) = median_rows([[row], [other], [third]])
    assert merged.dist == third.dist  # the pointwise median


def test_quick_runs_are_labelled_as_smoke_tests() -> None:
    assert run_label(3, quick=False) == "median of 3 runs"
    label = run_label(1, quick=True)
    assert "quick smoke test" in label
    assert "not figures to quote" in label


@pytest.fixture
def fake_suite(monkeypatch: pytest.MonkeyPatch) -> object:
    from lapce_bridge.bench import runner

    from . import bench_fake_suite

    monkeypatch.setattr(runner, "SUITES", {"fake": "tests.unit.bench_fake_suite"})
    monkeypatch.setattr(bench_fake_suite, "MISS", True)
    monkeypatch.setattr(bench_fake_suite, "RAISE", False)
    monkeypatch.setattr(bench_fake_suite, "GOAL_MISSED", False)
    return bench_fake_suite


def test_check_exits_1_naming_the_row_that_missed(fake_suite: object) -> None:
    from click.testing import CliRunner

    from lapce_bridge.bench.runner import bench

    out = CliRunner().invoke(bench, ["--repeat", "1", "--check"])
    assert out.exit_code == 1, out.output
    assert "missed: fake: rate (its seed)" in out.output
    assert "fast op" not in out.output.split("missed:")[1]
    # Without --check a miss is reported, not a failure.
    assert CliRunner().invoke(bench, ["--repeat", "1"]).exit_code == 0


def test_check_passes_when_every_row_reaches_its_seed(
    fake_suite: object, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from click.testing import CliRunner

    from lapce_bridge.bench.runner import bench

    monkeypatch.setattr(fake_suite, "MISS", False)
    report = tmp_path / "report"
    out = CliRunner().invoke(
        bench, ["--repeat", "2", "--quick", "--check", "--report", str(report)]
    )
    assert out.exit_code == 0, out.output
    assert "quick smoke test" in out.output
    page = (report / "index.html").read_text()
    assert "fast op" in page
    assert "<svg" in page
    assert "Machine" in page


def test_check_on_a_real_suite_agrees_with_its_verdicts(tmp_path: Path) -> None:
    import orjson
    from click.testing import CliRunner

    from lapce_bridge.bench.runner import bench

    out = CliRunner().invoke(
        bench, ["--only", "kernel", "--quick", "--repeat", "1", "--check", "--json"]
    )
    rows = [orjson.loads(line) for line in out.output.splitlines() if line.startswith("{")]
    assert len(rows) == 6
    missed = [
        r["name"]
        for r in rows
        if r["verdict"] == "miss" or (r["verdict"] == "seed" and "goal" in r)
    ]
    assert out.exit_code == (1 if missed else 0), out.output
    for name in missed:
        assert f"kernel: {name} (its" in out.output


def test_a_suite_that_raises_is_a_miss_and_the_run_goes_on(
    fake_suite: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    from click.testing import CliRunner

    from lapce_bridge.bench.runner import bench

    monkeypatch.setattr(fake_suite, "MISS", False)
    monkeypatch.setattr(fake_suite, "RAISE", True)
    out = CliRunner().invoke(bench, ["--repeat", "1", "--check", "--json"])
    assert out.exit_code == 1, out.output
    assert "missed: fake: suite failed: TimeoutError: timed out" in out.output
    assert '"verdict":"miss"' in out.output


def test_check_judges_the_goal_by_default_and_the_seed_when_asked(
    fake_suite: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    from click.testing import CliRunner

    from lapce_bridge.bench.runner import bench

    monkeypatch.setattr(fake_suite, "MISS", False)
    monkeypatch.setattr(fake_suite, "GOAL_MISSED", True)
    out = CliRunner().invoke(bench, ["--repeat", "1", "--check"])
    assert out.exit_code == 1, out.output
    assert "missed: fake: fast op (its goal)" in out.output
    assert CliRunner().invoke(bench, ["--repeat", "1", "--check=seed"]).exit_code == 0
