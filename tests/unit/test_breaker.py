from __future__ import annotations

import asyncio
import errno
import math
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from lapce_bridge.core.breaker import (
    BreakerStateChanged,
    CircuitBreaker,
    CircuitBreakerConfig,
    CircuitState,
    default_record_exception,
)
from lapce_bridge.core.errors import (
    Cancelled,
    InvalidParams,
    ShellCrashed,
    Unavailable,
    classify,
)
from lapce_bridge.core.events import EventBus
from lapce_bridge.testing import FakeClock

CLOSED, OPEN, HALF_OPEN = CircuitState.CLOSED, CircuitState.OPEN, CircuitState.HALF_OPEN


def make(clock: FakeClock, **kw: Any) -> tuple[CircuitBreaker, list[BreakerStateChanged]]:
    bus = EventBus()
    events: list[BreakerStateChanged] = []
    bus.subscribe(BreakerStateChanged, events.append)
    defaults: dict[str, Any] = {
        "minimum_number_of_calls": 4,
        "sliding_window_size": 10,
        "wait_duration_in_open": 30.0,
        "permitted_calls_in_half_open": 3,
    }
    config = CircuitBreakerConfig(**{**defaults, **kw})
    return CircuitBreaker("dep", config, clock=clock, bus=bus), events


def fail(b: CircuitBreaker, n: int = 1, duration: float = 0.01) -> None:
    for _ in range(n):
        assert b.try_acquire()
        b.on_error(duration, OSError(errno.EIO, "io"))


def succeed(b: CircuitBreaker, n: int = 1, duration: float = 0.01) -> None:
    for _ in range(n):
        assert b.try_acquire()
        b.on_success(duration)


def trip(b: CircuitBreaker) -> None:
    fail(b, b.config.minimum_number_of_calls)
    assert b.state is OPEN


@pytest.mark.parametrize(
    "kwargs",
    [
        {"failure_rate_threshold": 0},
        {"failure_rate_threshold": 101},
        {"slow_call_rate_threshold": -5},
        {"slow_call_duration": -1},
        {"wait_duration_in_open": math.inf},
        {"sliding_window_size": 0},
        {"minimum_number_of_calls": 0},
        {"permitted_calls_in_half_open": 0},
        {"sliding_window_type": "sessions"},
    ],
)
def test_bad_configuration_is_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(InvalidParams):
        CircuitBreakerConfig(**kwargs)


def test_state_values_are_the_wire_names() -> None:
    assert [s.value for s in CircuitState] == [
        "closed",
        "open",
        "half_open",
    ]


def test_trips_when_failure_rate_reaches_threshold_after_minimum_calls(clock: FakeClock) -> None:
    b, events = make(clock)
    fail(b)
    succeed(b, 2)
    assert b.state is CLOSED
    assert b.metrics().failure_rate == -1.0  # 3 calls < minimum 4
    fail(b)  # 2 of 4 failed: 50 %
    assert b.state is OPEN
    m = b.metrics()
    assert (m.failure_rate, m.buffered_calls, m.failed_calls, m.successful_calls) == (50.0, 4, 2, 2)
    assert events == [BreakerStateChanged("dep", CLOSED, OPEN, 0.0)]


def test_the_success_that_completes_the_minimum_can_trip(clock: FakeClock) -> None:
    b, _ = make(clock)
    fail(b, 3)
    succeed(b)  # 3 of 4 failed: 75 %
    assert b.state is OPEN


def test_below_minimum_never_trips_even_at_full_failure(clock: FakeClock) -> None:
    b, events = make(clock, minimum_number_of_calls=5)
    fail(b, 4)
    assert b.state is CLOSED
    assert events == []


def test_open_rejects_with_classified_unavailable(clock: FakeClock) -> None:
    b, _ = make(clock)
    trip(b)
    assert not b.try_acquire()
    with pytest.raises(Unavailable) as info:
        b.acquire()
    err = info.value
    assert err.code == -32002
    assert err.to_wire()["retryable"] is True
    assert err.data["breaker"] == "dep"
    assert err.data["retryAfterMs"] == pytest.approx(30_000)
    assert b.metrics().not_permitted_calls == 2


async def test_open_becomes_half_open_lazily_after_the_wait(clock: FakeClock) -> None:
    b, events = make(clock)
    trip(b)
    await clock.advance(29.999)
    assert b.state is OPEN
    assert not b.try_acquire()
    assert b.retry_after() == pytest.approx(0.001)
    await clock.advance(0.001)
    assert b.try_acquire()
    assert b.state is HALF_OPEN
    assert [e.to_state for e in events] == [OPEN, HALF_OPEN]
    assert events[-1].at == 30.0


