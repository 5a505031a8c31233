"""The kernel's foundations: the clock contract, FakeClock, the error tree, the event bus."""

from __future__ import annotations

import asyncio
import builtins
import errno
import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import lapce_bridge
from lapce_bridge.clock import SYSTEM_CLOCK, SystemClock
from lapce_bridge.core.clock import Clock
from lapce_bridge.core.errors import (
    BridgeError,
    BridgeTimeout,
    Cancelled,
    ClassifiedError,
    ConflictError,
    ConnectionLost,
    ErrorCategory,
    ErrorSeverity,
    Fault,
    FileSystemError,
    FileTooLarge,
    InternalError,
    InvalidParams,
    InvalidRequest,
    MessageTooLarge,
    MethodNotFound,
    ParseError,
    PermissionDenied,
    ResourceExhausted,
    ShellCrashed,
    TerminalError,
    Unavailable,
    classify,
    classify_errno,
    to_bridge_error,
)
from lapce_bridge.core.events import EventBus
from lapce_bridge.testing import FakeClock

# -- the clock contract ----------------------------------------------------------------------


def test_both_clocks_satisfy_the_protocol() -> None:
    assert isinstance(SYSTEM_CLOCK, Clock)
    assert isinstance(SystemClock(), Clock)
    assert isinstance(FakeClock(), Clock)


async def test_system_clock_is_monotonic_and_bounds_blocks() -> None:
    readings = [SYSTEM_CLOCK.now() for _ in range(100)]
    assert readings == sorted(readings)
    await SYSTEM_CLOCK.sleep(-5)  # a negative sleep returns at once
    async with SYSTEM_CLOCK.timeout(None):
        await asyncio.sleep(0)
    with pytest.raises(TimeoutError):
        async with SYSTEM_CLOCK.timeout(0):  # already expired: fires at the first await
            await asyncio.Event().wait()


def test_importing_the_core_does_not_import_asyncio() -> None:
    # Every module of the kernel, found rather than listed, so a new one is covered too.
    import lapce_bridge.core as core

    names = sorted(m.name for m in pkgutil.iter_modules(core.__path__, "lapce_bridge.core."))
    assert "lapce_bridge.core.health" in names
    code = f"import sys, importlib\nfor n in {names!r}: importlib.import_module(n)\n"
    code += "print('asyncio' in sys.modules)\n"
    # The child imports the very package under test, wherever it was imported from here.
    env = {**os.environ, "PYTHONPATH": str(Path(lapce_bridge.__file__).parents[1])}
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
        env=env,
    )
    assert out.stdout.strip() == "False"


# -- FakeClock --------------------------------------------------------------------------------


async def test_advance_wakes_sleepers_in_deadline_order(clock: FakeClock) -> None:
    woke: list[tuple[str, float]] = []

    async def sleeper(name: str, seconds: float) -> None:
        await clock.sleep(seconds)
        woke.append((name, clock.now()))

    tasks = [asyncio.create_task(sleeper(n, s)) for n, s in [("c", 3), ("a", 1), ("b", 2)]]
    await clock.wait_for_sleepers(3)
    assert clock.next_deadline() == 1
    await clock.advance(2.5)
    assert woke == [("a", 1.0), ("b", 2.0)]
    assert clock.now() == 2.5
    await clock.advance(0.5)
    await asyncio.gather(*tasks)
    assert woke[-1] == ("c", 3.0)
    assert clock.sleeps == [3, 1, 2]
    assert clock.next_deadline() is None


async def test_sleeps_chained_inside_one_advance_are_honoured(clock: FakeClock) -> None:
    times: list[float] = []

    async def backoff() -> None:
        for delay in (1, 2, 4):
            await clock.sleep(delay)
            times.append(clock.now())

    task = asyncio.create_task(backoff())
    await clock.wait_for_sleepers(1)
    await clock.advance(7)
    await task
    assert times == [1, 3, 7]


async def test_call_later_fires_in_deadline_order_unless_cancelled(clock: FakeClock) -> None:
    fired: list[tuple[str, float]] = []
    clock.call_later(2, lambda: fired.append(("b", clock.now())))
    clock.call_later(1, lambda: fired.append(("a", clock.now())))
    stopped = clock.call_later(1.5, lambda: fired.append(("never", clock.now())))
    stopped.cancel()
    assert clock.pending == 2
    await clock.advance(1.9)
    assert fired == [("a", 1.0)]
    await clock.advance(0.1)
    assert fired == [("a", 1.0), ("b", 2.0)]
    assert clock.next_deadline() is None


