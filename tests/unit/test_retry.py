from __future__ import annotations

import asyncio
import errno
import itertools
import math
import random
from collections.abc import Callable, Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lapce_bridge.core.errors import Cancelled, FileSystemError, InvalidParams
from lapce_bridge.core.retry import (
    RetryPolicy,
    attempts_made,
    backoff_schedule,
    is_cancellation,
    is_eintr,
)
from lapce_bridge.testing import FakeClock


def eio() -> OSError:
    return OSError(errno.EIO, "I/O error")


def scripted(outcomes: list[BaseException | str]) -> tuple[Callable[[], str], list[int]]:
    """A callable that raises or returns each outcome in turn; counts its calls."""
    calls = [0]
    feed: Iterator[BaseException | str] = iter(outcomes)

    def fn() -> str:
        calls[0] += 1
        item = next(feed)
        if isinstance(item, BaseException):
            raise item
        return item

    return fn, calls


class NoNowClock(FakeClock):
    """Fails the test if the policy reads the time."""

    def now(self) -> float:
        raise AssertionError("the success path must not read the clock")


# -- the schedule --------------------------------------------------------------------------


def test_schedule_is_exponential_and_capped_without_jitter() -> None:
    policy = RetryPolicy(6, 0.05, 0.3, 2.0, 0.0, clock=FakeClock())
    assert list(policy.delays()) == [0.05, 0.1, 0.2, 0.3, 0.3]


def test_one_attempt_means_no_delays() -> None:
    assert list(RetryPolicy(1, clock=FakeClock()).delays()) == []


def test_seeded_rng_makes_the_jittered_schedule_reproducible() -> None:
    a = RetryPolicy(5, jitter=0.5, clock=FakeClock(), rng=random.Random(7))
    b = RetryPolicy(5, jitter=0.5, clock=FakeClock(), rng=random.Random(7))
    first = list(a.delays())
    assert first == list(b.delays())
    assert first != [0.05, 0.1, 0.2, 0.4]  # jitter really moved them


def test_endless_schedule_never_overflows() -> None:
    delays = backoff_schedule(0.01, 5.0, 1e6, 0.0, random.Random(0), None)
    tail = list(itertools.islice(delays, 5000))
    assert tail[0] == 0.01
    assert tail[-1] == 5.0
    assert all(math.isfinite(d) for d in tail)


@given(
    attempts=st.integers(1, 12),
    initial=st.floats(0.0, 5.0),
    extra=st.floats(0.0, 60.0),
    multiplier=st.floats(1.0, 10.0),
    jitter=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**32 - 1),
)
def test_schedule_bounds(
    attempts: int, initial: float, extra: float, multiplier: float, jitter: float, seed: int
) -> None:
    cap = initial + extra
    policy = RetryPolicy(
        attempts, initial, cap, multiplier, jitter, clock=FakeClock(), rng=random.Random(seed)
    )
    delays = list(policy.delays())
    assert len(delays) == attempts - 1
    base = min(cap, initial)
    for delay in delays:
        low = max(0.0, base * (1 - jitter))
        high = min(cap, base * (1 + jitter))
        assert low - 1e-9 <= delay <= high + 1e-9
        base = min(cap, base * multiplier)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_attempts": 0},
        {"initial_delay": -1.0},
        {"initial_delay": 2.0, "max_delay": 1.0},
        {"max_delay": math.inf},
        {"multiplier": 0.5},
        {"jitter": 1.5},
        {"deadline": 0.0},
        {"deadline": math.nan},
        {"eintr_limit": -1},
    ],
)
def test_bad_configuration_is_refused_with_invalid_params(kwargs: dict[str, float]) -> None:
    with pytest.raises(InvalidParams):
        RetryPolicy(clock=FakeClock(), **kwargs)  # type: ignore[arg-type]


# -- running -------------------------------------------------------------------------------


async def test_success_path_calls_once_without_reading_the_clock() -> None:
    clock = NoNowClock()
    policy = RetryPolicy(clock=clock)
    fn, calls = scripted(["ok"])
    assert await policy.run(fn) == "ok"
    assert calls == [1]
    assert clock.sleeps == []
    stats = policy.statistics()
    assert (stats.calls, stats.first_try_failures, stats.retries) == (1, 0, 0)


async def test_retries_with_exact_backoff_delays_then_succeeds() -> None:
    clock = FakeClock(autojump=True)
    policy = RetryPolicy(4, 0.05, 1.0, 2.0, 0.0, clock=clock)
    fn, calls = scripted([eio(), eio(), eio(), "ok"])
    assert await policy.run(fn) == "ok"
    assert calls == [4]
    assert clock.sleeps == [0.05, 0.1, 0.2]
    assert clock.now() == pytest.approx(0.35)
    stats = policy.statistics()
    assert (stats.retries, stats.recovered, stats.exhausted) == (3, 1, 0)
    assert stats.total_delay == pytest.approx(0.35)