async def test_without_automatic_transition_only_an_acquire_moves_it(clock: FakeClock) -> None:
    b, _ = make(clock, automatic_transition_from_open=False)
    trip(b)
    await clock.advance(60)
    assert b.state is OPEN  # reading the state does not move it
    assert b.try_acquire()
    assert b.state is HALF_OPEN


async def test_automatic_transition_shows_half_open_on_read(clock: FakeClock) -> None:
    b, events = make(clock)
    trip(b)
    await clock.advance(30)
    assert b.state is HALF_OPEN
    assert b.metrics().half_open_permits_left == 3
    assert [e.to_state for e in events] == [OPEN, HALF_OPEN]


async def test_half_open_limits_permits_then_closes_on_success(clock: FakeClock) -> None:
    b, events = make(clock)
    trip(b)
    await clock.advance(30)
    assert [b.try_acquire() for _ in range(4)] == [True, True, True, False]
    b.on_success(0.01)
    b.on_success(0.01)
    assert b.state is HALF_OPEN
    b.on_error(0.01, OSError(errno.EIO, "x"))  # 1 of 3 failed: 33 % < 50 %
    assert b.state is CLOSED
    assert b.metrics().buffered_calls == 0
    assert [e.to_state for e in events] == [OPEN, HALF_OPEN, CLOSED]


async def test_half_open_reopens_when_trial_fails_and_waits_again(clock: FakeClock) -> None:
    b, _ = make(clock)
    trip(b)
    await clock.advance(30)
    succeed(b)
    fail(b, 2)
    assert b.state is OPEN
    assert b.metrics().failure_rate == pytest.approx(200 / 3)
    await clock.advance(29)
    assert not b.try_acquire()
    await clock.advance(1)
    assert b.try_acquire()


async def test_release_gives_a_half_open_permit_back(clock: FakeClock) -> None:
    b, _ = make(clock, permitted_calls_in_half_open=1)
    trip(b)
    await clock.advance(30)
    assert b.try_acquire()
    assert not b.try_acquire()
    b.release()
    assert b.try_acquire()
    b.release()
    b.release()  # more releases than permits never exceed the limit
    assert b.metrics().half_open_permits_left == 1


async def test_spurious_releases_cannot_exceed_the_unrecorded_permits(clock: FakeClock) -> None:
    b, _ = make(clock, permitted_calls_in_half_open=2)
    trip(b)
    await clock.advance(30)
    assert b.try_acquire()
    assert b.try_acquire()
    b.on_success(0.01)
    b.release()
    b.release()  # only one permit is still unrecorded
    assert b.metrics().half_open_permits_left == 1


def test_slow_calls_trip_at_the_slow_rate_threshold(clock: FakeClock) -> None:
    b, _ = make(clock, slow_call_duration=2.0, slow_call_rate_threshold=50.0)
    succeed(b, 2, duration=1.999)
    succeed(b, 1, duration=2.0)  # exactly the limit is slow
    assert b.state is CLOSED
    succeed(b, 1, duration=5.0)
    assert b.state is OPEN
    m = b.metrics()
    assert (m.slow_calls, m.slow_call_rate, m.failure_rate) == (2, 50.0, 0.0)


def test_count_window_forgets_the_oldest_call(clock: FakeClock) -> None:
    b, _ = make(clock, sliding_window_size=4, minimum_number_of_calls=4, failure_rate_threshold=75)
    fail(b, 2)
    succeed(b, 2)
    fail(b, 2)  # window now S S F F: 50 %, the first two failures left it
    assert b.state is CLOSED
    m = b.metrics()
    assert (m.buffered_calls, m.failed_calls) == (4, 2)
    fail(b)  # S F F F: 75 %
    assert b.state is OPEN


def test_count_window_smaller_than_minimum_uses_its_size(clock: FakeClock) -> None:
    b, _ = make(clock, sliding_window_size=3, minimum_number_of_calls=10)
    fail(b, 3)
    assert b.state is OPEN


