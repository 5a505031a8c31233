"""What a terminal host writes down so that a new host can recreate its terminals.

Theory of operation: `snapshot(service)` lists, for each open terminal, what it was created
with and where it is now: id, name, kept or not, its session (and whether it is that
session's default), the requested shell, the last cwd the shell reported, the env given at
creation, size, shell integration, and its private folder (where the shell's hooks save the
exported environment after every prompt). The host writes the list whenever it changes
(`SpecWriter`, atomically, 0600); a clean stop writes an empty list. A host that starts and
finds a list left by one that died recreates each terminal under its old id with that cwd,
that env and the exported variables its old shell last saved (`restore_all`): the same
recovery as a crashed shell, reported the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from lapce_bridge.private import (
    NotPrivate,
    open_private_dir,
    open_private_file,
    private_dir,
    write_private_file,
)
from lapce_bridge.terminal.files import new_private_dir, read_private, write_private
from lapce_bridge.terminal.result import Recovery
from lapce_bridge.terminal.service import TerminalService
from lapce_bridge.terminal.startup import restore_file

log = logging.getLogger("lapce_bridge.host")

Spec = dict[str, Any]


def snapshot(service: TerminalService, dirs: dict[str, str] | None = None) -> dict[str, Any]:
    """The terminals to recreate, and the finished outputs on disk a successor may read;
    `dirs` names, by terminal, a folder holding its saved env other than its own."""
    return {"terminals": terminals(service, dirs), "spools": service.spools.saved()}


def hand_over(service: TerminalService, folder: Path) -> dict[str, str]:
    """Copy each terminal's saved env into a folder of its own under `folder`, by terminal:
    closing a terminal removes its folder, and a successor host sources that env."""
    parent = private_dir(folder)
    dirs: dict[str, str] = {}
    for term in service.terminals.values():
        if term.dir == Path():
            continue
        target = new_private_dir(parent / f"{term.terminal_id}-{secrets.token_hex(4)}")
        for name in ("env", "env.fish"):
            data = read_private(term.dir / name)
            if data:
                write_private(target / name, data)
        dirs[term.terminal_id] = str(target)
    return dirs


def terminals(service: TerminalService, dirs: dict[str, str] | None = None) -> list[Spec]:
    specs: list[Spec] = []
    for term in service.terminals.values():
        owned = service.owners.describe(term.terminal_id)
        session = owned.session if owned is not None else None
        specs.append(
            {
                "terminalId": term.terminal_id,
                "name": owned.name if owned is not None else None,
                "keep": owned.keep if owned is not None else False,
                "session": session,
                "sessionDefault": session is not None
                and service.owners.session_default(session) == term.terminal_id,
                "shell": term.requested_shell,
                "kind": term.kind,
                "cwd": term.cwd or term.initial_cwd,
                "env": dict(term.extra_env),
                "cols": term.cols,
                "rows": term.rows,
                "shellIntegration": term.shell_integration,
                "dir": (dirs or {}).get(term.terminal_id, str(term.dir)),
                # What it ran: a successor says it was lost, not that it never existed.
                "running": term.current.execution_id if term.current is not None else None,
            }
        )
    return specs


EMPTY: dict[str, Any] = {"terminals": [], "spools": {}}


class SpecWriter:
    """Writes the specs to `path` when they changed since the last write.

    The periodic write (`run`) takes the snapshot on the event loop, where the terminals'
    state lives, and writes the file in a worker thread: a rename on a busy disk can take
    milliseconds, and the host answers nothing while its loop is blocked. Each snapshot is
    numbered when it is taken and a file write never replaces a newer one, so a clean
    stop's synchronous `write(EMPTY)` is not undone by a periodic write still in flight.
    """

    def __init__(self, path: Path, source: Callable[[], dict[str, Any]]) -> None:
        self.path = path
        self.source = source
        self._last = b""  # the newest snapshot taken (what the file will hold)
        self._taken = 0  # snapshots numbered so far
        self._written = 0  # the number of the snapshot the file holds
        self._lock = threading.Lock()
        self.writes = 0

    def write(self, specs: dict[str, Any] | None = None) -> bool:
        """Write now, in this thread, if the specs changed."""
        taken = self._take(specs)
        if taken is None:
            return False
        try:
            return self._put(*taken)
        except BaseException:
            self._last = b""  # not written: the next write tries again
            raise

    def _take(self, specs: dict[str, Any] | None) -> tuple[int, bytes] | None:
        """The snapshot, numbered, or None when it is what the file holds already."""
        data = orjson.dumps(self.source() if specs is None else specs)
        if data == self._last:
            return None
        self._last = data
        self._taken += 1
        return self._taken, data

    def _put(self, number: int, data: bytes) -> bool:
        with self._lock:
            if number <= self._written:  # a newer snapshot is in the file already
                return False
            folder = open_private_dir(self.path.parent)
            try:
                write_private_file(folder, self.path.name, data)
            finally:
                os.close(folder)
            self._written = number
            self.writes += 1
            return True

    async def run(self, interval: float, sleep: Callable[[float], Any]) -> None:
        """Write on change, every `interval` seconds (a cd is seen at its prompt)."""
        while True:
            await sleep(interval)
            try:
                taken = self._take(None)
                if taken is not None:
                    await asyncio.to_thread(self._put, *taken)
            except (OSError, NotPrivate) as exc:  # a full disk, a tampered state folder
                self._last = b""  # not written: the next turn tries again
                log.warning("could not write the terminal specs: %s", exc)


def load(path: Path) -> dict[str, Any]:
    """What a previous host left (empty when nothing, or unreadable: said in the log)."""
    try:
        fd = open_private_file(path)
    except FileNotFoundError:
        return EMPTY
    except OSError as exc:
        log.warning("cannot read %s: %s", path, exc)
        return EMPTY
    with os.fdopen(fd, "rb") as f:
        data = f.read()
    try:
        found = orjson.loads(data) if data else EMPTY
    except orjson.JSONDecodeError:
        log.warning("%s is not valid JSON; no terminal restored", path)
        return EMPTY
    if type(found) is not dict:
        return EMPTY
    specs = found.get("terminals")
    spools = found.get("spools")
    return {
        "terminals": [
            s for s in specs or [] if type(s) is dict and type(s.get("terminalId")) is str
        ],
        "spools": spools if type(spools) is dict else {},
    }


async def restore_all(service: TerminalService, specs: list[Spec], why: str) -> list[str]:
    """Recreate each terminal of `specs` under its id; returns the ids recreated."""
    restored = await asyncio.gather(*(_restore(service, s, why) for s in specs))
    return [tid for tid in restored if tid is not None]


def _prepare(spec: Spec) -> tuple[Path | None, str | None]:
    """The restore file made from the old shell's saved env, and the cwd if it still exists."""
    old_dir = Path(spec.get("dir") or "")
    restore = None
    if old_dir != Path() and old_dir.is_dir():
        with contextlib.suppress(OSError):
            restore = restore_file(old_dir, str(spec.get("kind") or "posix"))
    cwd = spec.get("cwd")
    return restore, cwd if isinstance(cwd, str) and os.path.isdir(cwd) else None


def _discard(spec: Spec) -> None:
    old_dir = Path(spec.get("dir") or "")
    if old_dir != Path() and old_dir.is_dir():
        shutil.rmtree(old_dir, ignore_errors=True)


async def _restore(service: TerminalService, spec: Spec, why: str) -> str | None:
    tid = str(spec["terminalId"])
    restore, cwd = _prepare(spec)
    try:
        term = await service.restore_terminal(
            tid,
            name=spec.get("name"),
            keep=bool(spec.get("keep")),
            session=spec.get("session"),
            session_default=bool(spec.get("sessionDefault")),
            restore=restore,
            shell=spec.get("shell"),
            cwd=cwd,
            env=spec.get("env") or None,
            cols=int(spec.get("cols") or 120),
            rows=int(spec.get("rows") or 30),
            shell_integration=bool(spec.get("shellIntegration", True)),
        )
    except Exception as exc:
        log.warning("terminal %s could not be recreated: %s", tid, exc)
        return None
    finally:
        _discard(spec)  # the old shell's folder: its env is in the new shell now
    term.pending_recoveries.append(Recovery("recreate_terminal", why))
    return tid


__all__ = ["EMPTY", "SpecWriter", "hand_over", "load", "restore_all", "snapshot", "terminals"]
