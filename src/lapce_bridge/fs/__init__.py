"""The file system service: confined paths, cached reads with recovery, atomic writes, watches.

`FileService` (in `lapce_bridge.fs.service`) is what the server mounts; the parts it composes
are usable on their own: `Workspace` (confinement), `FileCache`, `FileStore` (reads, writes,
stat, list), `write_atomic`, and `WatcherRecovery` (over a backend from `fs.backend`).
"""

from lapce_bridge.fs.atomic import write_atomic
from lapce_bridge.fs.cache import CacheEntry, CacheStats, FileCache, identity_of
from lapce_bridge.fs.files import FileStore, ReadResult
from lapce_bridge.fs.ops import REAL_FS, FsOps, RealFs
from lapce_bridge.fs.paths import Workspace
from lapce_bridge.fs.watch import WatcherRecovery

__all__ = [
    "REAL_FS",
    "CacheEntry",
    "CacheStats",
    "FileCache",
    "FileStore",
    "FsOps",
    "ReadResult",
    "RealFs",
    "WatcherRecovery",
    "Workspace",
    "identity_of",
    "write_atomic",
]