async def test_time_window_counts_only_the_last_n_seconds(clock: FakeClock) -> None:
    b, _ = make(
        clock, sliding_window_type="time", sliding_window_size=10, minimum_number_of_calls=3
    )
    fail(b)  # second 0
    await clock.advance(5.5)
    fail(b)  # second 5
    await clock.advance(5.0)  # now 10.5: second 0 has left the window (1..10)
    fail(b)
    assert b.state is CLOSED
    assert b.metrics().buffered_calls == 2
    fail(b)
    assert b.state is OPEN


async def test_time_window_empties_after_a_long_silence(clock: FakeClock) -> None:
    b, _ = make(clock, sliding_window_type="time", sliding_window_size=5, minimum_number_of_calls=9)
    succeed(b, 3)
    fail(b, 2)
    await clock.advance(4.9)
    assert b.metrics().buffered_calls == 5
    await clock.advance(1000)
    m = b.metrics()
    assert (m.buffered_calls, m.failed_calls, m.slow_calls) == (0, 0, 0)
    fail(b)
    assert b.metrics().buffered_calls == 1


def test_user_errors_count_as_success_and_cancellation_records_nothing(clock: FakeClock) -> None:
    b, _ = make(clock)
    for exc in (FileNotFoundError(errno.ENOENT, "x"), InvalidParams("bad")):
        assert b.try_acquire()
        b.on_error(0.01, exc)
    assert b.try_acquire()
    b.on_error(0.01, Cancelled("stop"))
    assert b.try_acquire()
    b.on_error(0.01, KeyboardInterrupt())
    m = b.metrics()
    assert (m.buffered_calls, m.failed_calls) == (2, 0)
    assert default_record_exception(ShellCrashed("died"))
    assert default_record_exception(Unavailable("inner breaker open"))
    assert not default_record_exception(asyncio.CancelledError())


def test_custom_record_exception(clock: FakeClock) -> None:
    b, _ = make(clock, record_exception=lambda e: isinstance(e, KeyError))
    fail(b, 4)  # OSError is not recorded as a failure here
    assert b.state is CLOSED
    for _ in range(4):
        assert b.try_acquire()
        b.on_error(0.0, KeyError("k"))
    assert b.state is OPEN


async def test_reset_closes_an_open_breaker_with_an_empty_window(clock: FakeClock) -> None:
    b, events = make(clock)
    trip(b)
    assert b.state is OPEN
    assert not b.try_acquire()
    b.reset()
    assert b.state is CLOSED
    assert b.try_acquire()
    m = b.metrics()
    assert (m.not_permitted_calls, m.buffered_calls) == (0, 0)
    assert [(e.from_state, e.to_state) for e in events] == [(CLOSED, OPEN), (OPEN, CLOSED)]


def test_reset_in_closed_clears_metrics_without_an_event(clock: FakeClock) -> None:
    b, events = make(clock)
    fail(b, 3)
    generation = b.generation
    b.reset()
    assert b.metrics().buffered_calls == 0
    assert b.generation == generation + 1
    assert events == []


async def test_call_times_outcomes_on_the_clock(clock: FakeClock) -> None:
    b, _ = make(clock, slow_call_duration=1.0, minimum_number_of_calls=10)

    async def slow() -> str:
        await clock.sleep(1.5)
        return "done"

    task = asyncio.create_task(b.call(slow))
    await clock.wait_for_sleepers(1)
    await clock.advance(1.5)
    assert await task == "done"
    m = b.metrics()
    assert (m.buffered_calls, m.slow_calls, m.failed_calls) == (1, 1, 0)


async def test_call_raises_unavailable_without_running_fn_when_open(clock: FakeClock) -> None:
    b, _ = make(clock)
    trip(b)
    ran = []

    async def fn() -> None:
        ran.append(1)

    with pytest.raises(Unavailable):
        await b.call(fn)
    assert ran == []


async def test_cancelled_call_gives_its_half_open_permit_back(clock: FakeClock) -> None:
    b, _ = make(clock, permitted_calls_in_half_open=1)
    trip(b)
    await clock.advance(30)

    async def hang() -> None:
        await clock.sleep(100)

    task = asyncio.create_task(b.call(hang))
    await clock.wait_for_sleepers(1)
    assert not b.try_acquire()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert b.state is HALF_OPEN
    assert b.try_acquire()


