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
- The recovery matrix is the running policy: the file service's read retries, its cached
  copy served when they fail (`cache_previous`) and a failing watch's restarts are the
  filesystem/recoverable row's (`RecoveryMatrix.retry_policy`), the
  alert when a watch falls back to polling the filesystem/critical row's; whether and how
  often a dead shell is recreated, and the alert when it is not, are the terminal/critical
  row's, running again a command it never started the terminal/recoverable row's; change a
  row, and what it governs changes.
- With services (the serving configuration) a resource manager samples pressure (what the
  bridge owns against `memory_budget`, its cgroup limit, the machine only as a last-resort
  floor; CPU as a second signal): it steps quality down and up with the bands, feeds
  `pressure` and `resources` in health, and `admit()` refuses new async work with -32005 that
  the band does not admit (new terminals and watches when high, everything when critical).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from lapce_bridge.clock import SYSTEM_CLOCK
from lapce_bridge.core.clock import Clock
from lapce_bridge.core.degradation import DegradationManager
from lapce_bridge.core.errors import ErrorCategory, ErrorSeverity, Fault, classify
from lapce_bridge.core.events import EventBus
from lapce_bridge.core.health import ALERT_TYPES, AlertCleared, HealthMonitor
from lapce_bridge.core.incidents import (
    RECOVERY_OPERATIONS,
    IncidentEnded,
    IncidentLog,
    IncidentStarted,
)
from lapce_bridge.core.matrix import DEFAULT_MATRIX, RecoveryMatrix, Strategy
from lapce_bridge.core.metrics import MetricsRegistry
from lapce_bridge.core.timeouts import TimeoutManager
from lapce_bridge.rpc import Broadcast, CallContext, Method, Params, method
from lapce_bridge.schema.checks import checked
from lapce_bridge.slo import SloStore

if TYPE_CHECKING:
    from lapce_bridge.core.breaker import BreakerStateChanged, CircuitBreaker, CircuitBreakerConfig
    from lapce_bridge.core.relief import Relief
    from lapce_bridge.fs.ops import FsOps
    from lapce_bridge.fs.service import FileService
    from lapce_bridge.resources import ResourceManager

log = logging.getLogger("lapce_bridge.app")

MethodsFactory = Callable[["App"], Mapping[str, Method]]
SCHEMA_MODULES = ("lapce_bridge.schema.methods", "lapce_bridge.schema.validate")
"""What `schema.checks.SchemaCheck` loads on its first call: loaded while the services open."""
LATER_SERVICE_MODULES = ("lapce_bridge.resources", "lapce_bridge.fs.service")
"""The resource manager's and the file service's, loaded after the terminals opened."""


def terminal_module(terminal_host: bool) -> str:
    """The terminal service's module: the host's proxy, or the terminals themselves."""
    return "lapce_bridge.host.proxy" if terminal_host else "lapce_bridge.terminal.service"


