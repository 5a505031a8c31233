"""Every byte a command prints, kept: in memory while small, in a file once large.

Theory of operation: an execution's normalised output (UTF-8 text) is appended to a `Spool`.
Until it passes the spool's inline limit it stays in one bytearray; past it, the bytes move to
a file under the state directory and memory keeps only a head and a tail of half the result
size each, so a command printing a gigabyte costs a bounded amount of memory while
`read()` still returns every byte. The result's `output` is the whole text when it fits, else
head + a marker line + tail, cut on character boundaries.

`SpoolStore` keeps spools by execution id, least recently used first. Finished spools are
evicted past `max_count` or `max_bytes` (of finished output, kept as a running sum so that a
command costs O(1) here); a running one never is (its command is still writing).
`trim(keep_bytes)` is the memory-pressure lever.

Invariants: `total` is the UTF-8 length of everything written; `read(offset, limit)` returns
whole characters only (a limit that would split one is shortened), and its offsets are byte
offsets into that stream.
"""

from __future__ import annotations

import contextlib
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from lapce_bridge.core.errors import InvalidParams
from lapce_bridge.private import create_private_file, private_dir

DEFAULT_READ_LIMIT = 1024 * 1024


def truncation_marker(omitted: int) -> str:
    return f"\n[... {omitted} bytes omitted; terminal/readOutput returns all of them ...]\n"


def whole_chars(data: bytes | bytearray, *, at_start: bool, at_end: bool) -> str:
    """Decode a slice of valid UTF-8 cut anywhere, dropping the partial characters at its cuts."""
    start, end = 0, len(data)
    if at_start:
        while start < end and start < 4 and (data[start] & 0xC0) == 0x80:
            start += 1
    if at_end:
        end = _char_boundary(data, start, end)
    return bytes(data[start:end]).decode("utf-8", "replace")


def _char_boundary(data: bytes | bytearray, start: int, end: int) -> int:
    """The largest index <= end that does not split a UTF-8 sequence of data[start:end]."""
    j = end - 1
    while j >= start and end - j <= 4 and (data[j] & 0xC0) == 0x80:
        j -= 1
    if j < start:
        return end
    lead = data[j]
    need = 1 if lead < 0x80 else 2 if lead < 0xE0 else 3 if lead < 0xF0 else 4
    return j if end - j < need else end


