"""The `fs/*` methods: validated params in, wire-shaped results out, over one workspace.

Theory of operation: `FileService` composes the parts and owns their life cycle: a
`Workspace` (confinement), a `FileCache` (exposed as `.cache` so a resource manager can
`trim`/`resize`/`clear` it under memory pressure), a `FileStore` (reads with recovery, atomic
writes, stat, list) and a `WatcherRecovery` (self-healing watches). Entering it starts the
watch health check and, in the background, the sweep of temporary files crashed writers
left in the workspace: a large workspace takes a while to walk, and the server must not
start (or restart) later for it; until then listings and watches hide those files anyway.
Leaving it stops the sweep at the next folder and every watch.

Wire decisions (PROTOCOL.md leaves these open):
- `fs/read` is async: its retry path sleeps on the clock, and a handler is either sync or
  async. The cached path inside it is one `stat` and a dict lookup; the price of the Task the
  server wraps an async handler in is measured by the bench (`fs` suite) beside it.
- `fs/stat` is sync (answered inline); `fs/list` is async, so a large folder is listed in a
  worker thread instead of stalling every connection. Neither retries: a transient errno
  comes back as a -32004 error with `retryable: true`. `fs/list`'s `path` defaults to the
  workspace root; entries are sorted by name, folders and links report size 0, our
  temporary files are hidden, a name that is not UTF-8 is shown escaped with
  `undecodable: true`, and a folder too large for one message is a -32004 FileTooLarge.
- `fs/write`'s `expectedMtimeNs`: absent or null, no check; a positive number must equal the
  file's current mtime; 0 means the file must not exist yet (create only). A mismatch is a
  -32004 ConflictError whose `data.mtimeNs` is the file's current mtime.
- A text answer must fit one message: JSON escapes a control character in up to 6 bytes and
  a quote or backslash in 2, so a large text full of them could outgrow the limit the
  client decodes with (`max_message_bytes`, the server's default). Such a read is refused
  with FileTooLarge naming base64, which grows by 4/3 at most and always fits.
- `fs/didChange` paths are workspace-relative POSIX paths, and each notification carries
  `seq`, numbered per watch from 1. Watches belong to the connection that made them: only
  it may `fs/unwatch` them, and they end when it closes. A watch made with an
  `idempotencyKey` is saved in the state directory (`fs.watch_store`) and comes back when
  `fs/watch` is sent again with that key and the same params, from this connection or a
  later one, after a reconnect or a server restart: the same `watchId`, `seq` going on, and
  one `fs/didChange` with what changed while it was not watched (its saved snapshot against
  a fresh scan; a root deleted meanwhile is reported deleted, with all it held, and watched
  again when it returns). The same key with other params is refused (-32602). When the
  `file_watching` feature is off (quality level 0), `fs/watch` answers -32002 Unavailable:
  the level exists to shed load, and polling would add load.
"""

from __future__ import annotations

import asyncio
import binascii
import errno
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Protocol

from lapce_bridge.clock import SYSTEM_CLOCK
from lapce_bridge.core.breaker import CircuitBreaker
from lapce_bridge.core.clock import Clock
from lapce_bridge.core.errors import FileSystemError, FileTooLarge, InvalidParams, Unavailable
from lapce_bridge.core.retry import RetryPolicy
from lapce_bridge.fs.atomic import sweep_temp_files
from lapce_bridge.fs.cache import CacheEntry, CacheStats, FileCache
from lapce_bridge.fs.files import (
    DEFAULT_MAX_FILE_BYTES,
    RACY_WINDOW_NS,
    FileStore,
    Incidents,
    ReadResult,
    StoreStats,
)
from lapce_bridge.fs.listing import fs_error
from lapce_bridge.fs.ops import REAL_FS, FsOps
from lapce_bridge.fs.paths import Workspace
from lapce_bridge.fs.snapshot import DEFAULT_SKIP_DIRS, Change, Snapshot
from lapce_bridge.fs.watch import MAX_CHANGES_PER_NOTICE, WatchBackend, WatcherRecovery, WatchStats
from lapce_bridge.fs.watch_quota import WatchQuota
from lapce_bridge.fs.watch_store import Persisted, WatchStore
from lapce_bridge.resources import Relief
from lapce_bridge.rpc import (
    DEFAULT_MAX_MESSAGE_BYTES,
    CallContext,
    Method,
    Observe,
    Params,
    method,
)

ENCODINGS = ("utf-8", "base64")
MAX_WATCH_PATHS = 64
FILE_WATCHING = "file_watching"
log = logging.getLogger("lapce_bridge.fs.service")


