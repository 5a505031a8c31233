"""The SDK's JSON-RPC dispatcher, with each message's handler started as a plain asyncio task.

Theory of operation: the SDK's `JSONRPCDispatcher` reads the connection's messages and
runs each request (and each notification's handler) in a task of its anyio task group.
Since anyio 4.16 every such task is wrapped in a `TaskHandle`, with a cancel scope, an
event, a wrapper coroutine and task-state bookkeeping of its own: about 40 us of the
server's CPU on every message (a quarter of a `ping`), spent on a handle nobody reads.
`AsyncioDispatcher` is that dispatcher with one method replaced, `_spawn`: the handler
runs as an `asyncio` task in the sender's context, as the group's would; what the group
gave those tasks is kept by one task of the group, the keeper:

- when the group is cancelled (the read loop ended, or the connection is torn down), the
  keeper cancels every handler still running and waits for them, so the group (and the
  write stream the dispatcher closes after it) outlives them, as it outlives its own tasks
  (a handler cancelled at shutdown still writes its "Connection closed" answer);
- a handler that fails (the SDK's handlers contain every exception but the one they are
  told to re-raise, `raise_handler_exceptions`) fails the keeper with the same exception,
  which fails the group, as the handler's own failure would have.

Everything else (the read loop, request ids, cancellation through each request's cancel
scope, progress, answers, the inline `initialize`) is the SDK's code, unchanged. The SDK
names `_spawn` private: `usable()` checks that the installed SDK still has it with the
signature this class replaces, and `mcp.stdio` falls back to the SDK's own dispatcher
when it does not.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
from mcp.shared.jsonrpc_dispatcher import JSONRPCDispatcher
from mcp.shared.transport_context import TransportContext

log = logging.getLogger("lapce_bridge.mcp")


def usable() -> bool:
    """Whether the installed SDK's dispatcher spawns through `_spawn(fn, *args, sender_ctx)`."""
    spawn = getattr(JSONRPCDispatcher, "_spawn", None)
    if spawn is None:
        return False
    params = inspect.signature(spawn).parameters
    return list(params)[:2] == ["self", "fn"] and "sender_ctx" in params


class AsyncioDispatcher(JSONRPCDispatcher[TransportContext]):
    """`JSONRPCDispatcher` whose handlers are asyncio tasks kept by one task of its group."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._handlers: set[asyncio.Task[Any]] = set()
        self._keeper: asyncio.Future[None] | None = None  # set: the keeper is gone
        self._failure: BaseException | None = None

    def _spawn(
        self,
        fn: Callable[..., Awaitable[Any]],
        *args: object,
        sender_ctx: contextvars.Context | None,
    ) -> None:
        tg = self._tg
        assert tg is not None
        if self._keeper is None:
            self._keeper = asyncio.get_running_loop().create_future()
            tg.start_soon(self._keep)
        coro: Any = fn(*args)
        loop = asyncio.get_running_loop()
        task = (
            loop.create_task(coro) if sender_ctx is None else sender_ctx.run(loop.create_task, coro)
        )
        self._handlers.add(task)
        task.add_done_callback(self._handler_done)
        if self._keeper.done():  # the group is already gone: nothing may outlive it
            task.cancel()

    def _handler_done(self, task: asyncio.Task[Any]) -> None:
        self._handlers.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is None:
            return
        keeper = self._keeper
        if self._failure is None and keeper is not None and not keeper.done():
            self._failure = exc
            keeper.set_result(None)
        else:  # the group is failing or gone already: not lost, logged
            log.error("an MCP handler failed after its connection ended", exc_info=exc)

    async def _keep(self) -> None:
        """Lives as long as the group: fails it when a handler fails; when it is cancelled,
        cancels the handlers and waits for them (shielded, as the group waits for its own)."""
        keeper = self._keeper
        assert keeper is not None
        try:
            await asyncio.shield(keeper)
            if self._failure is not None:
                raise self._failure
        finally:
            if not keeper.done():
                keeper.set_result(None)
            with anyio.CancelScope(shield=True):
                while self._handlers:
                    running = list(self._handlers)
                    for task in running:
                        task.cancel()
                    await asyncio.wait(running)


__all__ = ["AsyncioDispatcher", "usable"]
