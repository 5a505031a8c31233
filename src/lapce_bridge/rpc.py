"""How a service exposes JSON-RPC methods to the server, without knowing the server.

A service returns `{method_name: Method}` from `methods()`. The server validates the envelope,
looks the method up, and either calls a synchronous handler inline (cheap methods: no Task,
which costs 50-70 us), starts a relay (`Method.relay`: work done elsewhere, answered by a
callback) or runs an async handler in a Task it can cancel (`$/cancelRequest`).
Handlers receive the params object and a `CallContext`; they raise `BridgeError`s (or any
exception, which the server classifies) and return JSON-ready values (dicts, lists, str, ...).
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

Params = dict[str, Any]

DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024
"""The largest message a transport carries by default; services size their answers by it."""


class CallContext(Protocol):
    @property
    def connection_id(self) -> int: ...

    @property
    def received_at(self) -> float:
        """The clock time at which the request arrived (for `durationMs`)."""
        ...

    def notify(self, method: str, params: Any) -> None:
        """Send a notification to the connection that made this request."""
        ...

    def on_close(self, callback: Callable[[], None]) -> None:
        """Run `callback` once when this request's connection closes (release its watches)."""
        ...


def notify_with_answer(ctx: CallContext, method: str, params: Any) -> None:
    """Send `ctx`'s caller a notification that comes just before this request's answer
    (`terminal/commandFinished` before the command's result). A server connection's context
    (`notify_with_answer` of its own) holds it until the answer and writes both at once: one
    write, one wake-up of the client, the same order on the wire. Once the answer has gone,
    or from a context that cannot hold it, it is sent at once."""
    hold = getattr(ctx, "notify_with_answer", None)
    if hold is not None:
        hold(method, params)
    else:
        ctx.notify(method, params)


SyncHandler = Callable[[Params, CallContext], Any]
AsyncHandler = Callable[[Params, CallContext], Awaitable[Any]]
Broadcast = Callable[[str, Any], None]
"""Sends a server-to-client notification to every connected client."""
Observe = Callable[[str, float, bool], None]
"""Records one operation: (operation name, duration in seconds, success)."""


Limit = Callable[[Params], float | None]
"""The seconds a request's own params allow it to run (None: no bound of its own).

Long work carries its own limits (`terminal/execute`'s `timeoutMs` and `maxWaitMs`,
`terminal/wait`'s `timeoutMs`): the dispatcher's limit for such a method follows from them and
is never shorter than the configured one. A `Limit` may raise `InvalidParams`."""

Validate = Callable[[Params], None]
"""Checks a method's params before its handler runs; raises `InvalidParams`."""


class Answer(Protocol):
    """Where the outcome of a relayed request goes, once."""

    @property
    def request_id(self) -> int | str | None:
        """The client's id of the request (None: `framed` is not taken)."""
        ...

    def __call__(self, result: Any, error: BaseException | None) -> None:
        """The outcome (a result, or the error raised): encoded and answered here."""
        ...

    def framed(self, frames: bytes) -> None:
        """A result already as the client reads it, framed where the work was done: the
        notifications that ride with it, then the response for `request_id`, each in the
        client protocol's framing; written as it came, observed as a success."""
        ...


Relay = Callable[[Params, CallContext, Answer], Callable[[], None] | None]
"""Starts a request whose outcome comes back through `Answer`, from a later callback of the
event loop, never from within this call: no Task, no loop turn before the work leaves or
after its outcome comes (the terminal host's forwarding). Returns the function that
withdraws it (its outcome is no longer wanted: a cancel, a timeout, the connection gone;
`Answer` is then not called), or None when it cannot start now: the dispatcher then runs
the method's handler as usual."""


@dataclass(frozen=True, slots=True)
class Method:
    """A handler as the dispatcher runs it. Its name is the key it is registered under:
    that one name is the operation in timeouts, health targets, metrics, logs and alerts."""

    handler: SyncHandler | AsyncHandler
    is_async: bool
    limit: Limit | None = None
    validate: Validate | None = None
    idempotent: bool = False
    """The handler is idempotent by `idempotencyKey` itself (`fs/watch`: a repeat gets the
    watch back, alive): the dispatcher checks the key but journals nothing for it."""
    relay: Relay | None = None
    """The same work as `handler`, started with no Task when it can be (see `Relay`)."""


def method(
    handler: SyncHandler | AsyncHandler,
    *,
    limit: Limit | None = None,
    validate: Validate | None = None,
    idempotent: bool = False,
    relay: Relay | None = None,
) -> Method:
    return Method(handler, inspect.iscoroutinefunction(handler), limit, validate, idempotent, relay)


def request_limit(configured: float, meth: Method, params: Params) -> float | None:
    """The limit for one request: `configured`, or longer when its own params allow more
    (None: no limit but the work's own and the caller's cancel). May raise `InvalidParams`."""
    own = meth.limit(params) if meth.limit is not None else None
    if own is None:
        return configured
    if own == float("inf"):
        return None
    return max(configured, own)
