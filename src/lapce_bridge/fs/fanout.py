"""One list of work units shared by this process and a forked copy of it.

Theory of operation: a search's walk is cut into units numbered in the walk's order (the
files and folders near the top of the tree, `fs.search`); a second process takes some of
them so that the system calls of the two (open, read, close: most of a search's time) run
on two cores, which threads cannot do in Python (each call takes the GIL back after the
kernel; two walking threads spent more time handing it over than they saved).

- **The queue**: the unit numbers are written, in order, into a pipe before the child
  exists; each process reads four bytes for its next unit (a pipe read is atomic), so every
  unit is taken exactly once, in order, by whichever process is free: a large folder does
  not leave the other process idle.
- **Shared flags**: a page of shared memory (`MAP_SHARED`, inherited by the fork) holds the
  halt flag (set by either process when out of time or stopped; the other stops at its next
  check) and each process's cap (the first unit where it filled a page: no unit after the
  lower cap is needed).
- **The child** is a fork of this process made from the searching thread: it inherits the
  open folder descriptors, so it walks the same folders by the same descriptors (bare names,
  `O_NOFOLLOW`: confinement unchanged), with the same query and rules. It first puts the
  default action back on the signals a server handles (its handlers and their wake-up
  descriptor belong to the parent), closes every descriptor it was not given, and stops
  when its parent is gone (`getppid`). It sends its result through a pipe, its length
  first, closes the pipe and leaves with `os._exit` (none of the parent's clean-up runs
  twice).
- **Collecting**: the parent, done with the queue, reads the child's bytes, checking its
  own clock and stop flag every `POLL_MS` meanwhile and setting the halt flag when they
  say so. The child closes the pipe itself once it has sent everything, so the parent has
  the result before the child's exit has torn down its copy of the server (2-3 ms for a
  server of 80 MB, which the parent would otherwise wait for); a thread reaps the child
  then (`join_reapers` waits for it). A child that fails (bytes short of the
  length it announced, a nonzero exit, a signal) gives None: the caller searches again in
  one process, so a lost child costs time, never results.

A fork costs about 1.5 ms for a server of 50 MB, which is why the caller forks only once
its own walk has shown the tree to be large.
"""

from __future__ import annotations

import mmap
import os
import queue
import select
import signal
import struct
import threading
from collections.abc import Callable, Iterable

POLL_MS = 10  # how often the parent looks at its clock while the child works
_UNIT = struct.Struct("=I")
_LENGTH = struct.Struct("=Q")  # before the child's result: how many bytes follow
_HALT, _CAP_PARENT, _CAP_CHILD = 0, 1, 2
# Signals whose handlers (and wake-up descriptor) are the parent's: the child dies of them.
_PARENT_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT)
# Unit numbers (4 bytes each) written before the child exists, so they must fit in the pipe
# at once: one page, the least a pipe holds (a user over `pipe-user-pages-soft` gets pipes
# of two pages), so the write never blocks.
MAX_UNITS = 1024