async def test_exactly_the_permitted_calls_get_through_half_open(clock: FakeClock) -> None:
    b, _ = make(clock, permitted_calls_in_half_open=5)
    trip(b)
    await clock.advance(30)
    entered = []

    async def work(i: int) -> int:
        entered.append(i)
        await clock.sleep(1)
        return i

    async def attempt(i: int) -> int | None:
        try:
            return await b.call(lambda: work(i))
        except Unavailable:
            return None

    tasks = [asyncio.create_task(attempt(i)) for i in range(50)]
    await clock.wait_for_sleepers(5)
    await clock.advance(1)
    results = await asyncio.gather(*tasks)
    assert len(entered) == 5
    assert sorted(r for r in results if r is not None) == sorted(entered)
    assert b.state is CLOSED
    assert b.metrics().not_permitted_calls == 45


async def test_calls_admitted_before_a_trip_do_not_vote_in_half_open(clock: FakeClock) -> None:
    b, _ = make(clock, minimum_number_of_calls=2, permitted_calls_in_half_open=2)

    async def sleeper(seconds: float, ok: bool) -> None:
        await clock.sleep(seconds)
        if not ok:
            raise OSError(errno.EIO, "x")

    straggler = asyncio.create_task(b.call(lambda: sleeper(40, False)))
    await clock.wait_for_sleepers(1)
    fail(b, 2)
    assert b.state is OPEN
    await clock.advance(30)
    trial = [asyncio.create_task(b.call(lambda: sleeper(20, True))) for _ in range(2)]
    await clock.wait_for_sleepers(3)
    await clock.advance(10)  # t=40: the straggler fails, with the generation of CLOSED
    with pytest.raises(OSError):
        await straggler
    assert b.state is HALF_OPEN
    assert b.metrics().stale_outcomes == 1
    await clock.advance(10)
    await asyncio.gather(*trial)
    assert b.state is CLOSED


def test_unavailable_classification_is_retryable_but_not_a_user_error() -> None:
    c = classify(Unavailable("x"))
    assert c.retryable
    assert default_record_exception(Unavailable("x"))


# -- the state machine against a reference model --------------------------------------------


class ReferenceBreaker:
    """The specification, written the slow obvious way: lists of outcomes, filtered on read."""

    def __init__(self, config: CircuitBreakerConfig) -> None:
        self.c = config
        self.state = CLOSED
        self.generation = 0
        self.outcomes: list[tuple[float, bool, bool]] = []  # (time, failed, slow)
        self.half_open = False  # whether `outcomes` is a half-open trial
        self.opened_at = 0.0
        self.permits_left = 0
        self.not_permitted = 0

    def window(self, now: float) -> list[tuple[float, bool, bool]]:
        if self.half_open:
            return self.outcomes
        if self.c.sliding_window_type == "time":
            oldest = math.floor(now) - self.c.sliding_window_size
            return [o for o in self.outcomes if math.floor(o[0]) > oldest]
        return self.outcomes[-self.c.sliding_window_size :]

    def minimum(self) -> int:
        if self.half_open:
            return self.c.permitted_calls_in_half_open
        if self.c.sliding_window_type == "time":
            return self.c.minimum_number_of_calls
        return min(self.c.minimum_number_of_calls, self.c.sliding_window_size)

    def rates(self, now: float) -> tuple[float, float] | None:
        w = self.window(now)
        if len(w) < self.minimum():
            return None
        return 100 * sum(o[1] for o in w) / len(w), 100 * sum(o[2] for o in w) / len(w)

    def go(self, state: CircuitState, now: float) -> None:
        if state is self.state:
            return
        self.state = state
        self.generation += 1
        self.permits_left = 0
        if state is OPEN:
            self.opened_at = now
        elif state is HALF_OPEN:
            self.outcomes, self.half_open = [], True
            self.permits_left = self.c.permitted_calls_in_half_open
        else:
            self.outcomes, self.half_open = [], False

    def read_state(self, now: float) -> CircuitState:
        if (
            self.state is OPEN
            and self.c.automatic_transition_from_open
            and now - self.opened_at >= self.c.wait_duration_in_open
        ):
            self.go(HALF_OPEN, now)
        return self.state

    def try_acquire(self, now: float) -> bool:
        if self.state is CLOSED:
            return True
        if self.state is OPEN and now - self.opened_at >= self.c.wait_duration_in_open:
            self.go(HALF_OPEN, now)
        if self.state is HALF_OPEN and self.permits_left > 0:
            self.permits_left -= 1
            return True
        self.not_permitted += 1
        return False

    def outcome(self, generation: int, failed: bool, duration: float, now: float) -> None:
        if generation != self.generation or self.state not in (CLOSED, HALF_OPEN):
            return
        slow = duration >= self.c.slow_call_duration
        self.outcomes.append((now, failed, slow))
        rates = self.rates(now)
        tripped = rates is not None and (
            rates[0] >= self.c.failure_rate_threshold or rates[1] >= self.c.slow_call_rate_threshold
        )
        if self.state is CLOSED and tripped:
            self.go(OPEN, now)
        elif self.state is HALF_OPEN and len(self.outcomes) >= self.c.permitted_calls_in_half_open:
            self.go(OPEN if tripped else CLOSED, now)

    def release(self, generation: int) -> None:
        if generation == self.generation and self.state is HALF_OPEN:
            cap = self.c.permitted_calls_in_half_open - len(self.outcomes)
            self.permits_left = min(cap, self.permits_left + 1)


class BreakerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.clock = FakeClock()
        self.permits: list[int] = []  # generations of the permits handed out

    def teardown(self) -> None:
        self.loop.close()

    @initialize(
        by_time=st.booleans(),
        size=st.integers(1, 8),
        minimum=st.integers(1, 8),
        threshold=st.sampled_from([25.0, 50.0, 100.0]),
        slow_threshold=st.sampled_from([50.0, 100.0]),
        permitted=st.integers(1, 4),
        automatic=st.booleans(),
    )
    def setup(
        self,
        by_time: bool,
        size: int,
        minimum: int,
        threshold: float,
        slow_threshold: float,
        permitted: int,
        automatic: bool,
    ) -> None:
        config = CircuitBreakerConfig(
            failure_rate_threshold=threshold,
            slow_call_rate_threshold=slow_threshold,
            slow_call_duration=1.0,
            sliding_window_type="time" if by_time else "count",
            sliding_window_size=size,
            minimum_number_of_calls=minimum,
            wait_duration_in_open=5.0,
            permitted_calls_in_half_open=permitted,
            automatic_transition_from_open=automatic,
        )
        self.real = CircuitBreaker("m", config, clock=self.clock)
        self.model = ReferenceBreaker(config)

    @rule()
    def acquire(self) -> None:
        got = self.real.try_acquire()
        assert got == self.model.try_acquire(self.clock.now())
        if got:
            self.permits.append(self.real.generation)

    @precondition(lambda self: self.permits)
    @rule(
        pick=st.integers(0, 100),
        failed=st.booleans(),
        duration=st.sampled_from([0.1, 1.0, 3.0]),
    )
    def complete(self, pick: int, failed: bool, duration: float) -> None:
        generation = self.permits.pop(pick % len(self.permits))
        if failed:
            self.real.on_error(duration, OSError(errno.EIO, "x"), generation=generation)
        else:
            self.real.on_success(duration, generation=generation)
        self.model.outcome(generation, failed, duration, self.clock.now())

    @precondition(lambda self: self.permits)
    @rule(pick=st.integers(0, 100))
    def cancel(self, pick: int) -> None:
        generation = self.permits.pop(pick % len(self.permits))
        self.real.on_error(0.0, asyncio.CancelledError(), generation=generation)
        self.model.release(generation)

    @rule(dt=st.sampled_from([0.25, 0.5, 1.0, 2.5, 5.0, 12.0]))
    def advance(self, dt: float) -> None:
        self.loop.run_until_complete(self.clock.advance(dt))

    @rule()
    def reset(self) -> None:
        now = self.clock.now()
        self.real.reset()
        was_closed = self.model.state is CLOSED
        self.model.go(CLOSED, now)
        if was_closed:
            self.model.generation += 1
            self.model.outcomes = []
        self.model.not_permitted = 0

    @invariant()
    def agrees_with_the_model(self) -> None:
        if not hasattr(self, "real"):
            return
        now = self.clock.now()
        assert self.real.state is self.model.read_state(now)
        assert self.real.generation == self.model.generation
        m = self.real.metrics()
        window = self.model.window(now)
        assert m.buffered_calls == len(window)
        assert m.failed_calls == sum(o[1] for o in window)
        assert m.slow_calls == sum(o[2] for o in window)
        assert m.not_permitted_calls == self.model.not_permitted
        rates = self.model.rates(now)
        expected = rates[0] if rates is not None else -1.0
        assert m.failure_rate == pytest.approx(expected)
        if self.model.state is HALF_OPEN:
            assert m.half_open_permits_left == self.model.permits_left


BreakerMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
TestBreakerAgainstModel = BreakerMachine.TestCase
