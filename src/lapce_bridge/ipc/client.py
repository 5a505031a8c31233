"""`BridgeClient`: requests over LSP framing, and a recovery path that loses nothing.

Theory of operation: a client holds at most one connection (`ipc.wire.Wire`). `request()` is
the plain path: it fails with `ConnectionLost` if the connection drops. It never cuts work
short by default (no client timeout: every method is bounded on the server, long commands
by their own `timeoutMs`/`maxWaitMs`). When a caller's own `timeout` passes, the request
fails with `BridgeTimeout` whose `data` says how to find the work again (`idempotencyKey`:
send the same request with that key to wait for its result), and the work goes on unless
the caller asked for `cancel=True` (then a `$/cancelRequest` goes to the server).
`send_with_recovery()` (`ipc.recovery`) queues,
reconnects and resends so that nothing is lost and nothing runs twice. `spawn()` starts the
server when none listens and restarts it when it dies (`ipc.spawn`). Beside `request`, the
client has a typed method per protocol method (`execute`, `search`, ...: `typed_client`).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from lapce_bridge import __version__
from lapce_bridge.clock import SYSTEM_CLOCK
from lapce_bridge.core.breaker import CircuitBreaker, CircuitBreakerConfig
from lapce_bridge.core.clock import Clock
from lapce_bridge.core.errors import (
    BridgeError,
    BridgeTimeout,
    ConnectionLost,
)
from lapce_bridge.core.matrix import DEFAULT_MATRIX, RecoveryMatrix
from lapce_bridge.core.retry import RetryPolicy
from lapce_bridge.ipc import jsonrpc
from lapce_bridge.ipc.outbox import Outbox
from lapce_bridge.ipc.paths import default_socket_path
from lapce_bridge.ipc.recovery import RecoveryPath, refused_before_running, retry_schedule
from lapce_bridge.ipc.spawn import ServerSupervisor
from lapce_bridge.ipc.wire import Wire, settle
from lapce_bridge.typed_client import TypedMethods

log = logging.getLogger("lapce_bridge.client")

NotificationHandler = Callable[[Any], None]

# Methods that start work outliving a caller's timeout: keyed, so the work can be found again.
KEYED_ON_TIMEOUT = frozenset({"terminal/execute", "fs/write", "fs/edit"})

DEFAULT_BREAKER = CircuitBreakerConfig(
    failure_rate_threshold=50.0,
    sliding_window_size=20,
    minimum_number_of_calls=10,
    wait_duration_in_open=2.0,
    permitted_calls_in_half_open=3,
)


def default_retry(clock: Clock) -> RetryPolicy:
    # A local server restarts in a few hundred ms, and a refused local connect costs tens of
    # microseconds: poll often (at most 50 ms apart) so the wait ends soon after the restart.
    return RetryPolicy(
        max_attempts=None, initial_delay=0.005, max_delay=0.05, multiplier=2.0, clock=clock
    )


class BridgeClient(RecoveryPath, TypedMethods):
    def __init__(
        self,
        socket_path: Path | str | None = None,
        *,
        clock: Clock | None = None,
        breaker_config: CircuitBreakerConfig | None = None,
        retry: RetryPolicy | None = None,
        outbox_limit: int = 1000,
        durable_outbox: Path | None = None,
        request_timeout: float | None = None,
        tcp: tuple[str, int] | None = None,
        token: str | None = None,
        supervisor: ServerSupervisor | None = None,
        client_name: str = "lapce-bridge-client",
        outage_grace: float = 2.0,
        matrix: RecoveryMatrix = DEFAULT_MATRIX,
    ) -> None:
        self.socket_path = Path(socket_path) if socket_path is not None else default_socket_path()
        self.clock = clock or SYSTEM_CLOCK
        self.breaker = CircuitBreaker(
            "ipc-client", breaker_config or DEFAULT_BREAKER, clock=self.clock
        )
        self.retry = retry or default_retry(self.clock)
        self.outbox = Outbox(outbox_limit, durable_outbox)
        self.request_timeout = request_timeout
        self.tcp = tcp
        self.token = token
        self.supervisor = supervisor
        self.client_name = client_name
        self.outage_grace = outage_grace
        self.matrix = matrix
        self.retried = 0  # answers retried because their row said so
        self.server_info: dict[str, Any] | None = None
        self.reconnects = 0
        self._wire: Wire | None = None
        self._ids = itertools.count(1)
        self._handlers: dict[str, list[NotificationHandler]] = {}
        self._reconnect_task: asyncio.Task[None] | None = None
        self._closed = False
        # Entries a previous run left in the durable outbox: their answers land here.
        self.recovered: dict[str, asyncio.Future[Any]] = {}

    # -- connection -----------------------------------------------------------------------
    @property
    def supervised(self) -> bool:
        return self.supervisor is not None

    @property
    def connected(self) -> bool:
        return self._wire is not None and not self._wire.lost

    async def connect(self, *, startup_timeout: float = 15.0) -> BridgeClient:
        """Connect (starting a supervised server and waiting for it) and send what is queued."""
        loop = asyncio.get_running_loop()
        for entry in self.outbox.recovered():
            if entry.future is None:
                entry.future = loop.create_future()
                self.recovered[entry.key] = entry.future
        if self.supervisor is None:
            await self._open()
        else:
            await self._open_with_retry(startup_timeout)
        self._flush()
        return self

    async def _open_with_retry(self, within: float) -> None:
        delays = self.retry.schedule(None)
        async with self.clock.timeout(within):
            while True:
                try:
                    await self._open()
                    return
                except ConnectionLost:
                    await self.clock.sleep(next(delays))

    async def _open(self) -> None:
        if self.supervisor is not None:
            await self.supervisor.ensure_running()
        loop = asyncio.get_running_loop()
        try:
            if self.tcp is not None:
                _, wire = await loop.create_connection(lambda: Wire(self), *self.tcp)
            else:
                _, wire = await loop.create_unix_connection(
                    lambda: Wire(self), str(self.socket_path)
                )
        except OSError as exc:
            raise ConnectionLost(f"cannot connect to {self._where()}: {exc}") from exc
        params: dict[str, Any] = {
            "protocolVersion": 1,
            "clientInfo": {"name": self.client_name, "version": __version__},
        }
        if self.token is not None:
            params["token"] = self.token
        try:
            self.server_info = await self._call(wire, "initialize", params, 10.0)
        except BaseException:
            wire.close()
            raise
        self._wire = wire

    def _where(self) -> str:
        return f"tcp:{self.tcp[0]}:{self.tcp[1]}" if self.tcp else str(self.socket_path)

    # -- plain requests -------------------------------------------------------------------
    async def request(
        self, method: str, params: dict[str, Any] | list[Any] | None = None, *,
        timeout: float | None = None,  # noqa: ASYNC109 - on the injected clock
        cancel: bool = False,
    ) -> Any:  # fmt: skip
        """Send one request and await its result; server errors raise their `BridgeError`.

        With a `timeout` (else `request_timeout`, None by default), work that started a
        command is keyed (an `idempotencyKey` is added unless the caller chose one), so the
        `BridgeTimeout` carries the key that finds it again; it keeps running unless `cancel`.
        """
        wire = self._wire
        if wire is None or wire.lost:
            raise ConnectionLost(f"not connected to {self._where()}")
        limit = timeout if timeout is not None else self.request_timeout
        if limit is not None and method in KEYED_ON_TIMEOUT and type(params) is dict:
            params = {"idempotencyKey": uuid.uuid4().hex, **params}
        delays: Iterator[float] | None = None
        while True:
            try:
                return await self._call(wire, method, params, limit, cancel=cancel)
            except BridgeError as exc:
                if not refused_before_running(exc):
                    raise  # it ran: running it again is the server's call (its own row)
                if delays is None:
                    delays = self.retry_schedule(exc)
                delay = next(delays, None)
                if delay is None:
                    raise
            self.retried += 1
            await self.clock.sleep(delay)
            wire = self._wire
            if wire is None or wire.lost:
                raise ConnectionLost(f"not connected to {self._where()}")

    def retry_schedule(self, exc: BaseException) -> Iterator[float]:
        return retry_schedule(self.matrix, self.retry, exc)

    async def _call(
        self,
        wire: Wire,
        method: str,
        params: Any,
        timeout: float | None,  # noqa: ASYNC109
        *,
        cancel: bool = True,
    ) -> Any:
        msg_id = next(self._ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        wire.pending[msg_id] = future
        try:
            wire.send(jsonrpc.request_bytes(msg_id, method, params))
            async with self.clock.timeout(timeout):
                return await future
        except TimeoutError as exc:
            data: dict[str, Any] = {"operation": method, "seconds": timeout, "cancelled": cancel}
            key = params.get("idempotencyKey") if type(params) is dict else None
            if key is not None:
                data["idempotencyKey"] = key
            if cancel:
                self._cancel_on(wire, {"id": msg_id})
                how = "cancelled"
            elif key is not None:
                how = f"still running: send it again with idempotencyKey {key!r} for its result"
            else:
                how = "still running on the server"
            raise BridgeTimeout(
                f"{method}: no answer within {timeout:g} s ({how})", data=data
            ) from exc
        except asyncio.CancelledError:
            if not future.done():
                self._cancel_on(wire, {"id": msg_id})
            raise
        finally:
            wire.pending.pop(msg_id, None)

    def notify(self, method: str, params: Any = None) -> None:
        wire = self._wire
        if wire is None or wire.lost:
            raise ConnectionLost(f"not connected to {self._where()}")
        wire.send(jsonrpc.notification_bytes(method, params))

    def on_notification(self, method: str, handler: NotificationHandler) -> Callable[[], None]:
        """Call `handler(params)` for each notification `method`; returns an unsubscribe."""
        self._handlers.setdefault(method, []).append(handler)

        def remove() -> None:
            handlers = self._handlers.get(method, [])
            if handler in handlers:
                handlers.remove(handler)

        return remove

    def _cancel_on(self, wire: Wire, params: dict[str, Any]) -> None:
        with contextlib.suppress(ConnectionLost):
            wire.send(jsonrpc.notification_bytes("$/cancelRequest", params))

    # -- incoming -------------------------------------------------------------------------
    def _on_message(self, wire: Wire, msg: dict[str, Any]) -> None:
        method = msg.get("method")
        if method is not None:
            for handler in list(self._handlers.get(method, ())):
                try:
                    handler(msg.get("params"))
                except Exception:
                    log.exception("notification handler for %s failed", method)
            return
        msg_id = msg.get("id")
        if type(msg_id) is not int:
            return
        future = wire.pending.pop(msg_id, None)
        if future is not None:
            if not future.done():
                settle(future, msg)
            return
        entry = wire.entries.pop(msg_id, None)
        if entry is not None:
            self._entry_answered(entry, msg)

    def _on_lost(self, wire: Wire, exc: Exception | None) -> None:
        if self._wire is wire:
            self._wire = None
        lost = ConnectionLost(f"connection to {self._where()} lost" + (f": {exc}" if exc else ""))
        for future in wire.pending.values():
            if not future.done():
                future.set_exception(lost)
        wire.pending.clear()
        for entry in wire.entries.values():
            entry.sent_id = None  # still queued; it votes when its answer finally comes
        wire.entries.clear()
        if self._closed:
            return
        # One lost connection is one failure, however many requests were on it.
        self.breaker.on_error(0.0, lost)
        if len(self.outbox) or self.supervisor is not None:
            self._start_reconnect()

    # -- life cycle -----------------------------------------------------------------------
    async def close(self, *, stop_server: bool = True) -> None:
        self._closed = True
        task = self._reconnect_task
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        wire, self._wire = self._wire, None
        if wire is not None:
            wire.close()
        closed = ConnectionLost("the client was closed")
        for entry in self.outbox.pending():
            if entry.future is not None and not entry.future.done():
                entry.future.set_exception(closed)
                entry.future.exception()
        self.outbox.close()  # a durable outbox keeps what was not answered for next time
        if self.supervisor is not None and stop_server:
            await self.supervisor.stop()

    async def __aenter__(self) -> BridgeClient:
        if not self.connected:
            await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @classmethod
    async def spawn(
        cls,
        socket_path: Path | str | None = None,
        *,
        server_args: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
        max_crashes: int = 5,
        crash_window: float = 60.0,
        stderr_path: Path | None = None,
        **kwargs: Any,
    ) -> BridgeClient:
        """A connected client to a server it starts if none listens, and restarts if it dies."""
        path = Path(socket_path) if socket_path is not None else default_socket_path()
        supervisor = ServerSupervisor(
            path,
            args=server_args,
            env=env,
            clock=kwargs.get("clock"),
            max_crashes=max_crashes,
            crash_window=crash_window,
            stderr_path=stderr_path,
        )
        client = cls(path, supervisor=supervisor, **kwargs)
        try:
            await client.connect()
        except BaseException:
            await client.close()
            raise
        return client


__all__ = ["DEFAULT_BREAKER", "BridgeClient", "default_retry"]
