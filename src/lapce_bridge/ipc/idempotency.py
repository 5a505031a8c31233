"""At-most-once execution of keyed requests, across connections and server restarts.

Theory of operation: a key is in one of three places. Running in this process: `_running`
maps it to the future of its outcome and the task executing it, so a repeat (from any
connection) awaits the same future. Finished, or running when an earlier process died: the
journal row answers it. Unknown: the request is new; the journal row is committed before the
handler starts.

An outcome is `(ok, payload)` where payload is JSON bytes (the result, or the error object),
spliced into each response with `orjson.Fragment` so it is encoded once.

A keyed execution belongs to the server, not to the connection that asked: when that
connection drops, the work goes on and its outcome waits in the journal for the retry. A
cancellation asked for by the client (`$/cancelRequest` by id or by key) ends it with -32800,
recorded as its outcome. A cancellation from the server shutting down leaves the row
`running`, so the next process answers the key with `OutcomeUnknown`.

Work that outlives this process (terminal commands run by the terminal host, `Elsewhere`):
a key whose row a dead server left `running` is passed on again instead of answered
"unknown", because the process that runs it keeps its own at-most-once table and answers the
repeat with the real outcome; a client's cancel of such a key is passed on too.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import orjson

from lapce_bridge.core.errors import Cancelled, InvalidParams, ResourceExhausted, Unavailable
from lapce_bridge.ipc import jsonrpc
from lapce_bridge.ipc.journal import (
    MAX_KEY_LENGTH,
    EntryState,
    IdempotencyJournal,
    OutcomeUnknown,
)

log = logging.getLogger("lapce_bridge.ipc")

Outcome = tuple[bool, bytes]


def shutting_down() -> Unavailable:
    """The answer to work the server will not finish: a client may send it again later."""
    return Unavailable("the server is shutting down", data={"shuttingDown": True})


def check_key(key: Any) -> str:
    if type(key) is not str or not key or len(key) > MAX_KEY_LENGTH:
        raise InvalidParams(
            f"idempotencyKey must be a non-empty string of at most {MAX_KEY_LENGTH}"
        )
    return key


def encode_outcome(ok: bool, value: Any) -> Outcome:
    if not ok:
        return (False, jsonrpc.dumps(jsonrpc.error_object(value)))
    try:
        return (True, jsonrpc.dumps(value))
    except TypeError as exc:
        return (False, jsonrpc.dumps(jsonrpc.error_object(exc)))


class Elsewhere(Protocol):
    """Where some methods' keyed executions run and are kept at most once, beyond us."""

    def outlives(self, method: str) -> bool: ...

    def cancel_key(self, key: str) -> None: ...


