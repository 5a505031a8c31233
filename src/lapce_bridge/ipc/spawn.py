"""Start `lapce-bridge serve` for a client, restart it when it dies, stop when it crash-loops.

Theory of operation: `ServerSupervisor.ensure_running()` is called by the client before each
connection attempt, and a watcher restarts our process as soon as it exits unasked. If no
server answers on the socket and our process is not alive, `ensure_running` starts
`python -m lapce_bridge serve --socket PATH ...` in its own session (so a terminal's Ctrl-C
aimed at the editor does not reach it). Every exit we did not ask for is a death,
timed on the clock; `max_crashes` deaths within `crash_window` seconds mean a crash loop:
the supervisor gives up and `ensure_running()` raises `Unavailable` with the count and the
last exit status, instead of restarting forever. A server it started has `start_timeout`
seconds to listen (`starting()`): a client's refused connects meanwhile are a start-up, not
a failure.

Warm standby (`standby=True`, the default): `standby_delay` seconds after each start, a
second process is started with `serve --standby` (`ipc.standby`): it loads everything a
server loads, then waits on its stdin, holding nothing. When the server dies, the standby
is told to serve and is the new server: a restart costs binding the socket and opening the
services, not the interpreter's start and the imports (most of the restart time, and all of
what a loaded machine stretches). A standby that finds the package changed under it exits
`STALE` having served nothing, and a server is started afresh (not counted as a death).
The price is a second idle process per supervised client; it ends when its stdin does
(`stop()`, or the client's process exiting).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path

from lapce_bridge.clock import SYSTEM_CLOCK
from lapce_bridge.core.clock import Clock
from lapce_bridge.core.errors import Unavailable
from lapce_bridge.ipc.paths import probe
from lapce_bridge.ipc.standby import GO, READY, STALE

log = logging.getLogger("lapce_bridge.client")


class ServerSupervisor:
    def __init__(
        self,
        socket_path: Path,
        *,
        args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        clock: Clock | None = None,
        max_crashes: int = 5,
        crash_window: float = 60.0,
        python: str = sys.executable,
        stderr_path: Path | None = None,
        start_timeout: float = 15.0,
        standby: bool = True,
        standby_delay: float = 0.25,
    ) -> None:
        self.socket_path = socket_path
        self.start_timeout = start_timeout
        self.started_at: float | None = None
        self.args = tuple(args)
        self.env = dict(env) if env is not None else None
        self.clock = clock or SYSTEM_CLOCK
        self.max_crashes = max_crashes
        self.crash_window = crash_window
        self.python = python
        self.stderr_path = stderr_path
        self.process: asyncio.subprocess.Process | None = None
        self.starts = 0
        self.deaths: deque[float] = deque()
        self.last_exit: int | None = None
        self.exits: list[int] = []  # statuses of the exits we did not ask for
        self.failed: Unavailable | None = None
        self._stopping = False
        self._watch: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self.use_standby = standby
        self.standby_delay = standby_delay
        self.standby: asyncio.subprocess.Process | None = None  # loaded or loading, waiting
        self.promotions = 0  # starts that were a standby told to serve
        self._standby_ready: asyncio.Future[bool] | None = None
        self._preparing: asyncio.Task[None] | None = None
        self._promoted: set[int] = set()  # their pids (an exit `STALE` is no death)
        self._standby_args: tuple[str, ...] = ()  # the options it was started with

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    def starting(self) -> bool:
        """Our server is on its way: being restarted after an exit, or started less than
        `start_timeout` seconds ago (it may not listen yet)."""
        if self.failed is not None or self._stopping or self.process is None:
            return False
        if not self.running:
            return True  # exited unasked: `_watch_exit` starts it again
        started = self.started_at
        return started is not None and self.clock.now() - started < self.start_timeout

    async def ensure_running(self) -> None:
        if self.failed is not None:
            raise self.failed
        async with self._lock:
            if self.running or self._stopping:
                return
            if await asyncio.to_thread(probe, self.socket_path, 0.5):
                return  # someone else's server answers: use it
            # A client reconnects the moment its server dies, so this may run between the
            # exit and its watcher's verdict; the watcher (`_watch_exit`) records the death
            # meanwhile, and at the crash limit nothing is started again.
            if self.failed is not None:
                raise self.failed
            await self._start()

    async def _start(self, *, afresh: bool = False) -> None:
        proc = None if afresh else await self._promote()
        if proc is None:
            proc = await self._spawn()
        self.process = proc
        self.starts += 1
        self.started_at = self.clock.now()
        loop = asyncio.get_running_loop()
        self._watch = loop.create_task(self._watch_exit(proc))
        if self.use_standby and self._preparing is None:
            self._preparing = loop.create_task(self._prepare_standby())

    async def _spawn(self, *extra: str, standby: bool = False) -> asyncio.subprocess.Process:
        cmd = [self.python, "-m", "lapce_bridge", "serve", "--socket", str(self.socket_path)]
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT
        stderr = os.open(self.stderr_path, flags, 0o600) if self.stderr_path else None
        pipe = asyncio.subprocess.PIPE if standby else asyncio.subprocess.DEVNULL
        try:
            return await asyncio.create_subprocess_exec(
                *cmd,
                *self.args,
                *extra,
                stdin=pipe,
                stdout=pipe,
                stderr=stderr if stderr is not None else asyncio.subprocess.DEVNULL,
                env=self.env,
                start_new_session=True,
            )
        finally:
            if stderr is not None:
                os.close(stderr)

    # -- the warm standby --------------------------------------------------------------------
    async def _prepare_standby(self) -> None:
        """A standby, `standby_delay` s after a start (not competing with the server's own
        start for the CPU), unless one waits already."""
        try:
            while True:
                await self.clock.sleep(self.standby_delay)
                spare = self.standby
                if self._stopping or self.failed is not None:
                    return
                if spare is not None and spare.returncode is None:
                    return
                ready = self._standby_ready = asyncio.get_running_loop().create_future()
                self._standby_args = self.args
                spare = self.standby = await self._spawn("--standby", standby=True)
                assert spare.stdout is not None
                line = await spare.stdout.readline()  # READY once loaded; b"" if it died
                ready.set_result(line == READY)
                if self.standby is spare:
                    return
                # Told to serve while it loaded: another one for the server it became.
        finally:
            self._preparing = None

    async def standby_ready(self) -> bool:
        """Whether a standby is loaded and waiting (after waiting for it to load)."""
        if self._preparing is not None:
            await asyncio.shield(self._preparing)
        ready = self._standby_ready
        spare = self.standby
        return (
            ready is not None
            and ready.done()
            and ready.result()
            and spare is not None
            and spare.returncode is None
        )

    async def _promote(self) -> asyncio.subprocess.Process | None:
        """The standby, told to serve; None when there is none alive to tell."""
        spare, self.standby = self.standby, None
        if spare is None or spare.returncode is not None or spare.stdin is None:
            return None
        if self._standby_args != self.args:  # made for other options: not this server
            spare.stdin.close()  # it ends
            return None
        try:
            spare.stdin.write(GO)
            await spare.stdin.drain()
            spare.stdin.close()
        except (BrokenPipeError, ConnectionResetError):
            return None
        self.promotions += 1
        self._promoted.add(spare.pid)
        return spare

    async def _end_standby(self, grace: float) -> None:
        spare, self.standby = self.standby, None
        if self._preparing is not None:
            self._preparing.cancel()
            await asyncio.gather(self._preparing, return_exceptions=True)
        if spare is None or spare.returncode is not None:
            return
        if spare.stdin is not None:
            spare.stdin.close()  # its stdin ends: it exits
        try:
            async with self.clock.timeout(grace):
                await spare.wait()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(spare.pid, signal.SIGKILL)
            await spare.wait()

    async def _watch_exit(self, proc: asyncio.subprocess.Process) -> None:
        code = await proc.wait()
        self.last_exit = code
        if self._stopping:
            return
        if code == STALE and proc.pid in self._promoted:
            # A standby whose package changed under it, told to serve: it served nothing.
            log.info("the standby (pid %d) had old code loaded; starting a server", proc.pid)
            async with self._lock:
                if not (self.running or self._stopping):
                    await self._start(afresh=True)
            return
        self.exits.append(code)
        log.warning("the server (pid %d) exited unasked with status %s", proc.pid, code)
        now = self.clock.now()
        self.deaths.append(now)
        while self.deaths and self.deaths[0] < now - self.crash_window:
            self.deaths.popleft()
        if len(self.deaths) >= self.max_crashes:
            self.failed = Unavailable(
                f"the server died {len(self.deaths)} times within {self.crash_window:g} s "
                f"(last exit status {code}); not restarting it",
                data={"deaths": len(self.deaths), "lastExit": code},
            )
            return
        async with self._lock:  # at once, not when a client next needs it
            if not (self.running or self._stopping):
                await self._start()

    async def stop(self, grace: float = 5.0) -> None:
        self._stopping = True
        await self._end_standby(grace)
        proc = self.process
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                async with self.clock.timeout(grace):
                    await proc.wait()
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                await proc.wait()
        if self._watch is not None:
            await asyncio.gather(self._watch, return_exceptions=True)


__all__ = ["ServerSupervisor"]
