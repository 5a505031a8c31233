"""A child process on a pseudo-terminal, driven from the asyncio loop without blocking it.

Theory of operation:
- Spawn: `os.posix_spawn` in a new session with the slave as fds 0-2 (no Python code runs in
  the child, so no fork-with-threads hazard), every signal's disposition reset to its default
  and an empty signal mask: a server started with SIGINT ignored (under `nohup`, or as a
  background job of a non-interactive shell) would otherwise hand that to its shells, and
  Ctrl-C would stop nothing in them. The descriptors the server inherited are closed in the
  child (its own are close-on-exec). `setsid()` leaves the child without a controlling
  terminal, and dup'd fds do not give it one, so the child is `/bin/sh` running
  `cd DIR && exec "$@" <>TTY`: a session leader *opening* the tty makes it the controlling
  terminal, which gives the shell job control and lets SIGINT reach the foreground group.
- Read: the master is non-blocking and read from `loop.add_reader`, up to `_READ_BURST` reads
  a wake-up (a busy command fills the PTY buffer in 4 KiB steps; one callback per step would
  cost more than the reads).
- Write: `write()` never blocks: bytes go to a queue drained now and, on EAGAIN, from
  `add_writer`, so input larger than the PTY buffer is delivered whole, in order.
- Exit: a pidfd (Linux >= 5.3) wakes the loop when the child exits; the child is reaped with
  `waitpid`, the master is drained of what the child wrote before dying, then `on_exit` runs
  once. EOF/EIO on the master alone (the child closed its terminal) is not an exit: a
  background job may still hold the slave. Without pidfd, EOF/EIO triggers a `waitpid` poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import signal
import stat
import struct
import termios
from collections import deque
from collections.abc import Callable, Mapping, Sequence

from lapce_bridge.core.errors import ResourceExhausted

# openpty's errors when descriptors or pseudo-terminals run out (not a fault of the shell).
_EXHAUSTED = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOSPC, errno.EAGAIN, errno.ENOENT})
# Under glibc's default mmap threshold (128 KiB): above it, in a process whose threshold has
# not been raised, every read's buffer is a fresh mapping, shrunk to what the read returned
# and unmapped later (40-70 us a read here, for a 20-byte prompt). A PTY read returns a few
# KiB to some tens of KiB (20 MB of `yes`: 11-20 KiB at most), so 64 KiB loses nothing.
_READ_SIZE = 64 * 1024
_READ_BURST = 16
_TRAMPOLINE = 'cd -- "$1" && shift && exec "$@" <>"$0" >&0 2>&0'
_SH = "/bin/sh"
# Every signal a parent may have left ignored: a terminal's shell starts with the defaults.
_DEFAULTS = tuple(
    sig for sig in signal.valid_signals() if sig not in (signal.SIGKILL, signal.SIGSTOP)
)


class PtyProcess:
    """One child process and the master side of its terminal."""

    def __init__(
        self,
        pid: int,
        master: int,
        on_data: Callable[[bytes], None],
        on_exit: Callable[[int], None],
    ) -> None:
        self.pid = pid
        self.master = master
        self._on_data = on_data
        self._on_exit = on_exit
        self._loop = asyncio.get_running_loop()
        self._queue: deque[memoryview] = deque()
        self._writing = False
        self._reading = True
        self._paused = False  # `pause_reading`: the master is not read until resumed
        self._pidfd: int | None = None
        self.returncode: int | None = None
        self.bytes_read = 0
        self.bytes_written = 0
        self._loop.add_reader(master, self._on_readable)
        try:
            self._pidfd = os.pidfd_open(self.pid)
        except (AttributeError, OSError):
            self._pidfd = None
        else:
            self._loop.add_reader(self._pidfd, self._on_child_exit)

    @classmethod
    def spawn(
        cls,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        cwd: str | None,
        cols: int,
        rows: int,
        on_data: Callable[[bytes], None],
        on_exit: Callable[[int], None],
    ) -> PtyProcess:
        try:
            master, slave = os.openpty()
        except OSError as exc:
            if exc.errno in _EXHAUSTED:
                raise ResourceExhausted(
                    f"no pseudo-terminal could be allocated ({os.strerror(exc.errno)}); close "
                    "terminals or raise the limit (ulimit -n, /proc/sys/kernel/pty/max)"
                ) from exc
            raise
        try:
            _set_size(master, cols, rows)
            name = os.ttyname(slave)
            folder = "." if cwd is None else cwd
            if not stat.S_ISDIR(os.stat(folder).st_mode):  # as a chdir would fail, here
                raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), folder)
            actions: list[tuple[int, ...]] = [(os.POSIX_SPAWN_DUP2, slave, fd) for fd in (0, 1, 2)]
            actions += [(os.POSIX_SPAWN_CLOSE, fd) for fd in _inherited_fds(slave)]
            pid = os.posix_spawn(
                _SH,
                [_SH, "-c", _TRAMPOLINE, name, folder, *argv],
                dict(env),
                file_actions=actions,
                setsid=True,
                setsigmask=(),
                setsigdef=_DEFAULTS,
            )
        except BaseException:
            os.close(master)
            raise
        finally:
            os.close(slave)
        os.set_blocking(master, False)
        return cls(pid, master, on_data, on_exit)

    @property
    def alive(self) -> bool:
        return self.returncode is None

    # -- reading ------------------------------------------------------------------------
    def _on_readable(self) -> None:
        for _ in range(_READ_BURST):
            try:
                data = os.read(self.master, _READ_SIZE)
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno not in (errno.EIO, errno.EBADF):
                    raise
                data = b""
            if not data:
                self._stop_reading()
                if self._pidfd is None:
                    self._reap(block=False)
                return
            self.bytes_read += len(data)
            self._on_data(data)
            if len(data) < _READ_SIZE and not self._writing:
                # The buffer was emptied: a read now would mostly fail (EAGAIN), and what
                # comes meanwhile wakes the loop again (the reader is level-triggered). Not
                # while input is being written: the tty's echo of it must be drained as fast
                # as before, or it waits and the program's answer is written into it.
                return

    def _stop_reading(self) -> None:
        if self._reading:
            self._reading = False
            if not self._paused:
                self._loop.remove_reader(self.master)

    def pause_reading(self) -> None:
        """Stop reading the master until `resume_reading`. Nothing is lost: the child's
        writes wait in the PTY's buffer, and it blocks once that is full."""
        if self._reading and not self._paused:
            self._paused = True
            self._loop.remove_reader(self.master)

    def resume_reading(self) -> None:
        if self._paused:
            self._paused = False
            if self._reading:
                self._loop.add_reader(self.master, self._on_readable)

    def _on_child_exit(self) -> None:
        self._reap(block=False)

    def _reap(self, *, block: bool) -> None:
        if self.returncode is not None:
            return
        try:
            pid, status = os.waitpid(self.pid, 0 if block else os.WNOHANG)
        except ChildProcessError:
            pid, status = self.pid, 0
        if pid == 0:
            return
        self.returncode = os.waitstatus_to_exitcode(status)
        if self._pidfd is not None:
            self._loop.remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None
        # What the child wrote before it died is still in the PTY buffer: hand it over first.
        if self.master >= 0:
            while True:
                try:
                    data = os.read(self.master, _READ_SIZE)
                except OSError:
                    break
                if not data:
                    break
                self.bytes_read += len(data)
                self._on_data(data)
            self._stop_reading()
            self._stop_writing()
        self._on_exit(self.returncode)

    # -- writing ------------------------------------------------------------------------
    def write(self, data: bytes) -> None:
        if self.returncode is not None or self.master < 0:
            raise BrokenPipeError(errno.EPIPE, "the terminal's process has exited")
        if not data:
            return
        self._queue.append(memoryview(data))
        if not self._writing:
            self._drain()

    def _drain(self) -> None:
        queue = self._queue
        while queue:
            view = queue[0]
            try:
                n = os.write(self.master, view)
            except BlockingIOError:
                n = 0
            except OSError:
                queue.clear()  # the child is gone; its exit is reported through on_exit
                self._stop_writing()
                return
            self.bytes_written += n
            if n < len(view):
                queue[0] = view[n:]
                if not self._writing:
                    self._writing = True
                    self._loop.add_writer(self.master, self._drain)
                return
            queue.popleft()
        self._stop_writing()

    def _stop_writing(self) -> None:
        if self._writing:
            self._writing = False
            self._loop.remove_writer(self.master)

    # -- control ------------------------------------------------------------------------
    def resize(self, cols: int, rows: int) -> None:
        _set_size(self.master, cols, rows)

    def foreground_pgrp(self) -> int | None:
        try:
            return os.tcgetpgrp(self.master)
        except OSError:
            return None

    def signal_foreground(self, sig: int) -> int | None:
        """Send `sig` to the terminal's foreground process group; returns that group."""
        pgrp = self.foreground_pgrp()
        if pgrp is None or pgrp <= 0:
            return None
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgrp, sig)
        return pgrp

    def signal(self, sig: int) -> None:
        if self.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def kill(self) -> None:
        """SIGKILL the child. The kernel then hangs up its terminal's foreground group."""
        self.signal(signal.SIGKILL)

    def close(self) -> None:
        """Release the fds. The child gets SIGHUP from the kernel when the master closes."""
        self._stop_reading()
        self._stop_writing()
        self._queue.clear()
        if self.master >= 0:
            with contextlib.suppress(OSError):
                os.close(self.master)
            self.master = -1
        if self.returncode is None:
            # Only reap what is already dead here; the caller escalates and reaps otherwise.
            self._reap(block=False)

    def detach(self) -> None:
        """Forget the owner's callbacks: nothing more is delivered, and the owner can be freed
        by reference counting alone (the callbacks are its bound methods)."""
        self._on_data = _ignore_data
        self._on_exit = _ignore_exit

    def reap_blocking(self) -> None:
        self._reap(block=True)


def _ignore_data(data: bytes) -> None:
    pass


def _ignore_exit(code: int) -> None:
    pass


def _inherited_fds(keep: int) -> list[int]:
    """The descriptors above 2 a child would inherit (the server's are close-on-exec; these
    came from whoever started it), but `keep`."""
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        return []
    fds = []
    for fd in map(int, names):
        if fd > 2 and fd != keep:
            with contextlib.suppress(OSError):
                if os.get_inheritable(fd):
                    fds.append(fd)
    return fds


def _set_size(fd: int, cols: int, rows: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