async def test_the_system_clock_calls_later_on_the_loop() -> None:
    fired = asyncio.Event()
    stray: list[str] = []
    SYSTEM_CLOCK.call_later(0.01, fired.set)
    SYSTEM_CLOCK.call_later(0.005, lambda: stray.append("cancelled")).cancel()
    async with asyncio.timeout(5):
        await fired.wait()
    assert stray == []


async def test_time_never_goes_backwards(clock: FakeClock) -> None:
    with pytest.raises(ValueError, match="backwards"):
        await clock.advance(-1)


async def test_zero_sleep_is_recorded_and_does_not_block(clock: FakeClock) -> None:
    await clock.sleep(0)
    assert clock.sleeps == [0]
    assert clock.pending == 0


async def test_a_cancelled_sleeper_leaves_the_clock(clock: FakeClock) -> None:
    task = asyncio.create_task(clock.sleep(10))
    await clock.wait_for_sleepers(1)
    assert clock.pending == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert clock.pending == 0
    with pytest.raises(AssertionError, match="expected 1 sleepers"):
        await clock.wait_for_sleepers(1, max_spins=10)


async def test_timeout_fires_at_its_deadline_exactly(clock: FakeClock) -> None:
    async def guarded() -> float:
        with pytest.raises(TimeoutError):
            async with clock.timeout(5):
                await clock.sleep(100)
        return clock.now()

    task = asyncio.create_task(guarded())
    await clock.wait_for_sleepers(2)
    await clock.advance(4.999)
    assert not task.done()
    await clock.advance(0.001)
    assert await task == 5.0
    assert clock.pending == 0


async def test_a_block_that_finishes_in_time_is_not_cancelled(clock: FakeClock) -> None:
    async def guarded() -> str:
        async with clock.timeout(5):
            await clock.sleep(4)
        await clock.sleep(10)  # past the old deadline: nothing fires
        return "done"

    task = asyncio.create_task(guarded())
    await clock.wait_for_sleepers(2)
    await clock.advance(14)
    assert await task == "done"


async def test_timeout_none_never_fires(clock: FakeClock) -> None:
    clock.autojump = True
    async with clock.timeout(None):
        await clock.sleep(1e6)
    assert clock.now() == 1e6


async def test_zero_timeout_without_an_await_leaves_no_stray_cancellation(
    clock: FakeClock,
) -> None:
    async with clock.timeout(0):
        pass
    await asyncio.sleep(0)  # a leftover cancel request would raise CancelledError here
    with pytest.raises(TimeoutError):
        async with clock.timeout(-1):
            await clock.sleep(1)


async def test_nested_timeouts_fire_the_inner_one_first(clock: FakeClock) -> None:
    clock.autojump = True
    async with clock.timeout(10):
        with pytest.raises(TimeoutError):
            async with clock.timeout(2):
                await clock.sleep(5)
        assert clock.now() == 2
        await clock.sleep(3)
    assert clock.now() == 5


