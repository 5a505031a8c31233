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
            await self._start()

    async def _start(self) -> None:
        cmd = [self.python, "-m", "lapce_bridge", "serve", "--socket", str(self.socket_path)]
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT
        stderr = os.open(self.stderr_path, flags, 0o600) if self.stderr_path else None
        try:
            self.process = await asyncio.create_subprocess_exec(
                *cmd,
                *self.args,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=stderr if stderr is not None else asyncio.subprocess.DEVNULL,
                env=self.env,
                start_new_session=True,
            )
        finally:
            if stderr is not None:
                os.close(stderr)
        self.starts += 1
        self.started_at = self.clock.now()
        self._watch = asyncio.get_running_loop().create_task(self._watch_exit(self.process))

    async def _watch_exit(self, proc: asyncio.subprocess.Process) -> None:
        code = await proc.wait()
        self.last_exit = code
        if self._stopping:
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
