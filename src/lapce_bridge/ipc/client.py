"""`BridgeClient`: requests over LSP framing, and a recovery path that loses nothing.

Theory of operation: a client composes a `Link` (`ipc.link`: at most one connection, plain
calls, notifications), an `AnswerRetry` and a `RecoveryPath` (`ipc.recovery`). `request()` is
the plain path: it fails with `ConnectionLost` if the connection drops under it; once
connected, a lost connection is re-established in the background, and a request made
meanwhile waits for that (up to the outage grace) instead of failing "not connected". It
never cuts work short by default (no client timeout: every method is bounded on the server,
long commands by their own `timeoutMs`/`maxWaitMs`). When a caller's own `timeout` passes,
the request fails with `BridgeTimeout` whose `data` says how to find the work again
(`idempotencyKey`: send the same request with that key to wait for its result), and the work
goes on unless the caller asked for `cancel=True` (then a `$/cancelRequest` goes to the
server). `send_with_recovery()` (`ipc.recovery`) queues, reconnects and resends so that
nothing is lost and nothing runs twice. `spawn()` starts the server when none listens and
restarts it when it dies (`ipc.spawn`). Beside `request`, the client has a typed method per
protocol method (`execute`, `search`, ...: `typed_client`).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lapce_bridge.clock import SYSTEM_CLOCK
from lapce_bridge.core.breaker import CircuitBreaker, CircuitBreakerConfig
from lapce_bridge.core.clock import Clock
from lapce_bridge.core.errors import BridgeError, ErrorCategory, ErrorSeverity
from lapce_bridge.core.matrix import DEFAULT_MATRIX, UNBOUNDED_RETRIES, RecoveryMatrix
from lapce_bridge.core.retry import RetryPolicy
from lapce_bridge.ipc.link import Endpoint, Link, NotificationHandler
from lapce_bridge.ipc.outbox import Outbox
from lapce_bridge.ipc.paths import default_socket_path
from lapce_bridge.ipc.reattach import STREAMS, Reattach
from lapce_bridge.ipc.recovery import (
    AnswerRetry,
    RecoveryPath,
    Refused,
    refused_before_running,
)
from lapce_bridge.ipc.spawn import ServerSupervisor
from lapce_bridge.typed_client import TypedMethods

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


class BridgeClient(TypedMethods):
    """A `Link` (the connection and plain calls), an `AnswerRetry` (the matrix's retries) and a
    `RecoveryPath` (queue, reconnect, resend), composed; each is reachable for what it owns.
    The typed protocol methods (`TypedMethods`: stateless, written against `request`) are
    its own."""

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
        session: str | None = None,
    ) -> None:
        self.socket_path = Path(socket_path) if socket_path is not None else default_socket_path()
        self.clock = clock or SYSTEM_CLOCK
        self.request_timeout = request_timeout
        self.supervisor = supervisor
        self.matrix = matrix
        self.link = Link(
            Endpoint(
                self.socket_path,
                tcp=tcp,
                token=token,
                client_name=client_name,
                # Named at each handshake: after a reconnect, or a restart of the server with
                # its terminals in the host, this client's default terminal is its own again.
                session=session or uuid.uuid4().hex,
            ),
            self.clock,
            supervisor,
        )
        self.retry = retry or default_retry(self.clock)
        self.answers = AnswerRetry(matrix, self.retry, self.clock)
        self.breaker = CircuitBreaker(
            "ipc-client", breaker_config or DEFAULT_BREAKER, clock=self.clock
        )
        self.recovery = RecoveryPath(
            self.link,
            clock=self.clock,
            breaker=self.breaker,
            retry=self.retry,
            answers=self.answers,
            outbox=Outbox(outbox_limit, durable_outbox),
            matrix=matrix,
            outage_grace=outage_grace,
        )
        # Watches and output streams, re-attached after each reconnect (`ipc.reattach`).
        self.reattach = Reattach(self.link)
        self.recovery.on_reconnected(self.reattach.reconnected)

    # -- what the composed parts count and hold --------------------------------------------
    @property
    def outbox(self) -> Outbox:
        return self.recovery.outbox

    @property
    def recovered(self) -> dict[str, asyncio.Future[Any]]:
        """Futures for the entries a previous run left in the durable outbox, by key."""
        return self.recovery.recovered

    @property
    def reconnects(self) -> int:
        return self.recovery.reconnects

    @property
    def retried(self) -> int:
        """Answers sent again because their row of the recovery matrix said so."""
        return self.answers.retried

    @property
    def server_info(self) -> dict[str, Any] | None:
        return self.link.server_info

    @property
    def supervised(self) -> bool:
        return self.supervisor is not None

    @property
    def connected(self) -> bool:
        return self.link.connected

    # -- connection -----------------------------------------------------------------------
    async def connect(self, *, startup_timeout: float = 15.0) -> BridgeClient:
        """Connect (starting a supervised server and waiting for it) and send what is queued."""
        self.recovery.adopt_recovered()
        if self.supervisor is None:
            await self.link.open()
        else:
            await self.recovery.open_within(startup_timeout)
        self.recovery.flush()
        return self

    # -- requests -------------------------------------------------------------------------
    async def request(
        self, method: str, params: dict[str, Any] | list[Any] | None = None, *,
        timeout: float | None = None,  # noqa: ASYNC109 - on the injected clock
        cancel: bool = False,
    ) -> Any:  # fmt: skip
        """Send one request and await its result; server errors raise their `BridgeError`.

        With a `timeout` (else `request_timeout`, None by default), work that started a
        command is keyed (an `idempotencyKey` is added unless the caller chose one), so the
        `BridgeTimeout` carries the key that finds it again; it keeps running unless `cancel`.
        An answer refusing it before it ran is sent again as its row of the matrix says.
        """
        link = self.link
        if not link.connected:
            # A reconnect under way (the server restarting) is waited for, up to the outage
            # grace; then, still not connected: `ConnectionLost` at once.
            await self.recovery.reconnected_within(self.recovery.outage_grace)
            link.current()
        limit = timeout if timeout is not None else self.request_timeout
        if limit is not None and method in KEYED_ON_TIMEOUT and type(params) is dict:
            params = {"idempotencyKey": uuid.uuid4().hex, **params}
        params = self.reattach.before(method, params)

        async def attempt() -> Any:
            try:
                result = await link.call(method, params, limit, cancel=cancel)
                self.reattach.answered(method, params, result)
                return result
            except BridgeError as exc:
                if refused_before_running(exc):
                    raise Refused(exc) from exc
                raise  # it ran: running it again is the server's call (its own row)

        return await self.answers.run(attempt)

    async def send_with_recovery(
        self,
        method: str,
        params: dict[str, Any] | None = None,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - on the injected clock
        cancel: bool = False,
    ) -> Any:
        """Deliver a request whatever happens to the connection; executed at most once
        (`ipc.recovery`). A streamed `terminal/execute` sent this way resumes its output
        after a reconnect (`ipc.reattach`)."""
        params = dict(params or {})
        if not params.get("idempotencyKey"):
            params["idempotencyKey"] = uuid.uuid4().hex  # one key for every retry
        self.reattach.sent_with_recovery(method, params)
        result = await self.recovery.send(method, params, timeout=timeout, cancel=cancel)
        self.reattach.answered(method, params, result)
        return result

    def notify(self, method: str, params: Any = None) -> None:
        self.link.notify(method, params)

    def on_notification(self, method: str, handler: NotificationHandler) -> Callable[[], None]:
        """Call `handler(params)` for each notification `method`; returns an unsubscribe.
        `terminal/data` comes in order, each byte once, across reconnects (`ipc.reattach`)."""
        if method in STREAMS:
            return self.reattach.on_notification(method, handler)
        return self.link.on_notification(method, handler)

    def on_reconnected(self, listener: Callable[[], None]) -> Callable[[], None]:
        """Call `listener()` after each reconnect of the recovery path (queued requests
        already resent); returns an unsubscribe."""
        return self.recovery.on_reconnected(listener)

    # -- life cycle -----------------------------------------------------------------------
    async def close(self, *, stop_server: bool = True) -> None:
        await self.recovery.close()  # stops reconnecting before the link closes
        await self.reattach.close()
        self.link.close()
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
        max_crashes: int | None = None,
        crash_window: float = 60.0,
        stderr_path: Path | None = None,
        start_timeout: float = 15.0,
        standby: bool = True,
        **kwargs: Any,
    ) -> BridgeClient:
        """A connected client to a server it starts if none listens, and restarts if it dies.

        A server that dies `max_crashes` times within `crash_window` seconds is given up:
        by default as often as the network/critical row of the recovery matrix (`matrix=`)
        allows reconnecting (`reconnect_ipc`, 5 retries: the sixth death ends it). A server
        it started has `start_timeout` seconds to listen; after that, refused connects count
        against the same row's attempts, and reconnecting gives up after them. `standby`:
        keep a warm standby server that takes over when the server dies (`ipc.spawn`)."""
        if max_crashes is None:
            matrix: RecoveryMatrix = kwargs.get("matrix", DEFAULT_MATRIX)
            max_crashes = matrix.attempts(
                ErrorCategory.NETWORK, ErrorSeverity.CRITICAL, unbounded=UNBOUNDED_RETRIES
            )
        path = Path(socket_path) if socket_path is not None else default_socket_path()
        supervisor = ServerSupervisor(
            path,
            args=server_args,
            env=env,
            clock=kwargs.get("clock"),
            max_crashes=max_crashes or 1,
            crash_window=crash_window,
            stderr_path=stderr_path,
            start_timeout=start_timeout,
            standby=standby,
        )
        client = cls(path, supervisor=supervisor, **kwargs)
        try:
            await client.connect(startup_timeout=start_timeout)
        except BaseException:
            await client.close()
            raise
        return client


__all__ = ["DEFAULT_BREAKER", "BridgeClient", "default_retry"]
