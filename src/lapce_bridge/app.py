"""The composition root: one clock, one bus, the kernel's monitors, the services, one method table.

Theory of operation: `App` builds everything a server needs from a handful of choices
(workspace, state directory, clock, recovery matrix) and is an async context manager:
entering it opens the services (each a `Service`: an async context manager with `methods()`
and `relief()`), leaving it closes them in reverse order. Wiring, in one place:

- `observe(op, seconds, ok)` feeds both the metrics registry (`metrics/get`) and the health
  monitor (`health/get`, alerts); services and the server call it for every operation.
- `broadcast(method, params)` forwards to every sink a server registered (one per server),
  so services can be built before the server that will carry their notifications.
- Health alerts published on the bus leave as `health/alert` broadcasts.
- The degradation manager decides which optional features are on; services ask it.
- The recovery matrix is the running policy: the file service's read retries are the
  filesystem/recoverable row's (`RecoveryMatrix.retry_policy`); change the row, and they change.
- With services (the serving configuration) a resource manager samples memory pressure: it
  steps quality down and up, feeds `pressure` in health, and `admit()` refuses new async
  (expensive) requests with -32005 while it throttles.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any, Protocol

from lapce_bridge.clock import SYSTEM_CLOCK
from lapce_bridge.core.clock import Clock
from lapce_bridge.core.degradation import DegradationManager
from lapce_bridge.core.errors import ErrorCategory, ErrorSeverity
from lapce_bridge.core.events import EventBus
from lapce_bridge.core.health import ALERT_TYPES, HealthMonitor
from lapce_bridge.core.matrix import DEFAULT_MATRIX, RecoveryMatrix
from lapce_bridge.core.metrics import MetricsRegistry
from lapce_bridge.core.timeouts import TimeoutManager
from lapce_bridge.fs.ops import REAL_FS, FsOps
from lapce_bridge.fs.service import FileService
from lapce_bridge.fs.service import default_retry as fs_default_retry
from lapce_bridge.resources import Relief, ResourceManager
from lapce_bridge.rpc import Broadcast, CallContext, Method, Params, method
from lapce_bridge.schema.checks import checked
from lapce_bridge.terminal.service import TerminalService

log = logging.getLogger("lapce_bridge.app")

MethodsFactory = Callable[["App"], Mapping[str, Method]]


class Service(AbstractAsyncContextManager[Any], Protocol):
    """What the app needs of a service: its methods, and what memory pressure may take back."""

    def methods(self) -> Mapping[str, Method]: ...

    def relief(self) -> Relief: ...


class App:
    def __init__(
        self,
        *,
        workspace: Path | None = None,
        state_dir: Path | None = None,
        clock: Clock | None = None,
        default_shell: str | None = None,
        services: bool = True,
        extra_methods: Mapping[str, Method] | MethodsFactory | None = None,
        timeouts: TimeoutManager | None = None,
        monitor_resources: bool | None = None,
        matrix: RecoveryMatrix = DEFAULT_MATRIX,
        fs_ops: FsOps = REAL_FS,
    ) -> None:
        self.clock: Clock = clock if clock is not None else SYSTEM_CLOCK
        self.workspace = (workspace or Path.cwd()).resolve()
        self.state_dir = state_dir
        self.default_shell = default_shell
        self.bus = EventBus(on_error=self._bus_error)
        self.metrics = MetricsRegistry()
        self.health = HealthMonitor(clock=self.clock, bus=self.bus)
        self.degradation = DegradationManager(bus=self.bus, clock=self.clock)
        self.timeouts = timeouts or TimeoutManager(clock=self.clock)
        self.matrix = matrix
        self._fs_ops = fs_ops  # a fault-injecting FsOps in tests; the real calls otherwise
        self._want_services = services
        self.health_interval = 5.0  # seconds between alert re-checks without traffic
        # The serving configuration samples memory pressure; a bare method table does not.
        self._want_resources = services if monitor_resources is None else monitor_resources
        self.resources: ResourceManager | None = None
        self._extra = extra_methods
        self._sinks: list[Broadcast] = []
        self._counter_sources: list[Callable[[], Mapping[str, int]]] = []
        self._methods: dict[str, Method] = checked(self._own_methods())
        self._stack: AsyncExitStack | None = None
        self.services: list[Service] = []
        self._unsubscribe = [self.bus.subscribe(kind, self._on_alert) for kind in ALERT_TYPES]

    # -- what the server uses -------------------------------------------------------------
    @property
    def methods(self) -> Mapping[str, Method]:
        return self._methods

    def observe(self, op: str, seconds: float, ok: bool) -> None:
        self.metrics.observe(op, seconds, ok)
        self.health.record_operation(op, seconds, ok)

    def features(self) -> dict[str, bool]:
        return self.degradation.features()

    def admit(self, operation: str) -> None:
        """Refuse new expensive work (ResourceExhausted) while memory pressure is high."""
        if self.resources is not None:
            self.resources.admit(operation)

    def add_broadcast_sink(self, sink: Broadcast) -> Callable[[], None]:
        self._sinks.append(sink)

        def remove() -> None:
            if sink in self._sinks:
                self._sinks.remove(sink)

        return remove

    def add_counter_source(self, source: Callable[[], Mapping[str, int]]) -> Callable[[], None]:
        """Counters read when `metrics/get` is answered (no cost on the hot path)."""
        self._counter_sources.append(source)

        def remove() -> None:
            if source in self._counter_sources:
                self._counter_sources.remove(source)

        return remove

    def broadcast(self, method_name: str, params: Any) -> None:
        for sink in list(self._sinks):
            sink(method_name, params)

    # -- reports --------------------------------------------------------------------------
    def health_report(self) -> dict[str, Any]:
        return self.health.report(
            quality_level=self.degradation.level,
            features=self.degradation.features(),
            breakers={},  # the server runs no breakers of its own (the client does)
            pressure=min(100.0, max(0.0, self.resources.pressure)) if self.resources else 0.0,
        )

    def _own_methods(self) -> dict[str, Method]:
        def health_get(params: Params, ctx: CallContext) -> dict[str, Any]:
            return self.health_report()

        def metrics_get(params: Params, ctx: CallContext) -> dict[str, Any]:
            snapshot = self.metrics.snapshot()
            for source in list(self._counter_sources):
                snapshot["counters"].update(source())
            return snapshot

        return {
            "health/get": method(health_get),
            "metrics/get": method(metrics_get),
        }

    def _on_alert(self, alert: Any) -> None:
        self.broadcast("health/alert", alert.to_wire())

    def _bus_error(self, exc: BaseException, event: object) -> None:
        log.error("event handler failed on %r: %s", event, exc)

    # -- life cycle -----------------------------------------------------------------------
    async def __aenter__(self) -> App:
        stack = AsyncExitStack()
        await stack.__aenter__()
        self._stack = stack
        try:
            if self._want_resources:
                self.resources = await stack.enter_async_context(
                    ResourceManager(
                        clock=self.clock,
                        degrade=self.degradation.degrade,
                        restore=self.degradation.restore,
                    )
                )
            if self._want_services:
                await self._open_services(stack)
            await stack.enter_async_context(self._periodic_evaluation())
            extra = self._extra
            if extra is not None:
                self._methods.update(extra(self) if callable(extra) else extra)
        except BaseException:
            await stack.aclose()
            raise
        return self

    @asynccontextmanager
    async def _periodic_evaluation(self) -> AsyncIterator[None]:
        """Re-check health alerts on the clock, so an alert clears even when traffic stops."""

        async def loop() -> None:
            while True:
                await self.clock.sleep(self.health_interval)
                self.health.evaluate()

        task = asyncio.get_running_loop().create_task(loop(), name="health-evaluation")
        try:
            yield None
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def __aexit__(self, *exc: object) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            await stack.aclose()

    async def _open_services(self, stack: AsyncExitStack) -> None:
        for service in (self._terminal_service(), self._file_service()):
            opened: Service = await stack.enter_async_context(service)
            self.services.append(opened)
            self._methods.update(checked(opened.methods()))
            if self.resources is not None:
                # What the resource manager may shrink under memory pressure.
                self.resources.register(opened.relief())

    def _terminal_service(self) -> TerminalService:
        return TerminalService(
            workspace=self.workspace,
            state_dir=self.state_dir or self.workspace / ".lapce-bridge",
            clock=self.clock,
            observe=self.observe,
            broadcast=self.broadcast,
            features=self.degradation,
            default_shell=self.default_shell,
        )

    def _file_service(self) -> FileService:
        retry = self.matrix.retry_policy(
            ErrorCategory.FILESYSTEM, ErrorSeverity.RECOVERABLE, fs_default_retry(self.clock)
        )
        return FileService(
            workspace=self.workspace,
            clock=self.clock,
            observe=self.observe,
            features=self.degradation,
            on_degraded=self.watch_degraded,
            retry=retry,
            ops=self._fs_ops,
        )

    def watch_degraded(self, detail: str) -> None:
        """A watch fell back to polling: count it and tell every client."""
        self.metrics.counter("fs.watch.polling_fallbacks").inc()
        self.broadcast(
            "health/alert", {"kind": "WatcherDegraded", "operation": "fs/watch", "detail": detail}
        )


__all__ = ["App", "MethodsFactory", "Service"]