class FeatureFlags(Protocol):
    def is_enabled(self, feature: str) -> bool: ...


def default_retry(clock: Clock) -> RetryPolicy:
    """4 attempts, 50/100/200 ms apart (±10 %): recovered or given up within 0.4 s."""
    return RetryPolicy(
        max_attempts=4, initial_delay=0.05, max_delay=0.5, multiplier=2.0, jitter=0.1, clock=clock
    )


@dataclass(frozen=True, slots=True)
class FileServiceStats:
    store: StoreStats
    cache: CacheStats
    watch: WatchStats
    temp_files_swept: int


class FileService:
    def __init__(
        self,
        *,
        workspace: Path,
        clock: Clock = SYSTEM_CLOCK,
        observe: Observe | None = None,
        features: Callable[[str], bool] | FeatureFlags | None = None,
        cache: FileCache | None = None,
        retry: RetryPolicy | None = None,
        max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
        watch_health_interval: float = 30.0,
        ops: FsOps = REAL_FS,
        watch_backend: WatchBackend | None = None,
        on_degraded: Callable[[str], object] | None = None,
        skip_dirs: frozenset[str] = DEFAULT_SKIP_DIRS,
        racy_window_ns: int = RACY_WINDOW_NS,
        durable: bool = True,
        sweep_on_start: bool = True,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        watch_quota: WatchQuota | None = None,
        incidents: Incidents | None = None,
        breaker: CircuitBreaker | None = None,
        watch_state: Path | None = None,
        watch_restarts: int = 3,  # restarts of a failing watch before polling (App: its row)
        serve_stale: bool = True,  # a cached copy when the disk fails (App: the row's fallback)
    ) -> None:
        self.clock = clock
        self.workspace = Workspace(workspace)
        self.cache = cache if cache is not None else FileCache()
        self.retry = retry if retry is not None else default_retry(clock)
        self.store = FileStore(
            self.workspace,
            cache=self.cache,
            retry=self.retry,
            ops=ops,
            max_file_bytes=max_file_bytes,
            racy_window_ns=racy_window_ns,
            durable=durable,
            clock=clock,
            observe=observe,
            incidents=incidents,
            breaker=breaker,
            serve_stale=serve_stale,
        )
        self.watcher = WatcherRecovery(
            relative=self.workspace.relative,
            clock=clock,
            backend=watch_backend,
            health_interval=watch_health_interval,
            skip_dirs=skip_dirs,
            on_degraded=on_degraded,
            observe=observe,
            quota=watch_quota,
            max_failures=watch_restarts,
        )
        if features is None:
            self._enabled: Callable[[str], bool] = lambda feature: True
        elif callable(features):
            self._enabled = features
        else:
            self._enabled = features.is_enabled
        self._owners: dict[str, int] = {}
        # Keyed watches are kept on disk (None: not kept, as for an in-process caller).
        self.watch_store = WatchStore(watch_state) if watch_state is not None else None
        self._keyed: dict[str, _Kept] = {}  # by key, while open
        self._skip_dirs = skip_dirs
        self._sweep_on_start = sweep_on_start
        self.max_message_bytes = max_message_bytes
        self._swept = 0
        self._stop_sweep = threading.Event()
        self._sweeper: asyncio.Task[int] | None = None

    # -- life cycle ---------------------------------------------------------------------------
    async def __aenter__(self) -> FileService:
        self._stop_sweep.clear()
        if self._sweep_on_start:
            self._sweeper = asyncio.get_running_loop().create_task(
                self.sweep_temp_files(), name="fs temp file sweep"
            )
        await self.watcher.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._owners.clear()
        self._keyed.clear()  # their files stay: a later server gets them back
        self._stop_sweep.set()
        await self.watcher.aclose()
        if self.watch_store is not None:
            self.watch_store.close()
        sweeper, self._sweeper = self._sweeper, None
        if sweeper is not None:
            await asyncio.wait({sweeper})  # the thread stops at its next folder

    async def swept(self) -> int:
        """Wait for the sweep started on entry; returns the temp files it removed (0 if none)."""
        sweeper = self._sweeper
        if sweeper is None:
            return 0
        await asyncio.wait({sweeper})
        return sweeper.result() if not sweeper.cancelled() else 0

    async def sweep_temp_files(self) -> int:
        """Remove temp files crashed writers left in the workspace; returns how many."""
        try:
            removed = await asyncio.to_thread(
                sweep_temp_files,
                self.workspace.root,
                ops=self.store.ops,
                skip_dirs=self._skip_dirs,
                stop=self._stop_sweep,
            )
        except Exception:
            # Junk left behind is hidden and harmless; a failed sweep must not fail the server.
            log.exception("sweeping temporary files in %s failed", self.workspace.root)
            return 0
        self._swept += removed
        return removed

    # -- methods ------------------------------------------------------------------------------
    def relief(self) -> Relief:
        """What memory pressure may take back: the file cache."""
        return Relief("FileService.cache", trim_cache=self.cache.trim, clear_cache=self.cache.clear)

    def methods(self) -> dict[str, Method]:
        return {
            "fs/read": method(self._read),
            "fs/write": method(self._write),
            "fs/stat": method(self._stat),
            "fs/list": method(self._list),
            "fs/watch": method(self._watch, idempotent=True),
            "fs/unwatch": method(self._unwatch),
            "fs/edit": method(self._edit),
            "fs/search": method(self._search),
            "fs/tree": method(self._tree),
        }

    # fs/edit, fs/search and fs/tree live in their own modules, imported on first use (their
    # dependencies, msgspec and pathspec, would otherwise add to every server's start-up).
    async def _edit(self, params: Params, ctx: CallContext) -> dict[str, object]:
        from lapce_bridge.fs.edit import edit

        return await edit(self.store, params)

    async def _search(self, params: Params, ctx: CallContext) -> dict[str, object]:
        from lapce_bridge.fs.search import search

        return await search(self.store, params, clock=self.clock)

    async def _tree(self, params: Params, ctx: CallContext) -> dict[str, object]:
        from lapce_bridge.fs.tree import tree

        return await tree(self.store, params)

    async def _read(self, params: Params, ctx: CallContext) -> dict[str, Any]:
        p = params if type(params) is dict else _object(params)
        encoding = p.get("encoding", "utf-8")
        if encoding != "utf-8":
            encoding = _encoding(p)
        raw = p.get("path")
        if type(raw) is not str:
            return self.render(await self.store.read(raw), encoding)
        # The cache hit is the hot path: one stat and a lookup, no coroutine, no result object.
        found = self.store.probe(raw)
        if isinstance(found, CacheEntry):
            kept = found.rendered
            if kept is not None and kept[0] == encoding:
                content = kept[1]
            else:
                content = _encode(found.data, encoding, self.max_message_bytes)
                self.cache.keep_rendered(found, encoding, content)
            return {
                "content": content,
                "encoding": encoding,
                "size": len(found.data),
                "mtimeNs": found.identity[0],
                "fromCache": True,
                "stale": False,
            }
        return self.render(await self.store.read_path(raw, found), encoding)

    def render(self, result: ReadResult, encoding: str) -> dict[str, Any]:
        """`result` in the fs/read wire shape."""
        out: dict[str, Any] = {
            "content": _encode(result.data, encoding, self.max_message_bytes),
            "encoding": encoding,
            "size": len(result.data),
            "mtimeNs": result.mtime_ns,
            "fromCache": result.from_cache,
            "stale": False,
        }
        if result.stale:
            out["stale"] = True
            out["staleReason"] = result.stale_reason
        return out

    async def _write(self, params: Params, ctx: CallContext) -> dict[str, Any]:
        p = _object(params)
        real = self.workspace.resolve(p.get("path"))
        data = _content(p, _encoding(p))
        expected = p.get("expectedMtimeNs")
        if expected is not None and (type(expected) is not int or expected < 0):
            raise InvalidParams("expectedMtimeNs must be a non-negative integer or null")
        create_dirs = p.get("createDirs", False)
        if type(create_dirs) is not bool:
            raise InvalidParams("createDirs must be a boolean")
        try:
            st = await self.store.write(
                real, data, expected_mtime_ns=expected, create_dirs=create_dirs
            )
        except FileSystemError as exc:
            if exc.errno != errno.ENOENT or create_dirs or Path(real).parent.is_dir():
                raise
            # Say what to do: a new file in a new folder is what an agent writes most.
            raise FileSystemError(
                f"{exc.detail}: its folder does not exist; pass createDirs: true to make it",
                errno=exc.errno,
                classification=exc.classification,
                data=exc.data,
            ) from None
        return {"size": st.st_size, "mtimeNs": st.st_mtime_ns}

    def _stat(self, params: Params, ctx: CallContext) -> dict[str, Any]:
        return self.store.stat(_object(params).get("path"))

    async def _list(self, params: Params, ctx: CallContext) -> list[dict[str, Any]]:
        return await self.store.list_async(_object(params).get("path", "."))

    async def _watch(self, params: Params, ctx: CallContext) -> dict[str, str]:
        p = _object(params)
        if not self._enabled(FILE_WATCHING):
            raise Unavailable("file watching is turned off at this quality level; poll fs/stat")
        paths = p.get("paths")
        if not isinstance(paths, list) or not paths:
            raise InvalidParams("paths must be a non-empty array of paths")
        if len(paths) > MAX_WATCH_PATHS:
            raise InvalidParams(f"at most {MAX_WATCH_PATHS} paths per watch")
        recursive = p.get("recursive", True)
        if type(recursive) is not bool:
            raise InvalidParams("recursive must be a boolean")
        roots = [self.workspace.resolve(raw, what="paths[]") for raw in paths]
        key = p.get("idempotencyKey")
        store = self.watch_store
        if isinstance(key, str) and store is not None:
            return await self._watch_kept(key, store, roots, recursive, ctx)
        self._check_roots(roots)
        notify = ctx.notify
        numbered = _Numbered()

        def sink(watch_id: str, changes: list[dict[str, str]]) -> None:
            numbered.seq += 1
            notify("fs/didChange", {"watchId": watch_id, "changes": changes, "seq": numbered.seq})

        watch_id = await self.watcher.watch(
            roots, sink=sink, recursive=recursive, owner=ctx.connection_id
        )
        self._owners[watch_id] = ctx.connection_id
        ctx.on_close(partial(self._release, watch_id, ctx.connection_id))
        return {"watchId": watch_id}

    def _check_roots(self, roots: list[str]) -> None:
        for root in roots:
            try:
                self.store.ops.stat(root)
            except OSError as exc:
                raise fs_error(exc, "watch", self.workspace.relative(root)) from exc

    async def _watch_kept(
        self, key: str, store: WatchStore, roots: list[str], recursive: bool, ctx: CallContext
    ) -> dict[str, str]:
        """`fs/watch` with a key: the saved watch back (what changed since reported), or a
        new one saved from its first scan on."""
        live = self._keyed.get(key)
        if live is not None:
            _same_watch(key, live.persisted, roots, recursive)
            if self._owners.get(live.persisted.watch_id) == ctx.connection_id:
                return {"watchId": live.persisted.watch_id}  # a plain repeat
            # Another connection's (one going away as its client reconnects): taken over.
            self._release(live.persisted.watch_id, self._owners.get(live.persisted.watch_id))
        persisted = await asyncio.to_thread(store.load, key)  # a large tree: 10 MB to parse
        if persisted is not None:
            _same_watch(key, persisted, roots, recursive)
        else:
            # A saved watch comes back even when its folder went away meanwhile: what it held
            # is reported deleted, and the folder is watched again when it returns.
            self._check_roots(roots)
        baseline = persisted.snapshot if persisted is not None else None
        if persisted is None:
            persisted = Persisted(key, f"w-{store.name(key)[:12]}", roots, recursive)
        kept = _Kept(store, persisted)
        notify = ctx.notify

        def sink(watch_id: str, changes: list[dict[str, str]]) -> None:
            kept.persisted.seq += 1
            notify(
                "fs/didChange",
                {"watchId": watch_id, "changes": changes, "seq": kept.persisted.seq},
            )

        try:
            watch_id = await self.watcher.watch(
                roots,
                sink=sink,
                recursive=recursive,
                owner=ctx.connection_id,
                watch_id=persisted.watch_id,
                baseline=baseline,
                journal=kept,
            )
        except BaseException:
            if baseline is None:  # refused (a quota, say): nothing of it is to come back
                store.forget(key)
            raise
        self._owners[watch_id] = ctx.connection_id
        self._keyed[key] = kept
        ctx.on_close(partial(self._release, watch_id, ctx.connection_id))
        return {"watchId": watch_id}

    def _unwatch(self, params: Params, ctx: CallContext) -> None:
        watch_id = _object(params).get("watchId")
        if not isinstance(watch_id, str) or self._owners.get(watch_id) != ctx.connection_id:
            raise InvalidParams(f"no watch {watch_id!r} on this connection")
        kept = next((k for k in self._keyed.values() if k.persisted.watch_id == watch_id), None)
        self._release(watch_id, ctx.connection_id)
        if kept is not None and self.watch_store is not None:
            self.watch_store.forget(kept.persisted.key)  # unwatched: nothing to come back

    def _release(self, watch_id: str, owner: int | None) -> None:
        """Stop `owner`'s watch (its connection closed, or it unwatched); a keyed one stays
        saved. A watch another connection took over since is not `owner`'s to stop."""
        if owner is None or self._owners.get(watch_id) != owner:
            return
        del self._owners[watch_id]
        for key, kept in list(self._keyed.items()):
            if kept.persisted.watch_id == watch_id:
                del self._keyed[key]
        self.watcher.unwatch(watch_id)

    def statistics(self) -> FileServiceStats:
        return FileServiceStats(
            store=self.store.statistics(),
            cache=self.cache.statistics(),
            watch=self.watcher.statistics(),
            temp_files_swept=self._swept,
        )


