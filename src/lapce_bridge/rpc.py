"""How a service exposes JSON-RPC methods to the server, without knowing the server.

A service returns `{method_name: Method}` from `methods()`. The server validates the envelope,
looks the method up, and either calls a synchronous handler inline (cheap methods: no Task,
which costs 50-70 us) or runs an async handler in a Task it can cancel (`$/cancelRequest`).
Handlers receive the params object and a `CallContext`; they raise `BridgeError`s (or any
exception, which the server classifies) and return JSON-ready values (dicts, lists, str, ...).
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

Params = dict[str, Any]


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


SyncHandler = Callable[[Params, CallContext], Any]
AsyncHandler = Callable[[Params, CallContext], Awaitable[Any]]
Broadcast = Callable[[str, Any], None]
"""Sends a server-to-client notification to every connected client."""
Observe = Callable[[str, float, bool], None]
"""Records one operation: (operation name, duration in seconds, success)."""


@dataclass(frozen=True, slots=True)
class Method:
    handler: SyncHandler | AsyncHandler
    is_async: bool
    operation: str  # the name used for metrics, health and timeouts

    async def call_async(self, params: Params, ctx: CallContext) -> Any:
        result = self.handler(params, ctx)
        if self.is_async:
            return await result
        return result


def method(handler: SyncHandler | AsyncHandler, operation: str) -> Method:
    return Method(handler, inspect.iscoroutinefunction(handler), operation)