class Spool:
    """One execution's output. Not thread-safe: owned by the terminal's event loop."""

    __slots__ = (
        "_file",
        "_half",
        "_head",
        "_max",
        "_mem",
        "_tail",
        "_total",
        "finished",
        "inline_limit",
        "path",
    )

    def __init__(self, path: Path, max_output_bytes: int, *, inline_limit: int | None = None):
        self.path = path
        self._max = max_output_bytes
        self._half = max(1, max_output_bytes // 2)
        self.inline_limit = max(max_output_bytes, inline_limit or 0)
        self._mem: bytearray | None = bytearray()
        self._file: BinaryIO | None = None
        self._head = b""
        self._tail = bytearray()
        self._total = 0
        self.finished = False

    @property
    def total(self) -> int:
        return self._total

    @property
    def on_disk(self) -> bool:
        return self._mem is None

    @property
    def memory_bytes(self) -> int:
        return len(self._mem) if self._mem is not None else len(self._head) + len(self._tail)

    def write(self, text: str) -> None:
        if not text:
            return
        data = text.encode("utf-8", "surrogateescape")
        self._total += len(data)
        mem = self._mem
        if mem is not None:
            mem += data
            if len(mem) <= self.inline_limit:
                return
            self._move_to_disk(mem)
            return
        assert self._file is not None
        self._file.write(data)
        tail = self._tail
        tail += data
        if len(tail) > 2 * self._half:
            del tail[: len(tail) - self._half]

    def _move_to_disk(self, mem: bytearray) -> None:
        # 0600 in a verified private folder: command output often holds secrets. The folder
        # is ours alone, so a leftover file of the same name can be removed, not trusted.
        folder = private_dir(self.path.parent)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        fd = create_private_file(folder / self.path.name)
        self._file = open(fd, "wb", buffering=256 * 1024)  # noqa: SIM115 - kept open
        self._file.write(mem)
        self._head = bytes(mem[: self._half])
        self._tail = bytearray(mem[-self._half :])
        self._mem = None

    def finish(self) -> None:
        """No more output: the writer is closed (a finished spool holds no descriptor)."""
        self.finished = True
        self.close()

    def result(self) -> tuple[str, bool]:
        """The `output` of the result and whether it was truncated."""
        mem = self._mem
        if mem is not None and self._total <= self._max:
            return mem.decode("utf-8", "replace"), False
        if mem is not None:
            head, tail = mem[: self._half], mem[-self._half :]
        else:
            head, tail = bytearray(self._head), self._tail[-self._half :]
        omitted = self._total - len(head) - len(tail)
        text = (
            whole_chars(head, at_start=False, at_end=True)
            + truncation_marker(omitted)
            + whole_chars(tail, at_start=True, at_end=False)
        )
        return text, True

    def read(self, offset: int, limit: int = DEFAULT_READ_LIMIT) -> tuple[str, int, bool]:
        """`(text, next_offset, eof)` from byte `offset`, at most `limit` bytes of whole chars."""
        if offset < 0 or limit <= 0:
            raise InvalidParams(f"offset must be >= 0 and limit > 0 (got {offset}, {limit})")
        offset = min(offset, self._total)
        want = min(limit, self._total - offset)
        # Up to 3 bytes more than asked, to finish a character the limit would cut.
        chunk = self._bytes(offset, min(want + 3, self._total - offset))
        end = min(want, len(chunk))
        if offset + end < self._total:
            end = _char_boundary(chunk, 0, end)
            if end == 0 and chunk:  # a limit smaller than one character: give that character
                lead = chunk[0]
                end = min(
                    len(chunk), 1 if lead < 0xC0 else 2 if lead < 0xE0 else 3 if lead < 0xF0 else 4
                )
        text = chunk[:end].decode("utf-8", "replace")
        nxt = offset + end
        return text, nxt, self.finished and nxt >= self._total

    def _bytes(self, offset: int, count: int) -> bytes:
        if self._mem is not None:
            return bytes(self._mem[offset : offset + count])
        if self._file is not None:
            self._file.flush()
        with open(self.path, "rb") as f:
            f.seek(offset)
            return f.read(count)

    def close(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None

    def delete(self) -> None:
        self.close()
        if self._mem is None:
            with contextlib.suppress(OSError):
                os.unlink(self.path)
        self._mem = bytearray()


@dataclass(frozen=True, slots=True)
class SpoolStats:
    spools: int
    running: int
    disk_bytes: int
    memory_bytes: int
    evicted: int


class SpoolStore:
    """Spools by execution id, LRU-bounded by count and bytes."""

    def __init__(self, directory: Path, *, max_count: int = 256, max_bytes: int = 1 << 30) -> None:
        self.directory = directory
        self.max_count = max_count
        self.max_bytes = max_bytes
        self._spools: OrderedDict[str, Spool] = OrderedDict()
        self._counted: set[str] = set()
        self._bytes = 0  # of finished spools
        self._evicted = 0

    def create(self, execution_id: str, max_output_bytes: int) -> Spool:
        spool = Spool(self.directory / f"{execution_id}.out", max_output_bytes)
        self._spools[execution_id] = spool
        self._evict()
        return spool

    def get(self, execution_id: str) -> Spool:
        spool = self._spools.get(execution_id)
        if spool is None:
            raise InvalidParams(
                f"unknown executionId {execution_id!r} (never run here, or its output was "
                "released to bound memory and disk)"
            )
        self._spools.move_to_end(execution_id)
        return spool

    def read(self, execution_id: str, offset: int, limit: int) -> tuple[str, int, bool]:
        return self.get(execution_id).read(offset, limit)

    def finished(self, execution_id: str) -> None:
        """Count a finished spool's bytes (a running one's grow; they are counted once here)."""
        spool = self._spools.get(execution_id)
        if spool is not None and execution_id not in self._counted:
            spool.finish()
            self._counted.add(execution_id)
            self._bytes += spool.total
            self._evict()

    @property
    def finished_bytes(self) -> int:
        return self._bytes

    def _evict(self) -> None:
        while len(self._spools) > self.max_count or self._bytes > self.max_bytes:
            if not self._drop_oldest_finished():
                return

    def _drop_oldest_finished(self) -> bool:
        for key, spool in self._spools.items():
            if spool.finished:
                self._drop(key, spool)
                return True
        return False

    def _drop(self, key: str, spool: Spool) -> None:
        del self._spools[key]
        if key in self._counted:
            self._counted.discard(key)
            self._bytes -= spool.total
        spool.delete()
        self._evicted += 1

    def trim(self, keep_bytes: int) -> int:
        """Release finished spools, oldest first, until at most `keep_bytes` remain; freed bytes."""
        before = self._bytes
        while self._bytes > keep_bytes and self._drop_oldest_finished():
            pass
        return before - self._bytes

    def close(self) -> None:
        for spool in self._spools.values():
            spool.delete()
        self._spools.clear()
        self._counted.clear()
        self._bytes = 0

    def statistics(self) -> SpoolStats:
        spools = self._spools.values()
        return SpoolStats(
            spools=len(self._spools),
            running=sum(1 for s in spools if not s.finished),
            disk_bytes=sum(s.total for s in spools if s.on_disk),
            memory_bytes=sum(s.memory_bytes for s in spools),
            evicted=self._evicted,
        )
