"""Reads with a cache and recovery, serialised atomic writes, stat and list, on resolved paths.

Theory of operation:
- A read first tries the cache at the cost of one `stat` and a dict lookup: the client's path
  string maps to the real path it resolved to last time (see `Workspace.remembered`) and the
  entry is served only if the file's identity is unchanged. Otherwise the path is resolved
  and confined afresh and the file is read under the `RetryPolicy`: EINTR again at once;
  transient errnos (EIO, EAGAIN, ETIMEDOUT, ESTALE, ECONNRESET, ...) and a file that ended
  before the size `fstat` gave (it shrank mid-read) after a jittered exponential backoff on
  the clock. When the retries run out on a transient error, the last cached content is
  served marked `stale` (`serve_stale`: the recovery matrix's filesystem/recoverable fallback
  is `cache_previous`; with another, the error is answered); an error the caller must
  fix (ENOENT, EACCES, EISDIR, ENOTDIR, too large) fails at once. Serving a file from the
  cache while the disk fails is an incident (`cache_fallback`, one per file): opened at the
  first stale answer, ended by the next read or write of that file that reaches the disk
  (recovered), or by a definite answer that leaves nothing to fall back on.
- Reads that reach the disk pass a circuit breaker (`breaker`, the app's `fs.disk`, see
  `DISK_BREAKER`): when half of the last 20 failed for the server's reasons (an errno the
  retries could not get past; a missing file is the caller's and counts as a success), it
  opens for 5 s, and reads then skip the disk and its retry schedule: the cached copy at
  once (stale), or -32002 (retryable, naming the breaker) when there is none. Two trial
  reads then decide whether it closes.
- One attempt is `fs.reading.read_file`, on the event loop's thread: 4 KiB costs about
  10 us and 1 MiB about 55 us here, while a hop to a worker thread costs 75-125 us. Files
  above `thread_read_bytes` (1 MiB) are read in a thread, so no single read stalls the loop
  for longer than the hop.
- Files larger than `max_file_bytes` (8 MiB: base64 makes that 10.7 MiB, inside the 16 MiB
  message limit) are refused with `FileTooLarge` before any byte is read; one that grows past
  it while being read is refused too.
- Writes go through `write_atomic` in a worker thread (fsync takes milliseconds, which the
  loop must not wait for) and are serialised per path, so the `expectedMtimeNs` check and the
  rename of two writes through this store cannot interleave. Only the steps before the rename
  are retried as a unit (they leave nothing behind when they fail); the folder's fsync after
  the rename is retried on its own, since redoing the write would trip its own mtime check.
  A write cancelled while its thread runs still completes, atomically; the cache then misses
  the new content, which the identity check makes harmless.
- Entries written within `racy_window_ns` of their file's last change are cached as racy: a
  same-size rewrite inside one timestamp tick changes no stat field, so such an entry is
  re-read rather than trusted (git's "racily clean" rule).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol

from lapce_bridge.clock import SYSTEM_CLOCK
from lapce_bridge.core.breaker import CircuitBreaker, CircuitBreakerConfig
from lapce_bridge.core.clock import Clock
from lapce_bridge.core.errors import (
    ConflictError,
    FileTooLarge,
    Unavailable,
    classify,
    is_server_fault,
)
from lapce_bridge.core.retry import RetryPolicy, RetryStats
from lapce_bridge.fs.atomic import fsync_dir, write_atomic
from lapce_bridge.fs.cache import CacheEntry, FileCache, Identity, identity_of
from lapce_bridge.fs.listing import (
    DEFAULT_MAX_LIST_BYTES,
    fs_error,
    list_folder,
    list_resolved,
    stat_path,
)
from lapce_bridge.fs.ops import REAL_FS, FsOps
from lapce_bridge.fs.paths import Workspace
from lapce_bridge.fs.reading import HAVE_PROC_FD, Relocated, read_file
from lapce_bridge.rpc import Observe

DEFAULT_MAX_FILE_BYTES = 8 * 1024 * 1024
THREAD_READ_BYTES = 1024 * 1024
Listing = list[dict[str, Any]]
THREAD_LIST_DIR_BYTES = 4096  # a folder larger than one block (ext4: over ~100 entries)
RACY_WINDOW_NS = 50_000_000  # well above the coarsest timestamp tick in use (10 ms at HZ=100)
MAX_FALLBACKS = 256  # files followed as open cache-fallback incidents at once
DISK_BREAKER = CircuitBreakerConfig(
    failure_rate_threshold=50.0,
    sliding_window_size=20,
    minimum_number_of_calls=10,
    wait_duration_in_open=5.0,
    permitted_calls_in_half_open=2,
)


class Incidents(Protocol):
    """Where incidents go (`core.incidents.IncidentLog`)."""

    def open(self, kind: str, subject: str, detail: str = "") -> int: ...

    def close(self, incident_id: int, *, recovered: bool, detail: str = "") -> object: ...


@dataclass(frozen=True, slots=True)
class ReadResult:
    data: bytes
    identity: Identity
    from_cache: bool
    stale: bool = False
    stale_reason: str = ""

    @property
    def mtime_ns(self) -> int:
        return self.identity[0]


@dataclass(slots=True)
class _Counts:
    reads: int = 0
    cache_hits: int = 0
    disk_reads: int = 0
    threaded_reads: int = 0
    stale_served: int = 0
    read_failures: int = 0
    writes: int = 0
    write_conflicts: int = 0
    write_failures: int = 0
    threaded_lists: int = 0


@dataclass(frozen=True, slots=True)
class StoreStats:
    reads: int
    cache_hits: int
    disk_reads: int
    threaded_reads: int
    stale_served: int
    read_failures: int
    writes: int
    write_conflicts: int
    write_failures: int
    threaded_lists: int
    retry: RetryStats


class FileStore:
    """File operations on one workspace, through `ops`, with a cache and a retry policy."""

    def __init__(
        self,
        workspace: Workspace,
        *,
        cache: FileCache,
        retry: RetryPolicy,
        ops: FsOps = REAL_FS,
        max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
        thread_read_bytes: int = THREAD_READ_BYTES,
        max_list_bytes: int = DEFAULT_MAX_LIST_BYTES,
        racy_window_ns: int = RACY_WINDOW_NS,
        wall_ns: Callable[[], int] = time.time_ns,
        durable: bool = True,
        clock: Clock = SYSTEM_CLOCK,
        observe: Observe | None = None,
        incidents: Incidents | None = None,
        breaker: CircuitBreaker | None = None,
        serve_stale: bool = True,  # the matrix's filesystem/recoverable fallback: cache_previous
    ) -> None:
        self.workspace = workspace
        self.cache = cache
        self.retry = retry
        self.serve_stale = serve_stale
        self.ops = ops
        self.max_file_bytes = max_file_bytes
        self.thread_read_bytes = thread_read_bytes
        self.max_list_bytes = max_list_bytes
        self.racy_window_ns = racy_window_ns
        self.wall_ns = wall_ns
        self.durable = durable
        self.clock = clock
        self.observe = observe
        self.incidents = incidents
        self.breaker = breaker
        self._fallbacks: OrderedDict[str, int] = OrderedDict()  # real path -> incident id
        self._writers: dict[str, tuple[asyncio.Lock, int]] = {}
        self._n = _Counts()

    # -- reads ------------------------------------------------------------------------------
    def probe(self, raw: str) -> CacheEntry | int:
        """One stat: the fresh entry for `raw`, else its size (-1 if unknown) for `read_path`."""
        real = self.workspace.remembered(raw)
        if real is None:
            return -1
        try:
            st = self.ops.stat(real)
        except OSError:
            return -1
        entry = self._hit(real, st)
        return entry if entry is not None else st.st_size

    def _hit(self, real: str, st: os.stat_result) -> CacheEntry | None:
        entry = self.cache.get(
            real, (st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino, st.st_dev)
        )
        if entry is not None:
            n = self._n
            n.reads += 1
            n.cache_hits += 1
        return entry

    async def read(self, raw: object) -> ReadResult:
        """The content of the client path `raw`: cached if fresh, else read with recovery."""
        if not isinstance(raw, str):
            return await self.read_with_recovery(self.workspace.resolve(raw))
        found = self.probe(raw)
        if isinstance(found, CacheEntry):
            return ReadResult(found.data, found.identity, True)
        return await self.read_path(raw, found)

    async def read_path(self, raw: str, size_hint: int = -1) -> ReadResult:
        """Read `raw` from disk (after a cache miss) with recovery.

        A path resolved before is opened through the real path it resolved to, and what was
        opened is checked through /proc/self/fd: the kernel's own answer, with no window
        between the check and the open, for a few microseconds instead of a full `realpath`
        (one `lstat` per component). If the answer differs, the path is resolved afresh.
        """
        real = self.workspace.remembered(raw)
        if real is not None and HAVE_PROC_FD:
            try:
                return await self.read_with_recovery(real, size_hint=size_hint, verify=True)
            except Relocated:
                size_hint = -1
        return await self.read_with_recovery(self.workspace.resolve(raw), size_hint=size_hint)

    async def read_with_recovery(
        self, real: str, *, size_hint: int = -1, verify: bool = False
    ) -> ReadResult:
        """Read the confined path `real` under the retry policy, or serve the cache as stale."""
        observe = self.observe
        if observe is None:
            return await self._read_with_recovery(real, size_hint, verify)
        started = self.clock.now()
        ok = False
        try:
            result = await self._read_with_recovery(real, size_hint, verify)
            ok = not result.stale
            return result
        except BaseException as exc:
            ok = not is_server_fault(exc)  # a missing file is the caller's, not the disk's
            raise
        finally:
            observe("fs/read/disk", self.clock.now() - started, ok)

    async def _read_with_recovery(self, real: str, size_hint: int, verify: bool) -> ReadResult:
        if size_hint < 0:
            # A path resolved just now (through a symlink, say) may still be cached.
            try:
                st = self.ops.stat(real)
            except OSError:
                pass  # the read itself will meet (and classify, and retry) the same error
            else:
                entry = self._hit(real, st)
                if entry is not None:
                    return ReadResult(entry.data, entry.identity, True)
                size_hint = st.st_size
        n = self._n
        n.reads += 1
        breaker, generation = self.breaker, 0
        if breaker is not None:
            try:
                breaker.acquire()  # open: the disk has been failing, skip it for now
            except Unavailable as exc:
                return self._read_failed(real, exc)
            generation = breaker.generation
        fn = partial(self.read_once, real, verify=verify)
        started = self.clock.now()
        try:
            if size_hint > self.thread_read_bytes:
                n.threaded_reads += 1
                data, ident = await self.retry.run_async(partial(asyncio.to_thread, fn))
            else:
                data, ident = await self.retry.run(fn)
        except Relocated:  # not the disk's failure: the path is resolved afresh
            if breaker is not None:
                breaker.release(generation=generation)
            raise
        except Exception as exc:
            if breaker is not None:
                breaker.on_error(self.clock.now() - started, exc, generation=generation)
            return self._read_failed(real, exc)
        except BaseException:  # cancelled: no outcome
            if breaker is not None:
                breaker.release(generation=generation)
            raise
        if breaker is not None:
            breaker.on_success(self.clock.now() - started, generation=generation)
        n.disk_reads += 1
        racy = self.wall_ns() - max(ident[0], ident[1]) < self.racy_window_ns
        self.cache.put(real, data, ident, racy=racy)
        if self._fallbacks:
            self._fallback_ended(real, True, "read from the disk again")
        return ReadResult(data, ident, False)

    def _read_failed(self, real: str, exc: Exception) -> ReadResult:
        rel = self.workspace.relative(real)
        entry = self.cache.get_any(real)
        retryable = classify(exc).retryable
        if entry is not None and retryable and self.serve_stale:
            self._n.stale_served += 1
            reason = str(fs_error(exc, "read", rel))
            self._fallback_started(real, rel, reason)
            return ReadResult(entry.data, entry.identity, True, True, reason)
        self._n.read_failures += 1
        if isinstance(exc, FileNotFoundError | NotADirectoryError | IsADirectoryError):
            self.cache.invalidate(real)
        error = fs_error(exc, "read", rel)
        if self._fallbacks:
            # A definite answer from the disk (the file is gone) ends the fallback; a failure
            # with no copy left to serve ends it unrecovered.
            self._fallback_ended(real, not retryable, f"no cached copy left: {error}")
        if error is exc:  # already ours (the breaker's refusal)
            raise error
        raise error from exc

    def _fallback_started(self, real: str, rel: str, reason: str) -> None:
        """The first stale answer for `real` opens its incident; later ones are part of it."""
        if self.incidents is None or real in self._fallbacks:
            return
        self._fallbacks[real] = self.incidents.open("cache_fallback", f"fs/read {rel}", reason)
        while len(self._fallbacks) > MAX_FALLBACKS:
            _, oldest = self._fallbacks.popitem(last=False)
            self.incidents.close(
                oldest, recovered=False, detail="no longer followed: too many files in fallback"
            )

    def _fallback_ended(self, real: str, recovered: bool, detail: str) -> None:
        found = self._fallbacks.pop(real, None)
        if found is not None and self.incidents is not None:
            self.incidents.close(found, recovered=recovered, detail=detail)

    def read_once(self, real: str, *, verify: bool = False) -> tuple[bytes, Identity]:
        """One attempt at reading `real` whole (see `fs.reading.read_file`)."""
        return read_file(
            real,
            ops=self.ops,
            max_bytes=self.max_file_bytes,
            workspace=self.workspace,
            verify=verify,
        )

    # -- writes -----------------------------------------------------------------------------
    async def write(
        self,
        real: str,
        data: bytes,
        *,
        expected_mtime_ns: int | None = None,
        create_dirs: bool = False,
    ) -> os.stat_result:
        """Replace `real` with `data` atomically; returns the new file's stat."""
        async with self.writer(real):
            return await self.write_locked(
                real, data, expected_mtime_ns=expected_mtime_ns, create_dirs=create_dirs
            )

    @asynccontextmanager
    async def writer(self, real: str) -> AsyncIterator[None]:
        """Hold `real`'s write lock: a read-modify-write (fs/edit) inside it cannot lose to
        another of this server's writes, only to a writer outside the server."""
        lock = self._lock_for(real)
        try:
            async with lock:
                yield
        finally:
            self._unlock_for(real)

    async def write_locked(
        self,
        real: str,
        data: bytes,
        *,
        expected_mtime_ns: int | None = None,
        create_dirs: bool = False,
    ) -> os.stat_result:
        """`write`, for a caller that holds `writer(real)`."""
        rel = self.workspace.relative(real)
        if len(data) > self.max_file_bytes:
            raise FileTooLarge(
                f"{len(data)} bytes for {rel} is over the {self.max_file_bytes} byte limit",
                data={"size": len(data), "limit": self.max_file_bytes},
            )
        n = self._n
        n.writes += 1
        replace = partial(
            write_atomic,
            real,
            data,
            ops=self.ops,
            expected_mtime_ns=expected_mtime_ns,
            create_dirs=create_dirs,
            durable=self.durable,
            sync_folder=False,
            workspace=self.workspace,
        )
        try:
            st = await self.retry.run_async(partial(asyncio.to_thread, replace))
            if self.durable:
                await self._sync_folder(real, rel)
        except Exception as exc:
            error = fs_error(exc, "write", rel)
            if isinstance(error, ConflictError):
                n.write_conflicts += 1
            else:
                n.write_failures += 1
            raise error from exc
        ident = identity_of(st)
        racy = self.wall_ns() - max(ident[0], ident[1]) < self.racy_window_ns
        self.cache.put(real, data, ident, racy=racy)
        if self._fallbacks:
            self._fallback_ended(real, True, "written to the disk")
        return st

    async def _sync_folder(self, real: str, rel: str) -> None:
        folder = os.path.dirname(real)
        sync = partial(fsync_dir, folder, ops=self.ops, workspace=self.workspace)
        try:
            await self.retry.run_async(partial(asyncio.to_thread, sync))
        except Exception as exc:
            error = fs_error(exc, "sync the folder of", rel)
            error.add_note("the new content is in place but may not survive a power cut")
            raise error from exc

    def _lock_for(self, real: str) -> asyncio.Lock:
        lock, users = self._writers.get(real) or (asyncio.Lock(), 0)
        self._writers[real] = (lock, users + 1)
        return lock

    def _unlock_for(self, real: str) -> None:
        lock, users = self._writers[real]
        if users <= 1:
            del self._writers[real]
        else:
            self._writers[real] = (lock, users - 1)

    # -- metadata ---------------------------------------------------------------------------
    def stat(self, raw: object) -> dict[str, Any]:
        return stat_path(self.workspace, raw, ops=self.ops)

    def list(self, raw: object) -> list[dict[str, Any]]:
        return list_folder(self.workspace, raw, ops=self.ops, max_bytes=self.max_list_bytes)

    async def list_async(self, raw: object) -> Listing:
        """`list`, in a worker thread when the folder is large.

        Listing costs about 5 us an entry (a stat each): 100 ms for 20,000, all of it a
        stall of every connection if done on the loop. A folder's own `st_size` grows with
        its entries on ext4, xfs, btrfs and tmpfs alike, so one stat tells a small folder
        (listed at once, cheaper than the 75-125 us thread hop) from a large one.
        """
        real = self.workspace.resolve(raw)
        try:
            size = self.ops.stat(real).st_size
        except OSError:
            size = 0  # the listing itself meets (and reports) the same error
        if size > THREAD_LIST_DIR_BYTES:
            self._n.threaded_lists += 1
            return await asyncio.to_thread(
                list_resolved, self.workspace, real, ops=self.ops, max_bytes=self.max_list_bytes
            )
        return list_resolved(self.workspace, real, ops=self.ops, max_bytes=self.max_list_bytes)

    def statistics(self) -> StoreStats:
        n = self._n
        return StoreStats(
            reads=n.reads,
            cache_hits=n.cache_hits,
            disk_reads=n.disk_reads,
            threaded_reads=n.threaded_reads,
            stale_served=n.stale_served,
            read_failures=n.read_failures,
            writes=n.writes,
            write_conflicts=n.write_conflicts,
            write_failures=n.write_failures,
            threaded_lists=n.threaded_lists,
            retry=self.retry.statistics(),
        )


__all__ = [
    "DEFAULT_MAX_FILE_BYTES",
    "RACY_WINDOW_NS",
    "THREAD_LIST_DIR_BYTES",
    "THREAD_READ_BYTES",
    "FileStore",
    "ReadResult",
    "StoreStats",
]
