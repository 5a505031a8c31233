"""The terminal host's log, bounded: `host.log` and at most `backups` older files beside it.

A host may run for weeks. Its log (`host-<digest>/host.log`) is where its server started it
writing its stderr, and it used to grow without end. `BoundedLog` is the host's logging
handler: when the file would pass `max_bytes`, it becomes `host.log.1` (the older ones move
up, the oldest past `backups` is dropped) and a new `host.log` is started, so the host's log
never takes more than about `(backups + 1) * max_bytes` (a file that is already too large
when the host starts is rotated at its first line). Every file is private (0600, opened
without following a symlink). What is written to the process's stderr without logging (a
traceback of a crash, a warning of the interpreter's) follows: stderr is pointed at the new
file each time, never left writing to a rotated one.
"""

from __future__ import annotations

import io
import logging
import logging.handlers
import os
from pathlib import Path

from lapce_bridge.private import open_private_file

MAX_BYTES = 1 << 20
BACKUPS = 2
FORMAT = "%(asctime)s host %(process)d %(levelname)s %(message)s"


class BoundedLog(logging.handlers.RotatingFileHandler):
    def __init__(
        self,
        path: Path,
        *,
        max_bytes: int = MAX_BYTES,
        backups: int = BACKUPS,
        stderr_fd: int | None = 2,
    ) -> None:
        self.stderr_fd = stderr_fd  # set before the first open, which points it here
        super().__init__(path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8")
        self.setFormatter(logging.Formatter(FORMAT))

    def _open(self) -> io.TextIOWrapper:
        fd = open_private_file(self.baseFilename, os.O_WRONLY | os.O_APPEND, create=True)
        stream = os.fdopen(fd, "a", encoding="utf-8")
        if self.stderr_fd is not None:
            stream.flush()
            os.dup2(fd, self.stderr_fd)  # stderr writes go to the current file too
        return stream


def bounded_log(
    path: Path, *, max_bytes: int = MAX_BYTES, backups: int = BACKUPS, level: int = logging.INFO
) -> BoundedLog:
    """Log the host's lines (and its stderr) to `path`, bounded; the root logger's only handler."""
    handler = BoundedLog(path, max_bytes=max_bytes, backups=backups)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    return handler


__all__ = ["BACKUPS", "MAX_BYTES", "BoundedLog", "bounded_log"]
