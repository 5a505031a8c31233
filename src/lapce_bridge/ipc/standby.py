"""A warm standby: a `serve` process that has loaded everything and waits to be told to serve.

Theory of operation: most of what a restarted server spends before it answers is its own
start-up, not serving: the interpreter, then the modules of the server, of its services and
of the params schema (about 150 ms of CPU on an idle machine, two to four times that on a
loaded one, where a supervised client's queued requests wait for all of it). A supervisor
(`ipc.spawn.ServerSupervisor`) therefore keeps a second process, started with `serve
--standby`, that did that work ahead of time and blocks on its stdin. When the server dies,
the supervisor writes one line to it and the standby goes on as a server that is started
from that moment: it binds the socket, opens the journal, the state and the services (the
terminal host is attached then), exactly as a cold start would, only without the imports.

- Nothing is bound, opened or read before the line comes: a standby holds no socket, no
  journal, no lock; the state it serves is the state at the moment it takes over.
- End of its stdin (the supervisor, or the client process holding it, went away) ends it,
  with status 0: a standby never outlives who would have woken it.
- Code changed under it (the package upgraded or edited since it loaded): it would serve
  the old code, so it exits with `STALE` instead, having served nothing, and the supervisor
  starts a server cold. Every loaded module file of the package is compared, by inode, size
  and modification time, with what it was when loaded.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Iterable, Mapping

STALE = 75
"""The exit status of a standby told to serve whose package changed since it loaded."""
READY = b"ready\n"
"""What a standby writes to its stdout once loaded (a supervisor may read it, or not)."""
GO = b"serve\n"
"""What a supervisor writes to a standby's stdin to have it serve."""

FileIdentity = tuple[int, int, int]


def load(modules: Iterable[str]) -> None:
    """Import `modules` now (the server's, its services', the extras')."""
    for name in modules:
        importlib.import_module(name)


def package_files(prefix: str = "lapce_bridge") -> dict[str, FileIdentity]:
    """The identity of every loaded module file of the package (inode, size, mtime)."""
    found: dict[str, FileIdentity] = {}
    for name, module in list(sys.modules.items()):
        if name != prefix and not name.startswith(prefix + "."):
            continue
        path = getattr(module, "__file__", None)
        if not isinstance(path, str):
            continue
        identity = _identity(path)
        if identity is not None:
            found[path] = identity
    return found


def changed(files: Mapping[str, FileIdentity]) -> list[str]:
    """The files of `files` that are gone or not what they were."""
    return [path for path, identity in files.items() if _identity(path) != identity]


def _identity(path: str) -> FileIdentity | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def wait_for_go(stdin: int = 0) -> bool:
    """Block until the supervisor's line (True) or the end of stdin (False)."""
    line = b""
    while not line.endswith(b"\n"):
        try:
            chunk = os.read(stdin, 64)
        except InterruptedError:  # pragma: no cover - PEP 475 retries for us
            continue
        if not chunk:
            return False
        line += chunk
    return line == GO


def announce_ready(stdout: int = 1) -> None:
    """`READY` on stdout, which then points at /dev/null: a server writes nothing there, and
    a pipe nobody reads any more is never to block it."""
    try:
        os.write(stdout, READY)
    except OSError:  # nobody reads it: the supervisor does not need to
        pass
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, stdout)
    finally:
        os.close(null)


__all__ = [
    "GO",
    "READY",
    "STALE",
    "announce_ready",
    "changed",
    "load",
    "package_files",
    "wait_for_go",
]