async def test_delays_follow_a_manually_advanced_clock() -> None:
    clock = FakeClock()
    policy = RetryPolicy(3, 1.0, 10.0, 2.0, 0.0, clock=clock)
    fn, calls = scripted([eio(), eio(), "ok"])
    task = asyncio.create_task(policy.run(fn))
    await clock.wait_for_sleepers(1)
    assert calls == [1]
    await clock.advance(0.999)
    assert calls == [1]  # not a moment early
    await clock.advance(0.001)
    await clock.wait_for_sleepers(1)
    assert calls == [2]
    await clock.advance(2.0)
    assert await task == "ok"
    assert clock.sleeps == [1.0, 2.0]


async def test_exhausted_reraises_the_last_error_with_attempts_and_a_note() -> None:
    clock = FakeClock(autojump=True)
    policy = RetryPolicy(3, jitter=0.0, clock=clock)
    last = eio()
    fn, calls = scripted([eio(), eio(), last])
    with pytest.raises(OSError) as info:
        await policy.run(fn)
    assert info.value is last
    assert attempts_made(last) == 3
    assert any("gave up after 3 calls" in note for note in last.__notes__)
    assert clock.sleeps == [0.05, 0.1]
    assert calls == [3]
    assert policy.statistics().exhausted == 1


async def test_non_retryable_error_is_raised_at_once_untouched() -> None:
    clock = FakeClock(autojump=True)
    policy = RetryPolicy(clock=clock)
    missing = FileNotFoundError(errno.ENOENT, "gone")
    fn, calls = scripted([missing])
    with pytest.raises(FileNotFoundError) as info:
        await policy.run(fn)
    assert info.value is missing
    assert calls == [1]
    assert clock.sleeps == []
    assert not hasattr(missing, "__notes__")
    assert attempts_made(missing) == 1
    assert policy.statistics().not_retried == 1


async def test_retry_if_overrides_the_classification() -> None:
    clock = FakeClock(autojump=True)
    policy = RetryPolicy(3, jitter=0.0, clock=clock, retry_if=lambda e: isinstance(e, KeyError))
    fn, calls = scripted([KeyError("x"), "ok"])
    assert await policy.run(fn) == "ok"
    fn2, calls2 = scripted([eio()])
    with pytest.raises(OSError):
        await policy.run(fn2)
    assert (calls, calls2) == ([2], [1])


async def test_eintr_is_retried_at_once_without_consuming_attempts() -> None:
    clock = FakeClock(autojump=True)
    policy = RetryPolicy(3, jitter=0.0, clock=clock)
    seq: list[BaseException | str] = [
        eio(),
        InterruptedError(errno.EINTR, "interrupted"),
        FileSystemError("eintr", errno=errno.EINTR),
        eio(),
        InterruptedError(errno.EINTR, "again"),
        "ok",
    ]
    fn, calls = scripted(seq)
    assert await policy.run(fn) == "ok"
    assert calls == [6]
    assert clock.sleeps == [0.05, 0.1]  # only the two EIO failures waited
    assert policy.statistics().eintr_retries == 3


async def test_endless_eintr_is_bounded_by_eintr_limit() -> None:
    clock = FakeClock(autojump=True)
    policy = RetryPolicy(3, jitter=0.0, clock=clock, eintr_limit=4)
    calls = [0]

    def always_eintr() -> None:
        calls[0] += 1
        raise InterruptedError(errno.EINTR, "signal")

    with pytest.raises(InterruptedError):
        await policy.run(always_eintr)
    assert calls == [1 + 4 + 2]  # the first call, 4 immediate retries, 2 backoff retries
    assert clock.sleeps == [0.05, 0.1]


@pytest.mark.parametrize(
    "stop", [asyncio.CancelledError(), KeyboardInterrupt(), SystemExit(1), GeneratorExit()]
)
async def test_base_exceptions_pass_straight_through(stop: BaseException) -> None:
    clock = FakeClock(autojump=True)
    policy = RetryPolicy(clock=clock, retry_if=lambda e: True)
    fn, calls = scripted([stop, "never"])
    with pytest.raises(type(stop)):
        await policy.run(fn)
    assert calls == [1]
    assert clock.sleeps == []


async def test_cancellation_classified_errors_are_never_retried() -> None:
    clock = FakeClock(autojump=True)
    policy = RetryPolicy(clock=clock, retry_if=lambda e: True)
    fn, calls = scripted([eio(), Cancelled("user hit stop"), "never"])
    with pytest.raises(Cancelled):
        await policy.run(fn)
    assert calls == [2]
    assert is_cancellation(Cancelled())
    assert is_cancellation(asyncio.CancelledError())
    assert not is_cancellation(eio())