async def test_outside_cancellation_is_not_turned_into_a_timeout(clock: FakeClock) -> None:
    async def guarded() -> None:
        async with clock.timeout(5):
            await clock.sleep(100)

    task = asyncio.create_task(guarded())
    await clock.wait_for_sleepers(2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_autojump_moves_time_when_everything_waits(clock: FakeClock) -> None:
    clock.autojump = True
    await clock.sleep(100)
    assert clock.now() == 100
    with pytest.raises(TimeoutError):
        async with clock.timeout(5):
            await clock.sleep(10)
    assert clock.now() == 105


# -- the error tree -----------------------------------------------------------------------------

PROTOCOL_CODES = [
    (TerminalError, -32003),
    (ShellCrashed, -32003),
    (FileSystemError, -32004),
    (ResourceExhausted, -32005),
    (PermissionDenied, -32006),
    (MessageTooLarge, -32007),
    (BridgeTimeout, -32001),
    (Unavailable, -32002),
    (Cancelled, -32800),
    (InvalidParams, -32602),
    (MethodNotFound, -32601),
    (InvalidRequest, -32600),
    (ParseError, -32700),
]


@pytest.mark.parametrize(("cls", "code"), PROTOCOL_CODES)
def test_error_codes_are_the_protocols(cls: type[BridgeError], code: int) -> None:
    err = cls("detail")
    assert err.code == code
    wire = err.to_wire()
    assert set(wire) == {
        "category",
        "severity",
        "retryable",
        "fallbackAvailable",
        "fault",
        "detail",
        "type",
    }
    assert wire["category"] in {c.value for c in ErrorCategory}
    assert wire["severity"] in {s.value for s in ErrorSeverity}
    assert wire["detail"] == "detail"


def test_bridge_error_options() -> None:
    err = FileSystemError("x", errno=errno.EIO, retryable=False, data={"path": "a.txt"})
    assert err.errno == errno.EIO
    assert err.to_wire()["retryable"] is False
    assert err.to_wire()["path"] == "a.txt"
    assert str(TerminalError()) == "TerminalError"
    assert not classify(ConflictError("mtime moved")).retryable
    assert not classify(FileTooLarge("20 MiB")).retryable
    assert not classify(Cancelled()).retryable


RETRYABLE_ERRNOS = {
    getattr(errno, name)
    for name in (
        "EINTR", "EAGAIN", "EBUSY", "ETIMEDOUT", "ECONNRESET", "ECONNABORTED",
        "ECONNREFUSED", "EPIPE", "EIO", "ESTALE", "ENETDOWN", "ENETUNREACH", "EHOSTUNREACH",
        "ETXTBSY", "EDEADLK", "ENOLCK", "EMFILE", "ENFILE", "ENOTCONN", "ESHUTDOWN",
    )
}  # fmt: skip


@given(st.one_of(st.integers(-5, 300), st.sampled_from(sorted(errno.errorcode))))
def test_classify_any_oserror_by_errno(err: int) -> None:
    exc = OSError(err, "msg")  # may construct a subclass: FileNotFoundError, TimeoutError ...
    c = classify(exc)
    assert isinstance(c, ClassifiedError)
    assert c.error is exc
    assert c.retryable == (err in RETRYABLE_ERRNOS)
    if err in (errno.EACCES, errno.EPERM, errno.EROFS):
        assert (c.category, c.severity) == (ErrorCategory.FILESYSTEM, ErrorSeverity.CRITICAL)
    if err in (errno.ENOENT, errno.EISDIR, errno.ENOTDIR, errno.EEXIST):
        assert c.severity is ErrorSeverity.WARNING
    translated = to_bridge_error(exc)
    assert isinstance(translated, BridgeError)
    assert translated.classification == c.classification


def test_classify_errno_without_an_errno_and_for_sockets() -> None:
    assert not classify_errno(None).retryable
    net = classify_errno(errno.EIO, socket=True)
    assert (net.category, net.retryable) == (ErrorCategory.NETWORK, True)


_BUILTIN_EXCEPTIONS = sorted(
    (obj for obj in vars(builtins).values()
     if isinstance(obj, type) and issubclass(obj, BaseException)),
    key=lambda t: t.__name__,
)  # fmt: skip


@given(st.sampled_from(_BUILTIN_EXCEPTIONS), st.text(max_size=20))
def test_classify_never_raises_for_any_builtin_exception(
    kind: type[BaseException], message: str
) -> None:
    exc: BaseException
    if issubclass(kind, BaseExceptionGroup):
        exc = kind(message, [ValueError(message)])
    elif kind is UnicodeDecodeError:
        exc = UnicodeDecodeError("utf-8", b"\xff", 0, 1, message)
    elif kind is UnicodeEncodeError:
        exc = UnicodeEncodeError("ascii", "\xe9", 0, 1, message)
    elif kind is UnicodeTranslateError:
        exc = UnicodeTranslateError("\xe9", 0, 1, message)
    else:
        exc = kind(message)
    c = classify(exc)
    assert c.category in ErrorCategory
    assert c.severity in ErrorSeverity
    if isinstance(exc, KeyboardInterrupt | GeneratorExit):
        assert not c.retryable
        assert c.category is ErrorCategory.USER_CANCELLED
    err = to_bridge_error(exc)
    assert err.classification == c.classification
    assert to_bridge_error(err) is err


@pytest.mark.parametrize(
    "exc", [asyncio.CancelledError(), KeyboardInterrupt(), GeneratorExit(), Cancelled("x")]
)
def test_cancellation_is_never_retryable(exc: BaseException) -> None:
    c = classify(exc)
    assert not c.retryable
    assert not c.fallback_available
    assert c.category is ErrorCategory.USER_CANCELLED
    assert isinstance(to_bridge_error(exc), Cancelled)


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (PermissionError(errno.EACCES, "no"), PermissionDenied),
        (OSError(errno.ENOSPC, "full"), ResourceExhausted),
        (MemoryError(), ResourceExhausted),
        (ConnectionResetError(errno.ECONNRESET, "reset"), ConnectionLost),
        (EOFError(), ConnectionLost),
        (OSError(errno.EIO, "io"), FileSystemError),
        (TimeoutError(), BridgeTimeout),
        # Escaping a handler, these are the server's bugs (-32603), never the caller's params.
        (KeyError("k"), InternalError),
        (UnicodeDecodeError("utf-8", b"\xff", 0, 1, "bad"), InternalError),
        (RuntimeError("boom"), InternalError),
    ],
)
def test_to_bridge_error_picks_the_subclass(exc: BaseException, kind: type[BridgeError]) -> None:
    err = to_bridge_error(exc)
    assert type(err) is kind
    if kind is InternalError:
        assert (err.code, err.classification.fault) == (-32603, Fault.SERVER)
    assert type(exc).__name__ in err.detail
    assert to_bridge_error(exc, "custom").detail == "custom"


