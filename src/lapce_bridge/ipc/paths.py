"""Where the server's socket and state live, and the rules that keep them private.

- Socket: `$XDG_RUNTIME_DIR/lapce-bridge/bridge.sock` when that directory exists and is ours,
  else `<tempdir>/lapce-bridge-<uid>/bridge.sock`. The default folder is created 0700 or
  verified as private by `lapce_bridge.private` (owned by us, not a symlink, reached through
  folders no one else can change): another user who pre-created it is refused, never used.
  The folder of a `--socket` the user chose need only be safe (ours or root's, not writable
  by others unless sticky, like /tmp), and is never chmodded. The socket is bound under
  umask 0177, so it is 0600 from its first moment.
- A socket file left by a crashed server is detected by connecting to it: refused means
  stale (it is removed and replaced); accepted means a live server (`ServerAlreadyRunning`).
  A path that exists but is not a socket is never deleted.
- State (the idempotency journal): `$XDG_STATE_HOME/lapce-bridge`, else
  `~/.local/state/lapce-bridge`; private (0700) whichever it is, see `state_dir_ready`.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import stat
import tempfile
from pathlib import Path

from lapce_bridge.core.errors import PermissionDenied, Unavailable
from lapce_bridge.private import private_dir

APP_DIR = "lapce-bridge"
SOCKET_NAME = "bridge.sock"
# sun_path is 108 bytes on Linux including the terminating NUL.
MAX_SOCKET_PATH = 107
# Connections waiting to be accepted: a thousand clients may arrive at once (1,000 at once is
# a figure the bridge is held to), faster than a loop busy opening its services accepts them.
LISTEN_BACKLOG = 1024


class ServerAlreadyRunning(Unavailable):
    """A live server already answers on the socket path."""


def default_socket_path(env: dict[str, str] | None = None) -> Path:
    env = dict(os.environ) if env is None else env
    runtime = env.get("XDG_RUNTIME_DIR")
    if runtime:
        base = Path(runtime)
        with contextlib.suppress(OSError):
            info = base.stat()
            if stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid():
                return base / APP_DIR / SOCKET_NAME
    return Path(tempfile.gettempdir()) / f"{APP_DIR}-{os.getuid()}" / SOCKET_NAME


def default_state_dir(env: dict[str, str] | None = None) -> Path:
    env = dict(os.environ) if env is None else env
    state = env.get("XDG_STATE_HOME")
    if state:
        return Path(state) / APP_DIR
    return Path.home() / ".local" / "state" / APP_DIR


def is_default_app_dir(path: Path) -> bool:
    """A folder with our own name, which an earlier version may have made with looser bits."""
    return path.name in (APP_DIR, f"{APP_DIR}-{os.getuid()}")


def state_dir_ready(path: Path, *, chosen: bool) -> Path:
    """The state folder (journal, spools), created 0700 or verified private.

    A folder the user chose (`--state-dir`) that others can see into is refused, not
    chmodded; our default folder is tightened if an earlier version left it loose.
    """
    return private_dir(path, repair=not chosen and is_default_app_dir(path))


def probe(path: Path, timeout: float = 1.0) -> bool:
    """True when a server accepts connections on the Unix socket at `path`."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(str(path))
    except OSError:
        return False
    finally:
        sock.close()
    return True


def prepare_socket_path(path: Path) -> None:
    """Make `path` free for a new server: remove a stale socket, refuse a live one."""
    if len(os.fsencode(path)) > MAX_SOCKET_PATH:
        raise PermissionDenied(f"socket path is too long for a Unix socket ({path})")
    folder = path.parent
    if is_default_app_dir(folder):
        private_dir(folder, repair=True)
    else:
        private_dir(folder, shared=True)  # the user's choice: the 0600 socket guards itself
    try:
        info = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(info.st_mode):
        raise PermissionDenied(f"{path} exists and is not a socket; not removing it")
    if probe(path):
        raise ServerAlreadyRunning(
            f"a lapce-bridge server is already listening on {path}",
            data={"socket": str(path)},
        )
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def bind_unix_socket(path: Path, backlog: int = LISTEN_BACKLOG) -> socket.socket:
    """A listening socket at `path`, mode 0600 from creation."""
    prepare_socket_path(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(str(path))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ServerAlreadyRunning(f"{path} was taken by another server") from exc
        raise PermissionDenied(f"cannot bind {path}: {exc.strerror}") from exc
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    sock.listen(backlog)
    sock.setblocking(False)
    return sock


def file_identity(path: Path) -> tuple[int, int] | None:
    try:
        info = path.lstat()
    except OSError:
        return None
    return (info.st_dev, info.st_ino)


def remove_socket(path: Path, identity: tuple[int, int] | None = None) -> None:
    """Remove our socket file (the one with `identity`), never one a newer server bound."""
    current = file_identity(path)
    if current is None or (identity is not None and current != identity):
        return
    with contextlib.suppress(OSError):
        path.unlink()


__all__ = [
    "LISTEN_BACKLOG",
    "ServerAlreadyRunning",
    "bind_unix_socket",
    "default_socket_path",
    "default_state_dir",
    "file_identity",
    "is_default_app_dir",
    "prepare_socket_path",
    "probe",
    "remove_socket",
    "state_dir_ready",
]
