"""The MCP front end as one connection of the JSON-RPC server: the same run path, not a copy.

Theory of operation: `lapce-bridge mcp` builds a `BridgeServer` over the same `App` as
`serve`, but never listens. A `Channel` is its one connection as the services see it (one
connection id: one default terminal, close callbacks run when the MCP session ends), and
`Channel.call(method, params)` sends each tool call as a JSON-RPC request through that
server's own `Dispatcher`: params checked by `Method.validate`, admission under memory
pressure, the method's limit and timeout, idempotency keys, the reply size limit, latency
observed into metrics and health under the method's name, errors counted by their
classification. Whatever runs behind a method name (terminals in this process or in a host
process) is what the tool gets, exactly as a JSON-RPC client would.

A dispatcher per call, run in the calling task (`Dispatcher.request_here`): the SDK runs
each MCP request in a task of its own already, so the work needs no second one. A service
addresses notifications to the request's connection (`terminal/data` while a command
streams), so a call's own outlet receives them and hands them to that call's progress
reporter; every outlet of the channel carries the channel's connection id. The in-flight
bound of one socket connection does not apply: the MCP SDK runs each request in its own
task before the call reaches us, so it would bound nothing.

Answers come back as the outcome the dispatcher encoded (its result, or its error, as
JSON; decoded here) when the work ran in the calling task, else as the JSON-RPC response
it wrote to the call's outlet; an error is rebuilt into its classified `BridgeError`
(`jsonrpc.error_from_wire`), the class the service raised. Cancelling a call (the SDK
cancels the handler on `notifications/cancelled`) cancels the work running in its task, as
`$/cancelRequest` does for a JSON-RPC client (sent as well, for work the dispatcher runs in
a task of its own): a running command is interrupted.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Callable
from typing import Any

import orjson

from lapce_bridge.ipc import jsonrpc
from lapce_bridge.ipc.dispatch import CANCEL, Dispatcher
from lapce_bridge.ipc.jsonrpc import Notification, Request
from lapce_bridge.ipc.state import ServerState

OnData = Callable[[str], None]


class Channel:
    """One connection to a server's dispatcher, in process."""

    def __init__(self, state: ServerState, conn_id: int) -> None:
        self.state = state
        self.id = conn_id
        self.closing = False
        self._ids = itertools.count(1)
        self._closers: list[Callable[[], None]] = []

    async def call(self, method: str, params: dict[str, Any], on_data: OnData | None = None) -> Any:
        """The result of `method`, run as the server runs a request; raises its BridgeError."""
        outlet = _CallOutlet(self, on_data)
        dispatcher = Dispatcher(self.state, outlet)
        req_id = next(self._ids)
        try:
            # The work runs in this task (the SDK's task for the MCP request) when it can,
            # its outcome given back by the time this returns; else in the dispatcher's,
            # answered through the outlet.
            outcome = await dispatcher.request_here(Request(req_id, method, params))
            answer = await outlet.answered() if outcome is None else None
        except asyncio.CancelledError:
            dispatcher.notification(Notification(CANCEL, {"id": req_id}))
            raise
        if answer is not None:  # a response: the outcome is one of its members
            message = orjson.loads(answer)
            error = message.get("error")
            if error is not None:
                raise jsonrpc.error_from_wire(error)
            return message.get("result")
        assert outcome is not None
        ok, payload = outcome
        if not ok:
            raise jsonrpc.error_from_wire(orjson.loads(payload))
        return orjson.loads(payload)

    def on_close(self, callback: Callable[[], None]) -> None:
        self._closers.append(callback)

    def close(self) -> None:
        """The MCP session is over: what the services tied to this connection is released."""
        self.closing = True
        closers, self._closers = self._closers, []
        for callback in reversed(closers):
            with contextlib.suppress(Exception):
                callback()


class _CallOutlet:
    """The dispatcher's `Outlet` for one call: the answer, and the call's notifications."""

    __slots__ = ("_answer", "_channel", "_on_data", "_waiter")

    def __init__(self, channel: Channel, on_data: OnData | None) -> None:
        self._channel = channel
        self._on_data = on_data
        self._answer: bytes | None = None
        self._waiter: asyncio.Future[bytes] | None = None  # made only when one waits

    @property
    def id(self) -> int:
        return self._channel.id

    @property
    def closing(self) -> bool:
        return self._channel.closing

    async def answered(self) -> bytes:
        """The answer written to this outlet, once it is."""
        if self._answer is not None:
            return self._answer
        if self._waiter is None:
            self._waiter = asyncio.get_running_loop().create_future()
        return await self._waiter

    def write(self, payload: bytes) -> None:
        if self._answer is not None:
            return
        self._answer = payload
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(payload)

    def write_many(self, payloads: list[bytes]) -> None:
        # The answer comes last; the notifications riding with it are for socket clients
        # (`terminal/commandFinished`), which an MCP call does not forward (see `notify`).
        self.write(payloads[-1])

    def notify(self, method: str, params: Any) -> None:
        if method == "terminal/data" and self._on_data is not None:
            self._on_data(params.get("data", ""))

    def on_close(self, callback: Callable[[], None]) -> None:
        self._channel.on_close(callback)


__all__ = ["Channel"]