class Idempotency:
    def __init__(self, journal: IdempotencyJournal, elsewhere: Elsewhere | None = None) -> None:
        self.journal = journal
        self.elsewhere = elsewhere
        self._running: dict[str, tuple[str, asyncio.Future[Outcome], asyncio.Task[Any] | None]] = {}
        self._client_cancelled: set[str] = set()
        self.replayed = 0
        self.joined = 0
        self.unrecorded = 0

    def lookup(self, key: str, method: str) -> asyncio.Future[Outcome] | Outcome | None:
        """The outcome (or the future of it) for a key seen before; None for a new key."""
        running = self._running.get(key)
        if running is not None:
            _same_method(key, running[0], method)
            self.joined += 1
            return running[1]
        entry = self.journal.get(key)
        if entry is None:
            return None
        _same_method(key, entry.method, method)
        self.replayed += 1
        if entry.state is EntryState.DONE:
            return (entry.ok, entry.payload)
        name = method.partition("#")[0]
        if self.elsewhere is not None and self.elsewhere.outlives(name):
            self.replayed -= 1
            return None  # run it again: where it runs, the key joins it or has its outcome
        unknown = OutcomeUnknown(
            f"request {key!r} ({method.partition('#')[0]}) was running when the server stopped; "
            "its outcome is unknown and it is not run again",
            data={"idempotencyKey": key, "outcome": "unknown"},
        )
        return encode_outcome(False, unknown)

    def run_sync(self, key: str, method: str, call: Callable[[], Outcome]) -> Outcome:
        """Run a cheap handler inline, journalled; `call` gives its encoded outcome."""
        self.journal.begin(key, method)
        outcome = call()
        self._record(key, outcome)
        return outcome

    def start(
        self,
        key: str,
        method: str,
        call: Callable[[], Awaitable[Outcome]],
        then: Callable[[Outcome], None] | None = None,
    ) -> asyncio.Future[Outcome]:
        """Run an async handler in a task the server owns; returns the future of its outcome.
        `then` is given the outcome once it is recorded, in the same step (the future's own
        callbacks run a loop turn later): the first asker answered without that turn."""
        self.journal.begin(key, method)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Outcome] = loop.create_future()
        self._running[key] = (method, future, None)
        task = loop.create_task(self._execute(key, call, future, then), name=f"idempotent {method}")
        self._running[key] = (method, future, task)
        return future

    async def run(self, key: str, method: str, call: Callable[[], Awaitable[Outcome]]) -> Outcome:
        """Run an async handler in the calling task, journalled; its outcome. The caller's
        task is then the server's: whoever owns it must not cancel it when a connection
        goes (the dispatcher's request task, which answers it: no second task, no shield)."""
        self.journal.begin(key, method)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Outcome] = loop.create_future()
        self._running[key] = (method, future, asyncio.current_task())
        return await self._execute(key, call, future)

    async def _execute(
        self,
        key: str,
        call: Callable[[], Awaitable[Outcome]],
        future: asyncio.Future[Outcome],
        then: Callable[[Outcome], None] | None = None,
    ) -> Outcome:
        try:
            try:
                outcome = await call()
            except asyncio.CancelledError:
                if key not in self._client_cancelled:
                    if not future.done():
                        future.set_exception(shutting_down())
                    if then is not None:
                        _tell(then, encode_outcome(False, shutting_down()))
                    raise
                task = asyncio.current_task()
                if task is not None:
                    task.uncancel()  # the client's cancel is its answer, not this task's end
                outcome = encode_outcome(False, Cancelled(f"request {key!r} was cancelled"))
            except Exception as exc:
                outcome = encode_outcome(False, exc)
            self._record(key, outcome)
            if then is not None:
                _tell(then, outcome)
            if not future.done():
                future.set_result(outcome)
            return outcome
        finally:
            self._running.pop(key, None)
            self._client_cancelled.discard(key)
            # Retrieve a stored exception nobody awaited (every waiter's connection dropped).
            if future.done() and not future.cancelled():
                future.exception()

    def _record(self, key: str, outcome: Outcome) -> None:
        try:
            if _refused(outcome):
                self.journal.forget(key)  # nothing ran: the client's retry must run it
                return
            self.journal.finish(key, *outcome)
        except ResourceExhausted:
            # The answer is known and is still given; only a repeat after a restart would
            # then read "outcome unknown" instead of it.
            self.unrecorded += 1
            log.exception("idempotency journal: the outcome of %r was not recorded", key)

    def cancel(self, key: str) -> bool:
        """Cancel the running execution of `key` at the client's request."""
        if self.elsewhere is not None:
            self.elsewhere.cancel_key(key)  # it may run where it outlives us
        running = self._running.get(key)
        if running is None or running[2] is None or running[2].done():
            return False
        self._client_cancelled.add(key)
        running[2].cancel()
        return True

    def tasks(self) -> list[asyncio.Task[Any]]:
        return [t for _, _, t in self._running.values() if t is not None and not t.done()]

    @property
    def running(self) -> int:
        return len(self._running)


def _tell(then: Callable[[Outcome], None], outcome: Outcome) -> None:
    try:
        then(outcome)
    except Exception:  # the outcome is recorded and its future set all the same
        log.exception("idempotency: a callback of an outcome failed")


# Refusals that say "not now, nothing done, try again": under pressure, unavailable.
_REFUSAL_CODES = frozenset({ResourceExhausted.code, Unavailable.code})


def _refused(outcome: Outcome) -> bool:
    ok, payload = outcome
    if ok:
        return False
    error = orjson.loads(payload)
    data = error.get("data")
    return (
        error.get("code") in _REFUSAL_CODES and type(data) is dict and data.get("retryable") is True
    )


def signature(method: str, params: dict[str, Any]) -> str:
    """What a key is bound to: the method and a digest of its params (the key aside), so a
    key reused for a different request is refused instead of answered with another's result."""
    rest = {k: v for k, v in params.items() if k != "idempotencyKey"}
    try:
        body = orjson.dumps(rest, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)
    except TypeError:
        return method
    return f"{method}#{hashlib.blake2b(body, digest_size=12).hexdigest()}"


def _same_method(key: str, first: str, now: str) -> None:
    first_name, _, first_digest = first.partition("#")
    now_name, _, now_digest = now.partition("#")
    if first_name != now_name:
        raise InvalidParams(
            f"idempotencyKey {key!r} was first used for {first_name}, not {now_name}",
            data={"idempotencyKey": key},
        )
    if first_digest and now_digest and first_digest != now_digest:
        raise InvalidParams(
            f"idempotencyKey {key!r} was first used for {first_name} with other params; "
            "a different request needs a key of its own",
            data={"idempotencyKey": key, "reason": "params differ"},
        )


__all__ = [
    "Elsewhere",
    "Idempotency",
    "Outcome",
    "check_key",
    "encode_outcome",
    "shutting_down",
    "signature",
]