class Fanout:
    """The queue of `units` unit numbers and the flags two processes share (see module
    docstring). Made in the parent; after `spawn` the child uses its copy of it."""

    def __init__(self, units: int) -> None:
        if units > MAX_UNITS:
            raise ValueError(f"at most {MAX_UNITS} units, not {units}")
        self.units = units
        self.taken = 0  # units this process took
        self.in_child = False
        self._parent = os.getpid()
        self._pid: int | None = None
        self._result = -1
        self._mem = mmap.mmap(-1, mmap.PAGESIZE)
        self._slots = memoryview(self._mem).cast("i")
        self._slots[_CAP_PARENT] = self._slots[_CAP_CHILD] = units
        read, write = os.pipe()
        try:
            os.write(write, b"".join(_UNIT.pack(u) for u in range(units)))
        finally:
            os.close(write)
        self._queue = read

    @property
    def spawned(self) -> bool:
        return self._pid is not None or self.in_child

    def take(self) -> int | None:
        """The next unit, or None when the queue is empty or the rest is past the cap."""
        raw = os.read(self._queue, _UNIT.size)
        if not raw:
            return None
        unit: int = _UNIT.unpack(raw)[0]
        if unit > self.cap:
            return None
        self.taken += 1
        return unit

    @property
    def cap(self) -> int:
        """No unit after this one is needed (a process filled its page there)."""
        return min(self._slots[_CAP_PARENT], self._slots[_CAP_CHILD])

    def fill(self, unit: int) -> None:
        """This process filled its page in `unit`."""
        slot = _CAP_CHILD if self.in_child else _CAP_PARENT
        self._slots[slot] = min(self._slots[slot], unit)

    @property
    def halted(self) -> bool:
        """Out of time or stopped, in either process (or the child's parent is gone)."""
        if self._slots[_HALT]:
            return True
        return self.in_child and os.getppid() != self._parent

    def halt(self) -> None:
        self._slots[_HALT] = 1

    def spawn(self, work: Callable[[], bytes], keep: Iterable[int]) -> bool:
        """Fork a child that runs `work` and sends back what it returns; `keep` are the
        descriptors it needs besides the queue. False (no child) when the fork fails."""
        if self.spawned:
            raise RuntimeError("this fanout already has its child")
        read, write = os.pipe()
        try:
            pid = os.fork()
        except OSError:
            os.close(read)
            os.close(write)
            return False
        if pid == 0:  # pragma: no cover - the child's coverage is not collected
            code = 1
            try:
                self.in_child = True
                _leave_parent({*keep, self._queue, write})
                data = work()
                view = memoryview(_LENGTH.pack(len(data)) + data)
                while view:
                    view = view[os.write(write, view) :]
                # The parent reads the end here, not after this copy of it is torn down.
                os.close(write)
                code = 0
            finally:
                os._exit(code)
        os.close(write)
        self._pid, self._result = pid, read
        return True

    def collect(self, should_stop: Callable[[], bool]) -> bytes | None:
        """The child's bytes (None if it failed); `should_stop` is asked every `POLL_MS`
        while it works and, once true, halts it. The child is reaped here if it has
        exited, else by the reaping thread (`join_reapers`)."""
        if self._pid is None:
            return None
        chunks: list[bytes] = []
        poller = select.poll()
        poller.register(self._result, select.POLLIN)
        while True:
            if not self.halted and should_stop():
                self.halt()
            if not poller.poll(POLL_MS):
                continue
            chunk = os.read(self._result, 1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
        pid, self._pid = self._pid, None
        reaped, status = os.waitpid(pid, os.WNOHANG)
        if reaped == 0:
            _REAPER.reap(pid)
        elif os.waitstatus_to_exitcode(status) != 0:
            return None
        data = b"".join(chunks)
        if len(data) < _LENGTH.size:
            return None  # it died before sending anything
        (length,) = _LENGTH.unpack_from(data)
        return data[_LENGTH.size :] if len(data) == _LENGTH.size + length else None

    def close(self) -> None:
        """Stop and reap a child still running (the parent failed meanwhile), free the rest."""
        if self._pid is not None:
            self.halt()
            os.kill(self._pid, signal.SIGKILL)
            os.waitpid(self._pid, 0)
            self._pid = None
        if self._result >= 0:
            os.close(self._result)
            self._result = -1
        if self._queue >= 0:
            os.close(self._queue)
            self._queue = -1
        self._slots.release()
        self._mem.close()


class _Reaper:
    """One thread, started at the first need, that reaps the children handed to it: a
    child that has sent its result is left to exit on its own time (`Fanout.collect`)."""

    def __init__(self) -> None:
        self._pids: queue.SimpleQueue[int] = queue.SimpleQueue()
        self._lock = threading.Condition()
        self._pending = 0
        self._thread: threading.Thread | None = None

    def reap(self, pid: int) -> None:
        with self._lock:
            self._pending += 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="fanout-reaper", daemon=True)
                self._thread.start()
        self._pids.put(pid)

    def _run(self) -> None:
        while True:
            pid = self._pids.get()
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass  # reaped already
            with self._lock:
                self._pending -= 1
                self._lock.notify_all()

    def join(self, timeout: float) -> bool:
        with self._lock:
            return self._lock.wait_for(lambda: self._pending == 0, timeout)


_REAPER = _Reaper()


def join_reapers(timeout: float) -> bool:
    """Wait up to `timeout` seconds until every child left to exit on its own time has been
    reaped; whether all were."""
    return _REAPER.join(timeout)


def _leave_parent(keep: set[int]) -> None:  # pragma: no cover - runs in the child
    """The child's first steps: default signal actions, no wake-up descriptor, and only
    the descriptors in `keep` (and 0-2) left open."""
    signal.set_wakeup_fd(-1)
    for number in _PARENT_SIGNALS:
        signal.signal(number, signal.SIG_DFL)
    low = 3
    for fd in sorted(keep):
        if fd >= low:
            os.closerange(low, fd)
            low = fd + 1
    os.closerange(low, os.sysconf("SC_OPEN_MAX"))


__all__ = ["MAX_UNITS", "Fanout", "join_reapers"]
