"""Where a terminal host keeps its files: one private folder per state directory and workspace.

`<state_dir>/host-<digest of the workspace>/` (0700) holds the host's lock (`host.lock`, which
also names its pid), its log, the terminals it would restore (`terminals.json`) and its
idempotency journal. The socket is `host.sock` in the same folder, 0600; when that path is
too long for a Unix socket (deep test folders), it is a digest-named socket in the user's
private runtime folder instead (the same one `serve`'s default socket uses).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import os
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from lapce_bridge.ipc.paths import MAX_SOCKET_PATH, default_socket_path
from lapce_bridge.private import open_private_file, private_dir


@dataclass(frozen=True, slots=True)
class HostPlaces:
    folder: Path
    socket: Path

    @property
    def lock(self) -> Path:
        return self.folder / "host.lock"

    @property
    def spawn_lock(self) -> Path:
        return self.folder / "spawn.lock"

    @property
    def log(self) -> Path:
        return self.folder / "host.log"

    @property
    def terminals(self) -> Path:
        return self.folder / "terminals.json"

    @property
    def journal(self) -> Path:
        return self.folder / "idempotency.journal"


def host_places(state_dir: Path, workspace: Path) -> HostPlaces:
    """The host's folder (created private) and socket path for this state dir and workspace."""
    digest = hashlib.sha256(str(workspace.resolve()).encode()).hexdigest()[:12]
    folder = private_dir(state_dir / f"host-{digest}")
    sock = folder / "host.sock"
    if len(os.fsencode(sock.absolute())) > MAX_SOCKET_PATH:
        where = hashlib.sha256(str(folder.absolute()).encode()).hexdigest()[:16]
        runtime = private_dir(default_socket_path().parent)
        sock = runtime / f"host-{where}.sock"
    return HostPlaces(folder.absolute(), sock.absolute())


def host_pid(places: HostPlaces) -> int | None:
    """The pid of the host holding the lock, or None when no host holds it."""
    try:
        fd = open_private_file(places.lock, os.O_RDWR)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.pread(fd, 32, 0).decode(errors="replace").strip()
            return int(text) if text.isdigit() else None
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


async def stop_host(
    state_dir: Path,
    workspace: Path,
    *,
    within: float = 10.0,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> None:
    """SIGTERM the host of this state dir and workspace (it closes its terminals) and wait,
    up to `within` seconds, for it to go. A host outlives its server on purpose; a bench or
    chaos run that started servers of its own leaves none behind."""
    pid = host_pid(host_places(state_dir, workspace))
    if pid is None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    for _ in range(int(within / 0.05)):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        await sleep(0.05)


__all__ = ["HostPlaces", "host_pid", "host_places", "stop_host"]