def service_modules(terminal_host: bool) -> tuple[str, ...]:
    """Every module the services load while they open (a warm standby loads them ahead)."""
    return (terminal_module(terminal_host), *SCHEMA_MODULES, *LATER_SERVICE_MODULES)


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
        fs_ops: FsOps | None = None,
        memory_budget: int | None = None,
        slo_path: Path | None = None,
        terminal_host: bool = False,
    ) -> None:
        self.clock: Clock = clock if clock is not None else SYSTEM_CLOCK
        self.workspace = (workspace or Path.cwd()).resolve()
        self.state_dir = state_dir
        self.default_shell = default_shell
        self.bus = EventBus(on_error=self._bus_error)
        self.metrics = MetricsRegistry()
        self.health = HealthMonitor(clock=self.clock, bus=self.bus)
        self.degradation = DegradationManager(bus=self.bus, clock=self.clock)
        self.incidents = IncidentLog(clock=self.clock, bus=self.bus)
        self._counted_open: set[int] = set()  # incidents counted at their start
        self.breakers: dict[str, CircuitBreaker] = {}  # the server's own, by name
        # The SLOs of the specification, kept where the next server finds them (in memory
        # when there is no file to keep them in: a bare method table, a stdio pipe).
        self.slo = SloStore(slo_path, wall=_wall_clock(self.clock))
        self._lost_seen = 0
        self.timeouts = timeouts or TimeoutManager(clock=self.clock)
        self.matrix = matrix
        self._fs_ops = fs_ops  # a fault-injecting FsOps in tests; None: the real calls
        self._want_services = services
        # Terminals in a host process of their own (`lapce_bridge.host`): a server restart
        # loses none. Off, they live in this process (`lapce-bridge mcp`, tests, a bare table).
        self.terminal_host = terminal_host
        self.keyed_elsewhere: Any = None  # the host proxy: keyed terminal work outlives us
        self.health_interval = 5.0  # seconds between alert re-checks without traffic
        # The serving configuration samples memory pressure; a bare method table does not.
        self._want_resources = services if monitor_resources is None else monitor_resources
        self.resources: ResourceManager | None = None
        self.memory_budget = memory_budget  # None: the resource manager's default
        self._reliefs: list[Relief] = []  # offered before the resource manager was open
        self._withdraw: dict[int, Callable[[], None]] = {}  # by id: theirs, once registered
        self._extra = extra_methods
        self._extra_table: dict[str, Method] | None = None
        self._open_listeners: list[Callable[[Mapping[str, Method]], None]] = []
        self._sinks: list[Broadcast] = []
        self._counter_sources: list[Callable[[], Mapping[str, int]]] = []
        self._methods: dict[str, Method] = checked(self._own_methods())
        self._stack: AsyncExitStack | None = None
        self.services: list[Service] = []
        self._unsubscribe = [self.bus.subscribe(kind, self._on_alert) for kind in ALERT_TYPES]
        self._unsubscribe.append(self.bus.subscribe(IncidentStarted, self._on_incident_started))
        self._unsubscribe.append(self.bus.subscribe(IncidentEnded, self._on_incident_ended))

    # -- what the server uses -------------------------------------------------------------
    @property
    def methods(self) -> Mapping[str, Method]:
        return self._methods

    def record_error(self, op: str, error: BaseException) -> None:
        """Count an error answer by its classification; log the server's own timeouts, which
        leave no other trace at the default level (a caller's mistake is not logged)."""
        found = classify(error).classification
        self.metrics.record_error(op, found.category.value, found.fault.value)
        if found.category is ErrorCategory.TIMEOUT and found.fault is Fault.SERVER:
            log.warning("%s timed out: %s", op, error)

    def observe(self, op: str, seconds: float, ok: bool) -> None:
        self.metrics.observe(op, seconds, ok)
        self.health.record_operation(op, seconds, ok)
        kind = RECOVERY_OPERATIONS.get(op)
        if kind is None:
            self.slo.record(op, seconds, ok)
        else:  # a recovery timed by its component: an incident, not a request
            now = self.clock.now()
            self.incidents.record(kind, op, started=now - seconds, ended=now, recovered=ok)

    def features(self) -> dict[str, bool]:
        return self.degradation.features()

    def admit(self, operation: str) -> None:
        """Refuse new work (ResourceExhausted) that pressure does not admit now."""
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
    def gauges(self) -> dict[str, Any]:
        """Figures of the moment for the Prometheus exporter (read from its thread)."""
        out: dict[str, Any] = {
            "quality": self.degradation.level,
            "open_incidents": len(self.incidents.open_incidents()),
            "breakers": self.breaker_states(),
        }
        if self.resources is not None:
            stats = self.resources.statistics()
            out.update(
                pressure=stats.pressure / 100.0,
                owned_bytes=stats.owned_bytes,
                budget_bytes=stats.budget_bytes,
                cpu=stats.cpu_percent / 100.0,
            )
        for source in list(self._counter_sources):
            connections = source().get("ipc.connections")
            if connections is not None:
                out["connections"] = out.get("connections", 0) + connections
        for service in list(self.services):
            statistics = getattr(service, "statistics", None)
            stats_ = statistics() if callable(statistics) else None
            spools = getattr(stats_, "spools", None)
            if stats_ is not None and spools is not None:
                out.update(
                    terminals=stats_.terminals,
                    busy_terminals=stats_.busy,
                    spool_disk_bytes=spools.disk_bytes,
                    spool_memory_bytes=spools.memory_bytes,
                )
        return out

    def breaker_states(self) -> dict[str, str]:
        return {name: b.state.value for name, b in list(self.breakers.items())}

    def health_report(self) -> dict[str, Any]:
        report = self.health.report(
            quality_level=self.degradation.level,
            features=self.degradation.features(),
            breakers=self.breaker_states(),
            pressure=min(100.0, max(0.0, self.resources.pressure)) if self.resources else 0.0,
        )
        if self.resources is not None:
            report["resources"] = self.resources.statistics().to_wire()
        report["slos"] = self.slo.report()
        report["incidents"] = {
            "open": [i.to_wire() for i in self.incidents.open_incidents()],
            "recent": [i.to_wire() for i in self.incidents.recent(10)],
            "total": self.incidents.total,
        }
        return report

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
        if isinstance(alert, AlertCleared):
            log.warning("alert cleared: %s on %s", alert.detail, alert.operation)
        else:
            log.warning("alert raised: %s on %s: %s", alert.kind, alert.operation, alert.detail)
        self.broadcast("health/alert", alert.to_wire())

    def _on_incident_started(self, event: IncidentStarted) -> None:
        i = event.incident
        log.warning("incident %d started: %s %s: %s", i.id, i.kind, i.subject, i.detail)
        # Counted when it starts, so a long one (a disk failing for an hour) shows at once.
        self.metrics.counter(f"incidents.{i.kind}").inc()
        self._counted_open.add(i.id)

    def _on_incident_ended(self, event: IncidentEnded) -> None:
        i = event.incident
        if i.id in self._counted_open:
            self._counted_open.discard(i.id)
        else:  # reported whole by its component: never started on the bus
            self.metrics.counter(f"incidents.{i.kind}").inc()
        outcome = "recovered" if i.recovered else "not recovered"
        log.warning(
            "incident %d %s after %.0f ms: %s %s%s",
            i.id,
            outcome,
            (i.duration or 0.0) * 1000.0,
            i.kind,
            i.subject,
            f": {i.detail}" if i.detail else "",
        )
        self.slo.record_incident(i, self.clock.now())

    def _bus_error(self, exc: BaseException, event: object) -> None:
        log.error("event handler failed on %r: %s", event, exc)

    # -- life cycle -----------------------------------------------------------------------
    async def __aenter__(self) -> App:
        stack = AsyncExitStack()
        await stack.__aenter__()
        self._stack = stack
        try:
            self._open_slo(stack)
            if self._want_services:
                # The terminals first, served the moment they are open (`on_open`): after a
                # restart, the terminals in the host are what a client waits for; the
                # resource manager and the file service open behind them. With the terminal
                # host, the terminals' code is the host's: not loaded here.
                await _import_in_worker(terminal_module(self.terminal_host))
                await self._open_service(stack, self._terminal_service())
            if self._want_resources or self._want_services:
                await _import_in_worker(*LATER_SERVICE_MODULES)
            if self._want_resources:
                from lapce_bridge.resources import (
                    DEFAULT_BUDGET_BYTES,
                    ResourceManager,
                    psutil_sampler,
                )

                self.resources = await stack.enter_async_context(
                    ResourceManager(
                        budget_bytes=self.memory_budget or DEFAULT_BUDGET_BYTES,
                        sampler=psutil_sampler(also=self._host_pids),
                        clock=self.clock,
                        degrade=self.degradation.degrade,
                        restore=self.degradation.restore,
                    )
                )
                for relief in self._reliefs:
                    self._withdraw[id(relief)] = self.resources.register(relief)
            if self._want_services:
                await self._open_service(stack, self._file_service())
            await stack.enter_async_context(self._periodic_evaluation())
            self._methods.update(self._extra_methods())
            promised = self.method_names()
            if set(self._methods) != promised:  # a service serves what it did not name
                raise RuntimeError(
                    f"the app serves {sorted(set(self._methods) ^ promised)} against the names "
                    "it gave before opening (terminal.params.METHODS, fs_methods.FILE_METHODS)"
                )
        except BaseException:
            await stack.aclose()
            raise
        return self

    def _open_slo(self, stack: AsyncExitStack) -> None:
        """Open the SLO store; a previous server that died unclosed is a restart incident."""
        outage = self.slo.open()
        stack.callback(self.slo.close)
        if outage is not None:
            gone = outage.ended - outage.started
            now = self.clock.now()
            self.incidents.record(
                "server_restart",
                "server",
                started=now - gone,
                ended=now,
                recovered=True,
                detail="the previous server stopped without closing (killed or crashed)",
            )

    @asynccontextmanager
    async def _periodic_evaluation(self) -> AsyncIterator[None]:
        """Re-check health alerts on the clock, so an alert clears even when traffic stops;
        write the SLO counts on their own clock (in a worker thread)."""

        async def loop() -> None:
            while True:
                await self.clock.sleep(self.health_interval)
                self.health.evaluate()
                self._count_losses()

        loop_ = asyncio.get_running_loop()
        tasks = [
            loop_.create_task(loop(), name="health-evaluation"),
            loop_.create_task(self.slo.run(self.clock.sleep), name="slo-flush"),
        ]
        try:
            yield None
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    def _count_losses(self) -> None:
        """Messages the server had to drop are data lost, for the SLO (target 0)."""
        lost = 0
        for source in list(self._counter_sources):
            lost += int(source().get("ipc.droppedMessages", 0))
        if lost > self._lost_seen:
            self.slo.record_loss(lost - self._lost_seen)
        self._lost_seen = max(self._lost_seen, lost)

    async def __aexit__(self, *exc: object) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            await stack.aclose()

    async def _open_service(self, stack: AsyncExitStack, service: Service) -> None:
        opened: Service = await stack.enter_async_context(service)
        # Its params are checked against the schema (msgspec Structs, loaded on the first
        # check): loaded here, off the loop, before its methods are served, or the first
        # request would load it on the loop (20-120 ms in which nothing is answered). The
        # host's attach, started on entering, goes on meanwhile.
        await _import_in_worker(*SCHEMA_MODULES)
        self.services.append(opened)
        served = checked(opened.methods())
        self._methods.update(served)
        # What the resource manager may shrink under memory pressure (kept until it opens).
        self.add_relief(opened.relief())
        for listener in list(self._open_listeners):
            listener(served)

    def on_open(self, listener: Callable[[Mapping[str, Method]], None]) -> None:
        """Call `listener(methods)` as each service opens, with the methods it serves: a
        server serves them from then on, before the other services are open."""
        self._open_listeners.append(listener)

    def method_names(self) -> set[str]:
        """Every method this app serves once open, known before it opens (light tables, no
        service code): what a starting server's `initialize` lists. Builds the extra
        methods' table (a factory of them is called here, once)."""
        names = set(self._own_methods()) | set(self._extra_methods())
        if self._want_services:
            from lapce_bridge.fs_methods import FILE_METHODS
            from lapce_bridge.terminal.params import METHODS

            names |= {*METHODS, *FILE_METHODS}
            if self.terminal_host:
                from lapce_bridge.host import STOP_HOST

                names.add(STOP_HOST)
        return names

    def _extra_methods(self) -> Mapping[str, Method]:
        """The extra methods' table, built once (a factory is called with this app, before
        its services open; its handlers run once they are, and what it must do to a
        service when it opens it asks `on_open` for)."""
        if self._extra_table is None:
            extra = self._extra
            table = (extra(self) if callable(extra) else extra) if extra is not None else {}
            self._extra_table = dict(table)
        return self._extra_table

    def add_relief(self, relief: Relief) -> Callable[[], None]:
        """Let the resource manager take back what a component holds (no-op unmonitored);
        offered before it opens (a server built before the services), it is registered then."""
        if self.resources is None:
            self._reliefs.append(relief)

            def withdraw() -> None:
                if relief in self._reliefs:
                    self._reliefs.remove(relief)
                registered = self._withdraw.pop(id(relief), None)
                if registered is not None:
                    registered()

            return withdraw
        return self.resources.register(relief)

    def _terminal_service(self) -> Service:
        state_dir = self.state_dir or self.workspace / ".lapce-bridge"
        from lapce_bridge.terminal.recovery import CrashLoopPolicy

        if self.terminal_host:
            from lapce_bridge.host.proxy import HostProxy

            proxy = HostProxy(
                workspace=self.workspace,
                state_dir=state_dir,
                clock=self.clock,
                observe=self.observe,
                broadcast=self._terminal_broadcast,
                features=self.degradation.features,
                bus=self.bus,
                incident=self._host_incident,
                default_shell=self.default_shell,
                crash_policy=CrashLoopPolicy.from_matrix(self.matrix),
            )
            self.keyed_elsewhere = proxy
            return proxy
        from lapce_bridge.terminal.service import TerminalService

        return TerminalService(
            workspace=self.workspace,
            state_dir=state_dir,
            clock=self.clock,
            observe=self.observe,
            broadcast=self._terminal_broadcast,
            features=self.degradation,
            default_shell=self.default_shell,
            crash_policy=CrashLoopPolicy.from_matrix(self.matrix),
        )

    def _terminal_broadcast(self, method_name: str, params: Any) -> None:
        """The terminal service's notifications. A shell that is not recreated ends in the
        matrix's terminal/critical fallback, which the app carries out: `alert_user` is a
        `health/alert` to every client (kind `TerminalFailed`)."""
        self.broadcast(method_name, params)
        if method_name != "terminal/exited" or params.get("willRecover", True):
            return
        row = self.matrix.lookup(ErrorCategory.TERMINAL, ErrorSeverity.CRITICAL)
        if row.fallback is Strategy.ALERT_USER:
            detail = (
                f"the shell of terminal {params.get('terminalId')} exited "
                f"(status {params.get('exitCode')}) and is not started again"
            )
            log.warning("alert raised: TerminalFailed: %s", detail)
            self.broadcast(
                "health/alert",
                {"kind": "TerminalFailed", "operation": "terminal/execute", "detail": detail},
            )

    def _file_service(self) -> FileService:
        from lapce_bridge.fs.files import DISK_BREAKER
        from lapce_bridge.fs.ops import REAL_FS
        from lapce_bridge.fs.service import FileService
        from lapce_bridge.fs.service import default_retry as fs_default_retry

        retry = self.matrix.retry_policy(
            ErrorCategory.FILESYSTEM, ErrorSeverity.RECOVERABLE, fs_default_retry(self.clock)
        )
        # A failing watch is restarted as often as the same row allows, then polls; a read
        # that fails for good is answered from the cache when the row's fallback says so.
        restarts = (retry.max_attempts or 1) - 1
        row = self.matrix.lookup(ErrorCategory.FILESYSTEM, ErrorSeverity.RECOVERABLE)
        return FileService(
            workspace=self.workspace,
            clock=self.clock,
            observe=self.observe,
            features=self.degradation,
            on_degraded=self.watch_degraded,
            retry=retry,
            ops=self._fs_ops or REAL_FS,
            incidents=self.incidents,
            breaker=self._breaker("fs.disk", DISK_BREAKER),
            watch_restarts=restarts,
            serve_stale=row.fallback is Strategy.CACHE_PREVIOUS,
            # Keyed watches come back after a restart (an in-process App keeps none).
            watch_state=self.state_dir / "watches" if self.state_dir is not None else None,
        )

    def outlives(self, method_name: str) -> bool:
        """Keyed work of `method_name` outlives this server (the terminal host keeps it)."""
        proxy = self.keyed_elsewhere
        return proxy is not None and bool(proxy.outlives(method_name))

    def cancel_key(self, key: str) -> None:
        """A client cancelled keyed work: it may run in the terminal host."""
        if self.keyed_elsewhere is not None:
            self.keyed_elsewhere.cancel_key(key)

    def _host_pids(self) -> list[int]:
        """The terminal host's pid: its shells are ours too, for memory pressure."""
        pid = getattr(self.keyed_elsewhere, "host_pid", None)
        return [pid] if isinstance(pid, int) else []

    def _host_incident(
        self, subject: str, started: float, ended: float, recovered: bool, detail: str
    ) -> None:
        """The terminal host died (and was replaced, or not): never hidden."""
        self.incidents.record(
            "terminal", subject, started=started, ended=ended, recovered=recovered, detail=detail
        )

    def _breaker(self, name: str, config: CircuitBreakerConfig) -> CircuitBreaker:
        """A breaker of the server's, on its clock and bus, reported in health and metrics."""
        from lapce_bridge.core.breaker import BreakerStateChanged, CircuitBreaker

        if not self.breakers:  # (imported with the services, off the start-up path)
            self._unsubscribe.append(self.bus.subscribe(BreakerStateChanged, self._on_breaker))
        breaker = CircuitBreaker(name, config, clock=self.clock, bus=self.bus)
        self.breakers[name] = breaker
        return breaker

    def _on_breaker(self, event: BreakerStateChanged) -> None:
        log.warning("circuit breaker %s: %s -> %s", event.name, event.from_state, event.to_state)

    def watch_degraded(self, detail: str) -> None:
        """A watch fell back to polling: count it. Its native watching is lost for good, a
        filesystem/critical failure: every client is told when that row says `alert_user`."""
        self.metrics.counter("fs.watch.polling_fallbacks").inc()
        row = self.matrix.lookup(ErrorCategory.FILESYSTEM, ErrorSeverity.CRITICAL)
        if Strategy.ALERT_USER not in (row.primary, row.fallback):
            log.warning("file watching degraded (the matrix asks no alert): %s", detail)
            return
        self.broadcast(
            "health/alert", {"kind": "WatcherDegraded", "operation": "fs/watch", "detail": detail}
        )


