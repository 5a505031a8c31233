"""The server's side of finding its terminal host: connect to the running one, or start one.

Theory of operation: `attach()` connects to the host's socket and says `hello` (versions, the
server's settings). A host that answers `welcome` is used. One that answers `refused` (another
version) drains itself: it stops listening at once and exits when its running commands end;
the new host started meanwhile waits for its lock, recreates its terminals from what it wrote
down, and is used. With no host listening, `spawn_lock` (an exclusive `flock` on a file in the
host's private folder) makes sure that of two servers starting at once only one starts a host;
the other finds it listening. A host is started detached (`sh -c '... &'` in a new session):
it is no child of the server, so a SIGKILL of the server's process group does not reach it,
and its own death never leaves a zombie in the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import os
import shlex
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from lapce_bridge import __version__
from lapce_bridge.core.errors import Unavailable
from lapce_bridge.core.matrix import Strategy
from lapce_bridge.host import link
from lapce_bridge.host.places import HostPlaces
from lapce_bridge.private import open_private_file
from lapce_bridge.terminal.recovery import CrashLoopPolicy

P = TypeVar("P", bound=asyncio.Protocol)


class HostRefused(Unavailable):
    """The host speaks another version (it drains); a new one is to be started."""


def hello(
    *,
    workspace: Path,
    shell: str | None,
    max_message_bytes: int,
    features: dict[str, bool],
    crash_policy: CrashLoopPolicy | None = None,
) -> dict[str, Any]:
    greeting = {
        "k": "hello",
        "protocol": link.PROTOCOL_VERSION,
        "version": __version__,
        "workspace": str(workspace),
        "shell": shell,
        "maxMessageBytes": max_message_bytes,
        "features": features,
        "pid": os.getpid(),
    }
    if crash_policy is not None:
        greeting["crashPolicy"] = policy_to_wire(crash_policy)
    return greeting


def policy_to_wire(policy: CrashLoopPolicy) -> dict[str, Any]:
    """The server's crash-loop policy (its recovery matrix's rows) for the host's shells:
    every field by name (a strategy by its value)."""
    return {
        f.name: list(v) if isinstance(v := getattr(policy, f.name), tuple) else v
        for f in dataclasses.fields(policy)
    }


def policy_from_wire(value: Any) -> CrashLoopPolicy | None:
    """`policy_to_wire`'s policy, each field read as its default's type; None when it is
    missing or not understood (the host then keeps the one it has)."""
    if type(value) is not dict:
        return None
    defaults = CrashLoopPolicy()
    given: dict[str, Any] = {}
    try:
        for f in dataclasses.fields(CrashLoopPolicy):
            if f.name not in value:
                continue  # another version's field set: its default
            default, raw = getattr(defaults, f.name), value[f.name]
            if isinstance(default, Strategy):
                given[f.name] = Strategy(raw)
            elif isinstance(default, tuple):
                given[f.name] = tuple(str(item) for item in raw)
            elif type(raw) is not type(default) and not (
                type(default) is float and type(raw) is int
            ):
                return None
            else:
                given[f.name] = type(default)(raw)
        return CrashLoopPolicy(**given)
    except (TypeError, ValueError):
        return None


def host_command(
    state_dir: Path, workspace: Path, shell: str | None, linger: float, python: str
) -> list[str]:
    cmd = [python, "-m", "lapce_bridge.host", "--state-dir", str(state_dir)]
    cmd += ["--workspace", str(workspace), "--linger", f"{linger:g}"]
    if shell is not None:
        cmd += ["--shell", shell]
    return cmd


def spawn_detached(cmd: Sequence[str], log_path: Path) -> None:
    """Start `cmd` in a new session, no child of ours (the shell that starts it exits)."""
    fd = open_private_file(log_path, os.O_WRONLY | os.O_APPEND, create=True)
    try:
        line = " ".join(shlex.quote(c) for c in cmd) + " </dev/null >/dev/null &"
        subprocess.run(
            ["/bin/sh", "-c", line],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=fd,
            start_new_session=True,
            check=True,
        )
    finally:
        os.close(fd)


@contextlib.asynccontextmanager
async def spawn_lock(places: HostPlaces, sleep: Callable[[float], Any]) -> AsyncIterator[None]:
    """Held by the one server starting a host (polled: never blocks the loop)."""
    fd = open_private_file(places.spawn_lock, os.O_RDWR, create=True)
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                await sleep(0.02)
        yield
    finally:
        os.close(fd)  # releases the lock


async def open_link(
    places: HostPlaces, factory: Callable[[], P], greeting: dict[str, Any]
) -> P | None:
    """A link to the host listening at `places.socket`, greeted; None when none listens."""
    loop = asyncio.get_running_loop()
    try:
        _, proto = await loop.create_unix_connection(factory, str(places.socket))
    except OSError:
        return None
    send = getattr(proto, "send")  # noqa: B009 - the link protocol's own method
    send(greeting)
    return proto


async def start_host(
    places: HostPlaces,
    *,
    state_dir: Path,
    workspace: Path,
    shell: str | None,
    linger: float,
    sleep: Callable[[float], Any],
    within: float = 30.0,
    python: str = sys.executable,
) -> None:
    """Start a host unless one listens; return once one listens (`Unavailable` after `within`)."""
    from lapce_bridge.ipc.paths import probe

    async with spawn_lock(places, sleep):
        if await asyncio.to_thread(probe, places.socket, 0.5):
            return
        cmd = host_command(state_dir, workspace, shell, linger, python)
        await asyncio.to_thread(spawn_detached, cmd, places.log)
        waited = 0.0
        delay = 0.005
        while not await asyncio.to_thread(probe, places.socket, 0.5):
            if waited > within:
                raise Unavailable(
                    f"the terminal host did not start within {within:g} s (see {places.log})"
                )
            await sleep(delay)
            waited += delay
            delay = min(0.05, delay * 2)


__all__ = [
    "HostRefused",
    "hello",
    "host_command",
    "open_link",
    "policy_from_wire",
    "policy_to_wire",
    "spawn_detached",
    "start_host",
]