async def test_cancelled_while_backing_off_stops_without_another_call() -> None:
    clock = FakeClock()
    policy = RetryPolicy(clock=clock)
    fn, calls = scripted([eio(), "never"])
    task = asyncio.create_task(policy.run(fn))
    await clock.wait_for_sleepers(1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await clock.advance(10)
    assert calls == [1]
    assert clock.pending == 0


async def test_deadline_stops_before_a_sleep_that_would_pass_it() -> None:
    clock = FakeClock(autojump=True)
    policy = RetryPolicy(5, jitter=0.0, clock=clock, deadline=0.12)
    fn, calls = scripted([eio(), eio(), eio()])
    with pytest.raises(OSError) as info:
        await policy.run(fn)
    assert clock.sleeps == [0.05]  # 0.05 + 0.1 would end at 0.15 > 0.12
    assert calls == [2]
    assert "deadline" in info.value.__notes__[-1]
    assert policy.statistics().deadline_exceeded == 1


async def test_deadline_counts_the_time_the_first_attempt_took() -> None:
    clock = FakeClock(autojump=True)
    policy = RetryPolicy(5, jitter=0.0, clock=clock, deadline=0.12)
    calls = [0]

    async def slow_failure() -> None:
        calls[0] += 1
        await clock.sleep(0.1)
        raise eio()

    with pytest.raises(OSError):
        await policy.run_async(slow_failure)
    assert calls == [1]  # 0.1 spent + 0.05 backoff > 0.12
    assert clock.sleeps == [0.1]


async def test_run_async_retries_and_reports_each_retry() -> None:
    clock = FakeClock(autojump=True)
    policy = RetryPolicy(3, jitter=0.0, clock=clock)
    errors = [ConnectionResetError(errno.ECONNRESET, "reset"), TimeoutError("slow")]
    seen: list[tuple[int, str, float]] = []
    calls = [0]

    async def flaky() -> int:
        calls[0] += 1
        if errors:
            raise errors.pop(0)
        return 42

    result = await policy.run_async(
        flaky, on_retry=lambda n, exc, d: seen.append((n, type(exc).__name__, d))
    )
    assert result == 42
    assert seen == [(1, "ConnectionResetError", 0.05), (2, "TimeoutError", 0.1)]
    assert clock.sleeps == [0.05, 0.1]


async def test_unbounded_attempts_stop_at_the_deadline() -> None:
    clock = FakeClock(autojump=True)
    policy = RetryPolicy(None, 0.1, 0.4, 2.0, 0.0, clock=clock, deadline=1.0)
    calls = [0]

    def always() -> None:
        calls[0] += 1
        raise eio()

    with pytest.raises(OSError):
        await policy.run(always)
    assert clock.sleeps == [0.1, 0.2, 0.4]  # the next 0.4 would end at 1.1
    assert calls == [4]


def test_is_eintr_recognises_errno_attribute_and_class() -> None:
    assert is_eintr(InterruptedError())
    assert is_eintr(OSError(errno.EINTR, "x"))
    assert is_eintr(FileSystemError("x", errno=errno.EINTR))
    assert not is_eintr(eio())
    assert not is_eintr(ValueError())


@pytest.mark.asyncio
@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.sampled_from(["ok", "eio", "enoent", "eintr"]), min_size=1, max_size=12),
    st.integers(1, 5),
)
async def test_calls_and_sleeps_match_a_reference_model(script: list[str], attempts: int) -> None:
    clock = FakeClock(autojump=True)
    policy = RetryPolicy(attempts, 1.0, 100.0, 2.0, 0.0, clock=clock, eintr_limit=2)
    make: dict[str, Callable[[], OSError]] = {
        "eio": eio,
        "enoent": lambda: FileNotFoundError(errno.ENOENT, "x"),
        "eintr": lambda: InterruptedError(errno.EINTR, "x"),
    }
    outcomes: list[BaseException | str] = [
        "ok" if s == "ok" else make[s]() for s in [*script, "ok"]
    ]
    # The model: walk the script as the policy should.
    expected_sleeps: list[float] = []
    delay, backoffs, eintrs, expected_calls, expect_ok = 1.0, 0, 0, 0, False
    for kind in [*script, "ok"]:
        expected_calls += 1
        if kind == "ok":
            expect_ok = True
            break
        if kind == "eintr" and eintrs < 2:
            eintrs += 1
            continue
        if kind == "enoent" or backoffs == attempts - 1:
            break
        expected_sleeps.append(delay)
        delay, backoffs = delay * 2, backoffs + 1
    fn, calls = scripted(outcomes)
    if expect_ok:
        assert await policy.run(fn) == "ok"
    else:
        with pytest.raises(OSError):
            await policy.run(fn)
    assert calls == [expected_calls]
    assert clock.sleeps == expected_sleeps