async def _import_in_worker(*modules: str) -> None:
    """Import what is not loaded yet in a worker thread: a server answers `ping` while its
    services' modules load (imports hold the GIL only in slices; the loop keeps turning)."""
    import importlib
    import sys

    missing = [name for name in modules if name not in sys.modules]
    if missing:
        # The loop takes the GIL back within 0.5 ms (not the default 5 ms) while the worker
        # imports: each step of a request served meanwhile (the terminal host's attach, a
        # client's first answers) would otherwise wait up to 5 ms for the importing thread.
        # Apps opening at once (tests) share the setting: the last one done restores it.
        if not _importing:
            _importing.append(sys.getswitchinterval())
            sys.setswitchinterval(min(_importing[0], 0.0005))
        _importing.append(0.0)
        try:
            await asyncio.to_thread(lambda: [importlib.import_module(name) for name in missing])
        finally:
            _importing.pop()
            if len(_importing) == 1:
                sys.setswitchinterval(_importing.pop())


_importing: list[float] = []  # the switch interval to restore, then one entry per import


def _wall_clock(clock: Clock) -> Callable[[], float]:
    """Wall-clock time for what outlives this process; a test clock stands in for it."""
    if clock is SYSTEM_CLOCK:
        import time

        return time.time
    return clock.now


__all__ = ["App", "MethodsFactory", "Service", "service_modules"]