def _same_watch(key: str, persisted: Persisted, roots: list[str], recursive: bool) -> None:
    if (persisted.roots, persisted.recursive) != (roots, recursive):
        raise InvalidParams(
            f"idempotencyKey {key!r} was first used for a watch of other paths; "
            "a different watch needs a key of its own",
            data={"idempotencyKey": key, "reason": "params differ"},
        )


class _Numbered:
    """The `seq` of an unsaved watch's notifications."""

    __slots__ = ("seq",)

    def __init__(self) -> None:
        self.seq = 0


class _Kept:
    """A keyed watch's journal: what it knows goes to its files before its client hears."""

    __slots__ = ("persisted", "store")

    def __init__(self, store: WatchStore, persisted: Persisted) -> None:
        self.store = store
        self.persisted = persisted

    def rescanned(self, snapshot: Snapshot, changes: list[Change]) -> None:
        self.persisted.snapshot = snapshot
        self._ahead(changes, self.store.save, self.persisted)

    def changed(self, changes: list[Change], snapshot: Snapshot) -> None:
        self._ahead(changes, self.store.append, self.persisted, changes, snapshot)

    def _ahead(self, changes: list[Change], write: Callable[..., None], *args: Any) -> None:
        """Write with the seq the last notification of `changes` will carry (the sink counts
        them as it sends them), so a restarted server never numbers one again."""
        notices = -(-len(changes) // MAX_CHANGES_PER_NOTICE)
        self.persisted.seq += notices
        try:
            write(*args)
        except Exception:
            # Live events still flow; only a restart's report could then be incomplete.
            log.exception("saving watch %s failed", self.persisted.watch_id)
        finally:
            self.persisted.seq -= notices


def _object(params: Any) -> dict[str, Any]:
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise InvalidParams("params must be an object")
    return params


def _encoding(p: dict[str, Any]) -> str:
    encoding = p.get("encoding", "utf-8")
    if encoding is None:
        return "utf-8"
    if encoding not in ENCODINGS:
        raise InvalidParams(f"encoding must be one of {', '.join(ENCODINGS)}, got {encoding!r}")
    return str(encoding)


_ESCAPED = bytes(range(0x20)) + b'"\\'
ENVELOPE_BYTES = 512  # the response around the content: id, size, mtimeNs, flags


def json_text_bytes(data: bytes) -> int:
    """At most how many bytes `data`, as UTF-8 text, takes in a JSON string (quotes included).

    Non-ASCII text is not escaped by the server's encoder; control characters take up to
    6 bytes (`\\u001f`), a quote or backslash 2.
    """
    plain = len(data.translate(None, _ESCAPED))
    controls = len(data.translate(None, b'"\\')) - plain
    return 2 + plain + 6 * controls + 2 * (len(data) - plain - controls)


def _encode(data: bytes, encoding: str, max_message_bytes: int) -> str:
    if encoding == "base64":
        return binascii.b2a_base64(data, newline=False).decode("ascii")
    # Below an eighth of the limit even six-fold growth fits: no need to count.
    if len(data) * 6 + ENVELOPE_BYTES > max_message_bytes:
        need = json_text_bytes(data) + ENVELOPE_BYTES
        if need > max_message_bytes:
            raise FileTooLarge(
                f"as JSON text this {len(data)} byte file takes up to {need} bytes, over the "
                f"{max_message_bytes} byte message limit (it holds many characters JSON "
                "escapes); read it with encoding 'base64'",
                data={"size": len(data), "limit": max_message_bytes, "jsonBytes": need},
            )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidParams(
            f"the file is not valid UTF-8 (byte {exc.start}: {exc.reason}); "
            "read it with encoding 'base64'"
        ) from exc


def _content(p: dict[str, Any], encoding: str) -> bytes:
    content = p.get("content")
    if not isinstance(content, str):
        raise InvalidParams("content must be a string")
    try:
        if encoding == "utf-8":
            return content.encode("utf-8")
        return binascii.a2b_base64(content, strict_mode=True)
    except (UnicodeEncodeError, binascii.Error) as exc:
        raise InvalidParams(f"content is not valid {encoding}: {exc}") from exc


__all__ = [
    "ENVELOPE_BYTES",
    "FILE_WATCHING",
    "FeatureFlags",
    "FileService",
    "FileServiceStats",
    "default_retry",
    "json_text_bytes",
]