def test_filesystem_translation_keeps_the_errno() -> None:
    err = to_bridge_error(OSError(errno.EIO, "io"))
    assert isinstance(err, FileSystemError)
    assert err.errno == errno.EIO


# -- the event bus ------------------------------------------------------------------------------


class Ping:
    pass


class SubPing(Ping):
    pass


def test_publish_reaches_handlers_of_the_exact_type() -> None:
    bus = EventBus()
    got: list[object] = []
    bus.subscribe(Ping, got.append)
    bus.subscribe(Ping, lambda e: got.append(("second", e)))
    event = Ping()
    assert bus.publish(event) == 2
    assert got == [event, ("second", event)]
    assert bus.publish(SubPing()) == 0  # exact type, not subclasses
    assert bus.statistics().published == 2
    assert bus.statistics().delivered == 2


def test_unsubscribe_is_idempotent() -> None:
    bus = EventBus()
    got: list[Ping] = []
    off = bus.subscribe(Ping, got.append)
    off()
    off()
    assert bus.publish(Ping()) == 0
    assert got == []
    assert bus.statistics().subscriptions == 0


def test_subscribing_during_dispatch_does_not_disturb_it() -> None:
    bus = EventBus()
    calls: list[str] = []

    def first(e: Ping) -> None:
        calls.append("first")
        bus.subscribe(Ping, lambda e: calls.append("late"))

    bus.subscribe(Ping, first)
    bus.publish(Ping())
    assert calls == ["first"]
    bus.publish(Ping())
    assert calls == ["first", "first", "late"]


def test_a_failing_handler_neither_stops_the_others_nor_reaches_the_publisher() -> None:
    seen: list[tuple[str, object]] = []
    bus = EventBus(on_error=lambda exc, ev: seen.append((str(exc), ev)))
    got: list[Ping] = []

    def broken(e: Ping) -> None:
        raise RuntimeError("handler bug")

    bus.subscribe(Ping, broken)
    bus.subscribe(Ping, got.append)
    event = Ping()
    assert bus.publish(event) == 2
    assert got == [event]
    assert seen == [("handler bug", event)]
    assert bus.statistics().handler_errors == 1


async def test_system_clock_deadlines_behave_as_asyncio_timeout() -> None:
    """`SystemClock.timeout` (a loop timer and a task cancel) keeps `asyncio.timeout`'s
    contract: the deadline raises TimeoutError; a block that ends in time is not touched
    later; nested deadlines are each their own; a cancel from outside stays a cancel."""
    started = SYSTEM_CLOCK.now()

    async def sleeps_past_it() -> None:
        async with SYSTEM_CLOCK.timeout(0.05):
            await asyncio.sleep(10)

    with pytest.raises(TimeoutError):
        await sleeps_past_it()
    assert 0.04 <= SYSTEM_CLOCK.now() - started < 5
    async with SYSTEM_CLOCK.timeout(0.05):
        await asyncio.sleep(0)
    await asyncio.sleep(0.1)  # its timer was withdrawn: nothing cancels this sleep
    inner_fired = False
    async with SYSTEM_CLOCK.timeout(10):
        try:
            async with SYSTEM_CLOCK.timeout(0.01):
                await asyncio.sleep(10)
        except TimeoutError:
            inner_fired = True
        await asyncio.sleep(0)  # the outer deadline is untouched
    assert inner_fired

    async def outer_fires_around_an_inner() -> None:
        async with SYSTEM_CLOCK.timeout(0.01), SYSTEM_CLOCK.timeout(10):
            await asyncio.sleep(10)

    with pytest.raises(TimeoutError):
        await outer_fires_around_an_inner()

    entered = asyncio.Event()

    async def bounded() -> None:
        async with SYSTEM_CLOCK.timeout(0.05):
            entered.set()
            await asyncio.sleep(10)

    task = asyncio.ensure_future(bounded())
    await entered.wait()
    task.cancel()  # from outside, before the deadline
    with pytest.raises(asyncio.CancelledError):
        await task

    async def cancelled_as_it_expires() -> None:
        async with SYSTEM_CLOCK.timeout(0):
            asyncio.current_task().cancel()  # type: ignore[union-attr]
            await asyncio.sleep(10)

    with pytest.raises(asyncio.CancelledError):  # both: the outside cancel wins
        await asyncio.ensure_future(cancelled_as_it_expires())
