"""Log set-up for the server: timestamps and levels on stderr, or JSON lines on request.

`configure(level, fmt)` installs one stderr handler on the root logger. `text` lines read
`2026-12-01T22:43:09.123Z WARNING lapce_bridge.app: message`; `json` lines are one object each,
`{"ts": ..., "level": ..., "logger": ..., "message": ..., "exc": ...}`, for a log shipper. Times
are UTC with milliseconds. stdout is never used: it may be the stdio transport.

What the default level (`info`) shows, and nothing per request: start (`listening on`) and
stop, commands timed out, interrupted or killed, recoveries and fallbacks (incidents with
their durations), alerts raised and cleared, pressure bands entered and refusals under
pressure (one line per operation per 10 s).
"""

from __future__ import annotations

import logging
import sys
import time
from typing import TextIO

import orjson

FORMATS = ("text", "json")
LEVELS = ("debug", "info", "warning", "error")


def _utc(record: logging.LogRecord) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
    return f"{seconds}.{int(record.msecs):03d}Z"


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = f"{_utc(record)} {record.levelname} {record.name}: {record.getMessage()}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": _utc(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry).decode()


def configure(level: str = "info", fmt: str = "text", stream: TextIO | None = None) -> None:
    """One handler on the root logger, replacing any installed before."""
    if level not in LEVELS or fmt not in FORMATS:
        raise ValueError(f"log level must be one of {LEVELS} and format one of {FORMATS}")
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())


__all__ = ["FORMATS", "LEVELS", "JsonFormatter", "TextFormatter", "configure"]
