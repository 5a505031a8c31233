"""Terminal hosts a test started: found by their state folder, stopped when the test ends.

A terminal host outlives its server on purpose (that is what keeps terminals across a server
restart), and lingers until its terminals are reaped as orphans. A test suite that starts a
server per test would otherwise leave one host (and its shells) per test running for half a
minute each, loading the machine the next tests run on.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

_HOST_MODULE = b"lapce_bridge.host"


def hosts_under(root: Path) -> list[int]:
    """The pids of the terminal hosts whose `--state-dir` is inside `root`."""
    root = root.resolve()
    found = []
    try:
        entries = list(os.scandir("/proc"))
    except OSError:
        return []
    for entry in entries:
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue  # gone meanwhile, or not ours to read
        if _HOST_MODULE not in argv or b"--state-dir" not in argv:
            continue
        at = argv.index(b"--state-dir") + 1
        if at < len(argv) and Path(os.fsdecode(argv[at])).resolve().is_relative_to(root):
            found.append(int(entry.name))
    return found


def stop_hosts_under(root: Path, within: float = 10.0) -> list[int]:
    """SIGTERM the hosts of `root` (they close their terminals), SIGKILL what is left after
    `within` s; returns the pids that were running."""
    pids = hosts_under(root)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + within
    left = set(pids)
    while left and time.monotonic() < deadline:
        left = {pid for pid in left if _alive(pid)}
        if left:
            time.sleep(0.02)
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return pids


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for a reaper that does not reap counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return False
    return stat[stat.rfind(b")") + 2 :][:1] != b"Z"


__all__ = ["hosts_under", "stop_hosts_under"]
