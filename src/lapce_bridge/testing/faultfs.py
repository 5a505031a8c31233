"""A fault-injecting file system: real calls, except the ones a test chose to break.

`FaultyFs(real, faults=[Fault("read", errno.EIO, times=2)])` is an `FsOps` that forwards
every call to `real` (the real `os` functions by default) unless a `Fault` matches it: then
it raises `OSError(errno)` (EINTR comes out as `InterruptedError`, as the OS would give it),
or, for `read`/`write`, goes short (moves at most half the bytes asked for, for real) or
reports end of file early. A fault matches by operation name and, optionally, by an
`fnmatch` pattern on the path (for calls on a descriptor, the path it was opened with); it
lets `after` matching calls through first and then hits `times` of them (None: all). Every
call is recorded with its outcome, so a test can assert exactly which attempts were made.
Safe to use from worker threads (writes run in one).

`FaultyWatchBackend(real)` wraps a file-watching backend the same way: it can fail the next
starts (by default with the ENOSPC of an exhausted inotify watch limit) and `kill()` the
running watchers, which then stop and raise (or just end), as a crashed backend would.
"""

from __future__ import annotations

import asyncio
import errno as errno_mod
import fnmatch
import os
import threading
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field

from lapce_bridge.fs.ops import REAL_FS, FsOps
from lapce_bridge.fs.watch import RawChanges, WatchBackend, watchfiles_backend

OPS = frozenset(
    {"stat", "lstat", "open", "fstat", "read", "write", "fsync", "fchmod", "fchown", "utime",
     "close", "replace", "unlink", "mkdir", "scandir"}
)  # fmt: skip


@dataclass
class Fault:
    op: str
    errno: int | None = errno_mod.EIO
    times: int | None = 1
    path_glob: str | None = None
    after: int = 0
    short: bool = False  # read/write: move at most half the bytes asked for
    eof: bool = False  # read: report the end of the file now
    seen: int = field(default=0, init=False)
    hits: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        if self.op not in OPS:
            raise ValueError(f"unknown operation {self.op!r}; one of {sorted(OPS)}")
        if (self.short or self.eof) and self.op not in ("read", "write"):
            raise ValueError("short and eof faults apply to read and write only")
        if self.eof and self.op != "read":
            raise ValueError("an eof fault applies to read only")

    @property
    def exhausted(self) -> bool:
        return self.times is not None and self.hits >= self.times

    def _claims(self, op: str, path: str | None) -> bool:
        if op != self.op or self.exhausted:
            return False
        if self.path_glob is not None and (
            path is None or not fnmatch.fnmatch(path, self.path_glob)
        ):
            return False
        self.seen += 1
        if self.seen <= self.after:
            return False
        self.hits += 1
        return True


@dataclass(frozen=True, slots=True)
class Call:
    op: str
    path: str | None
    outcome: str  # "ok", "short", "eof", or the errno's name


class FaultyFs:
    def __init__(self, real: FsOps = REAL_FS, faults: Iterable[Fault] = ()) -> None:
        self.real = real
        self.faults: list[Fault] = list(faults)
        self.calls: list[Call] = []
        self._fd_paths: dict[int, str] = {}
        self._lock = threading.Lock()

    def add(self, fault: Fault) -> Fault:
        with self._lock:
            self.faults.append(fault)
        return fault

    def clear(self) -> None:
        """Drop every fault (the recorded calls stay)."""
        with self._lock:
            self.faults.clear()

    def count(self, op: str, outcome: str | None = None) -> int:
        with self._lock:
            return sum(1 for c in self.calls if c.op == op and outcome in (None, c.outcome))

    def outcomes(self, op: str) -> list[str]:
        with self._lock:
            return [c.outcome for c in self.calls if c.op == op]

    # -- matching ---------------------------------------------------------------------------
    def _match(self, op: str, path: str | None) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if fault._claims(op, path):
                    return fault
            return None

    def _record(self, op: str, path: str | None, outcome: str) -> None:
        with self._lock:
            self.calls.append(Call(op, path, outcome))

    def _gate(self, op: str, path: str | None) -> Fault | None:
        """Raise the matching fault's errno, or return a short/eof fault for the caller."""
        fault = self._match(op, path)
        if fault is None:
            return None
        if fault.short or fault.eof:
            return fault
        err = fault.errno if fault.errno is not None else errno_mod.EIO
        self._record(op, path, errno_mod.errorcode.get(err, str(err)))
        raise OSError(err, f"{os.strerror(err)} (injected)", path)

    def _call(self, op: str, path: str | None) -> None:
        self._gate(op, path)
        self._record(op, path, "ok")

    def _fd_path(self, fd: int) -> str | None:
        with self._lock:
            return self._fd_paths.get(fd)

    def _at(self, path: str, dir_fd: int | None) -> str:
        """The path a call relative to `dir_fd` names, for matching and the record."""
        if dir_fd is None:
            return path
        base = self._fd_path(dir_fd)
        if base is None:
            try:
                base = os.readlink(f"/proc/self/fd/{dir_fd}")
            except OSError:
                base = f"<fd {dir_fd}>"
        return os.path.normpath(os.path.join(base, path))

    # -- FsOps ------------------------------------------------------------------------------
    def stat(
        self, path: str, *, dir_fd: int | None = None, follow_symlinks: bool = True
    ) -> os.stat_result:
        self._call("stat", self._at(path, dir_fd))
        return self.real.stat(path, dir_fd=dir_fd, follow_symlinks=follow_symlinks)

    def lstat(self, path: str) -> os.stat_result:
        self._call("lstat", path)
        return self.real.lstat(path)

    def open(self, path: str, flags: int, mode: int = 0o777, *, dir_fd: int | None = None) -> int:
        where = self._at(path, dir_fd)
        self._call("open", where)
        fd = self.real.open(path, flags, mode, dir_fd=dir_fd)
        with self._lock:
            self._fd_paths[fd] = where
        return fd

    def open_beneath(self, dir_fd: int, rel: str, flags: int, mode: int = 0o777) -> int:
        where = self._at(rel, dir_fd)
        self._call("open", where)
        fd = self.real.open_beneath(dir_fd, rel, flags, mode)
        with self._lock:
            self._fd_paths[fd] = where
        return fd

    def fstat(self, fd: int) -> os.stat_result:
        self._call("fstat", self._fd_path(fd))
        return self.real.fstat(fd)

    def read(self, fd: int, n: int) -> bytes:
        path = self._fd_path(fd)
        fault = self._gate("read", path)
        if fault is not None and fault.eof:
            self._record("read", path, "eof")
            return b""
        if fault is not None:
            self._record("read", path, "short")
            return self.real.read(fd, max(1, n // 2))
        self._record("read", path, "ok")
        return self.real.read(fd, n)

    def write(self, fd: int, data: bytes | memoryview) -> int:
        path = self._fd_path(fd)
        fault = self._gate("write", path)
        if fault is not None:
            self._record("write", path, "short")
            return self.real.write(fd, data[: max(1, len(data) // 2)])
        self._record("write", path, "ok")
        return self.real.write(fd, data)

    def fsync(self, fd: int) -> None:
        self._call("fsync", self._fd_path(fd))
        self.real.fsync(fd)

    def fchmod(self, fd: int, mode: int) -> None:
        self._call("fchmod", self._fd_path(fd))
        self.real.fchmod(fd, mode)

    def fchown(self, fd: int, uid: int, gid: int) -> None:
        self._call("fchown", self._fd_path(fd))
        self.real.fchown(fd, uid, gid)

    def utime(self, fd: int, *, ns: tuple[int, int]) -> None:
        self._call("utime", self._fd_path(fd))
        self.real.utime(fd, ns=ns)

    def close(self, fd: int) -> None:
        path = self._fd_path(fd)
        with self._lock:
            self._fd_paths.pop(fd, None)
        # An injected close error still closes the descriptor, as close(2) does on Linux.
        try:
            self._call("close", path)
        finally:
            self.real.close(fd)

    def replace(self, src: str, dst: str, *, dir_fd: int | None = None) -> None:
        self._call("replace", self._at(dst, dir_fd))
        self.real.replace(src, dst, dir_fd=dir_fd)

    def unlink(self, path: str, *, dir_fd: int | None = None) -> None:
        self._call("unlink", self._at(path, dir_fd))
        self.real.unlink(path, dir_fd=dir_fd)

    def mkdir(self, path: str, mode: int = 0o777, *, dir_fd: int | None = None) -> None:
        self._call("mkdir", self._at(path, dir_fd))
        self.real.mkdir(path, mode, dir_fd=dir_fd)

    def scandir(self, path: str | int) -> list[os.DirEntry[str]]:
        self._call("scandir", self._fd_path(path) if isinstance(path, int) else path)
        return self.real.scandir(path)


class _EitherEvent:
    """Set when the watcher's own stop event is, or when the test kills it (thread-safe read)."""

    def __init__(self, outer: asyncio.Event) -> None:
        self.outer = outer
        self.killed = False

    def is_set(self) -> bool:
        return self.killed or self.outer.is_set()

    def set(self) -> None:
        self.outer.set()

    async def wait(self) -> None:  # pragma: no cover - the Rust side only polls is_set
        await self.outer.wait()


class FaultyWatchBackend:
    """A `WatchBackend` over a real one that can fail to start and be killed on demand."""

    def __init__(
        self,
        real: WatchBackend | None = None,
        *,
        fail_starts: int = 0,
        start_error: OSError | None = None,
        raise_on_kill: bool = True,
    ) -> None:
        self.real = real or watchfiles_backend()
        self.fail_starts = fail_starts
        self.start_error = start_error
        self.raise_on_kill = raise_on_kill
        self.starts: list[bool] = []  # the force_polling flag of every start, in order
        self.kills = 0
        self._live: list[_EitherEvent] = []

    @property
    def running(self) -> int:
        return sum(1 for ev in self._live if not ev.is_set())

    def kill(self) -> int:
        """Make every running watcher die now; returns how many were killed."""
        victims = [ev for ev in self._live if not ev.is_set()]
        for ev in victims:
            ev.killed = True
        self.kills += len(victims)
        return len(victims)

    def __call__(
        self, roots: Sequence[str], recursive: bool, stop: asyncio.Event, polling: bool
    ) -> AsyncIterator[RawChanges]:
        return self._run(roots, recursive, stop, polling)

    async def _run(
        self, roots: Sequence[str], recursive: bool, stop: asyncio.Event, polling: bool
    ) -> AsyncIterator[RawChanges]:
        self.starts.append(polling)
        if self.fail_starts > 0:
            self.fail_starts -= 1
            raise self.start_error or OSError(
                errno_mod.ENOSPC, "OS file watch limit reached (injected)"
            )
        either = _EitherEvent(stop)
        self._live.append(either)
        try:
            async for batch in self.real(roots, recursive, either, polling):  # type: ignore[arg-type]
                if either.killed:
                    break
                yield batch
        finally:
            self._live.remove(either)
        if either.killed and self.raise_on_kill:
            raise OSError(errno_mod.EIO, "watch backend killed (injected)")


__all__ = ["OPS", "Call", "Fault", "FaultyFs", "FaultyWatchBackend"]
