"""Every byte a command prints, kept: in memory while small, in a file once large.

Theory of operation: an execution's normalised output (UTF-8 text) is appended to a `Spool`.
Until it passes the spool's inline limit it stays in one bytearray; past it, the bytes move to
a file under the state directory and memory keeps only a head and a tail of half the result
size each, so a command printing a gigabyte costs a bounded amount of memory while
`read()` still returns every byte. The result's `output` is the whole text when it fits, else
head + a marker line + tail, cut on character boundaries.

A running spool's file is capped at `max_running_bytes` (a command such as `yes` prints 55 MB/s
for as long as it runs): past the cap the file keeps the first half of the cap (the head) and
the most recent output (the tail, compacted back to half the cap whenever it reaches the cap),
and the bytes between are dropped. The loss is stated, never silent: `lost_bytes` counts them,
the result's marker line says how many, and `read()` of an offset inside the dropped range
returns a marker line naming the range and moves the offset on to the kept tail.

`SpoolStore` keeps spools by execution id, least recently read first. Spools live on disk and
obey a disk budget, not memory pressure: finished spools are expired past `max_count` or
`max_bytes` (of finished output on disk, kept as a running sum so that a command costs O(1)
here), least recently read first; a running one never is (its command is still writing).
Reading an expired execution's output raises `OutputExpired`, which says so (an execution the
store never had is "unknown"). `spill()` is the memory-pressure lever: it moves finished
outputs still held in memory to their files, so memory is freed and every output stays
readable.

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
from typing import Any, BinaryIO

from lapce_bridge.core.errors import InvalidParams
from lapce_bridge.private import create_private_file, private_dir

DEFAULT_READ_LIMIT = 1024 * 1024
DEFAULT_MAX_RUNNING_BYTES = 64 * 1024 * 1024
_EXPIRED_REMEMBERED = 4096  # expired ids kept to answer "expired" rather than "unknown"


class OutputExpired(InvalidParams):
    """The execution existed, but its output was released to keep spools within budget."""


def truncation_marker(omitted: int, lost: int = 0) -> str:
    if not lost:
        return f"\n[... {omitted} bytes omitted; terminal/readOutput returns all of them ...]\n"
    return (
        f"\n[... {omitted} bytes omitted; {lost} of them were dropped to cap the running "
        f"output's spool, terminal/readOutput returns the other {omitted - lost} ...]\n"
    )


def dropped_marker(start: int, end: int) -> str:
    """What `read()` returns for an offset in a dropped range [start, end)."""
    return f"\n[... bytes {start}..{end} ({end - start}) dropped to cap the spool ...]\n"


def whole_chars(data: bytes | bytearray, *, at_start: bool, at_end: bool) -> str:
    """Decode a slice of valid UTF-8 cut anywhere, dropping the partial characters at its cuts."""
    return whole_bytes(data, at_start=at_start, at_end=at_end).decode("utf-8", "replace")


def whole_bytes(data: bytes | bytearray, *, at_start: bool, at_end: bool) -> bytes:
    """A slice of UTF-8 cut anywhere, without the partial characters at its cuts."""
    start, end = 0, len(data)
    if at_start:
        while start < end and start < 4 and (data[start] & 0xC0) == 0x80:
            start += 1
    if at_end:
        end = _char_boundary(data, start, end)
    return bytes(data[start:end])


def at_line_ends(head: bytearray, tail: bytearray, half: int) -> tuple[bytearray, bytearray]:
    """The head and tail a truncated result keeps, cut at line ends where one is near (within
    a quarter of `half`, at most 4 KiB): the head after its last newline, the tail after the
    first. `tail` may start with the byte before it (one more than `half`), which tells
    whether it already starts a line."""
    near = max(1, min(half // 4, 4096))
    if len(tail) > half:
        if tail[0] == 0x0A:
            tail = tail[1:]
        else:
            tail = tail[1:]
            nl = tail.find(b"\n", 0, near)
            if nl >= 0:
                tail = tail[nl + 1 :]
    if head and head[-1] != 0x0A:
        nl = head.rfind(b"\n", max(0, len(head) - near))
        if nl >= 0:
            head = head[: nl + 1]
    return head, tail


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
        "_file_len",
        "_half",
        "_head",
        "_head_len",
        "_max",
        "_mem",
        "_tail",
        "_tail_start",
        "_total",
        "_where",
        "finished",
        "inline_limit",
        "max_running_bytes",
    )

    def __init__(
        self,
        path: Path | str,
        max_output_bytes: int,
        *,
        inline_limit: int | None = None,
        max_running_bytes: int = DEFAULT_MAX_RUNNING_BYTES,
    ):
        # A string: a `Path` a command would cost more than most commands' whole spool, and
        # only output that moves to disk needs one.
        self._where = os.fspath(path)
        self._max = max_output_bytes
        self._half = max(1, max_output_bytes // 2)
        self.inline_limit = max(max_output_bytes, inline_limit or 0)
        # The cap never cuts into what the result shows, nor below a few bytes.
        self.max_running_bytes = max(max_running_bytes, 2 * self._half + 8, 64)
        self._mem: bytearray | None = bytearray()
        self._file: BinaryIO | None = None
        self._head = b""
        self._tail = bytearray()
        self._total = 0
        self._file_len = 0  # bytes in the file
        self._head_len: int | None = None  # set once the cap is first reached
        self._tail_start = 0  # stream offset of the file's byte at `_head_len`
        self.finished = False

    @property
    def path(self) -> Path:
        return Path(self._where)

    @property
    def total(self) -> int:
        return self._total

    @property
    def on_disk(self) -> bool:
        return self._mem is None

    @property
    def memory_bytes(self) -> int:
        return len(self._mem) if self._mem is not None else len(self._head) + len(self._tail)

    @property
    def lost_bytes(self) -> int:
        """Bytes dropped from the middle to cap the running spool (0 when nothing was)."""
        return 0 if self._head_len is None else self._tail_start - self._head_len

    @property
    def stored_bytes(self) -> int:
        """What the output takes where it lives (its file, or memory)."""
        return self._file_len if self._mem is None else len(self._mem)

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
        else:
            if self._file is None:  # spilled while finished, then written again: reopen
                self._file = open(self.path, "ab", buffering=256 * 1024)  # noqa: SIM115
            self._file.write(data)
            self._file_len += len(data)
            tail = self._tail
            tail += data
            if len(tail) > 2 * self._half:
                del tail[: len(tail) - self._half - 1]  # and the byte before: a line start?
        if self._file_len > self.max_running_bytes:
            self._compact()

    def drop_partial_line(self) -> None:
        """Take back what was written after the last newline while it is held in memory: the
        shell's prompt, drawn where a command's output ended, when no end mark came."""
        mem = self._mem
        if mem is None:
            return
        keep = mem.rfind(b"\n") + 1
        self._total -= len(mem) - keep
        del mem[keep:]

    def _move_to_disk(self, mem: bytearray) -> None:
        # 0600 in a verified private folder: command output often holds secrets. The folder
        # is ours alone, so a leftover file of the same name can be removed, not trusted.
        folder = private_dir(self.path.parent)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        fd = create_private_file(folder / self.path.name)
        self._file = open(fd, "wb", buffering=256 * 1024)  # noqa: SIM115 - kept open
        self._file.write(mem)
        self._file_len = len(mem)
        self._head = bytes(mem[: self._half])
        self._tail = bytearray(mem[-self._half - 1 :])
        self._mem = None

    def _compact(self) -> None:
        """Keep the head and the newest half-cap of output in the file; drop what is between."""
        assert self._file is not None
        self._file.flush()
        half = self.max_running_bytes // 2
        with open(self.path, "r+b") as f:
            if self._head_len is None:
                f.seek(0)
                self._head_len = _char_boundary(f.read(half), 0, half)
                self._tail_start = self._head_len
            head_len = self._head_len
            keep = half
            f.seek(self._file_len - keep)
            kept = f.read(keep)
            # Start the kept tail on a character, so reads of it decode cleanly.
            skip = 0
            while skip < min(4, len(kept)) and (kept[skip] & 0xC0) == 0x80:
                skip += 1
            kept = kept[skip:]
            dropped_to = self._total - len(kept)
            f.seek(head_len)
            f.write(kept)
            f.truncate(head_len + len(kept))
        self._tail_start = dropped_to
        self._file_len = head_len + len(kept)
        self._file.seek(self._file_len)

    def finish(self) -> None:
        """No more output: the writer is closed (a finished spool holds no descriptor)."""
        self.finished = True
        self.close()

    def spill(self) -> int:
        """Move output held in memory to the file; returns the bytes of memory freed."""
        mem = self._mem
        if mem is None or not mem:
            return 0
        freed = len(mem)
        self._move_to_disk(mem)
        if self.finished:  # the result's head and tail are read back from the file
            self._head, self._tail = b"", bytearray()
            self.close()
        return freed - self.memory_bytes

    def result(self) -> tuple[str, bool]:
        """The `output` of the result and whether it was truncated."""
        mem = self._mem
        if mem is not None and self._total <= self._max:
            return mem.decode("utf-8", "replace"), False
        if self._mem is None and self._total <= self._max:
            return self._bytes(0, self._total).decode("utf-8", "replace"), False
        # The tail with the byte before it, when known (it says whether the tail starts a line).
        if mem is not None:
            head, tail = mem[: self._half], mem[-self._half - 1 :]
        elif self._head:
            head, tail = bytearray(self._head), self._tail[-self._half - 1 :]
        else:  # spilled: nothing kept in memory
            head = bytearray(self._bytes(0, self._half))
            tail = bytearray(self._bytes(self._total - self._half - 1, self._half + 1))
        head, tail = at_line_ends(head, tail, self._half)
        first = whole_bytes(head, at_start=False, at_end=True)
        last = whole_bytes(tail, at_start=True, at_end=False)
        marker = truncation_marker(self._total - len(first) - len(last), self.lost_bytes)
        if first.endswith(b"\n"):
            marker = marker[1:]  # the head ends its own line
        return first.decode("utf-8", "replace") + marker + last.decode("utf-8", "replace"), True

    def read(self, offset: int, limit: int = DEFAULT_READ_LIMIT) -> tuple[str, int, bool]:
        """`(text, next_offset, eof)` from byte `offset`, at most `limit` bytes of whole chars.

        An offset in a dropped range answers a marker line naming it and the offset of the
        first kept byte after it.
        """
        if offset < 0 or limit <= 0:
            raise InvalidParams(f"offset must be >= 0 and limit > 0 (got {offset}, {limit})")
        offset = min(offset, self._total)
        stop = self._total  # this read does not cross into a dropped range
        head_len = self._head_len
        if head_len is not None:
            if head_len <= offset < self._tail_start:
                return dropped_marker(head_len, self._tail_start), self._tail_start, False
            if offset < head_len:
                stop = head_len
        want = min(limit, stop - offset)
        # Up to 3 bytes more than asked, to finish a character the limit would cut.
        chunk = self._bytes(offset, min(want + 3, stop - offset))
        end = min(want, len(chunk))
        if offset + end < stop:
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
        position = offset
        if self._head_len is not None and offset >= self._head_len:
            position = self._head_len + (offset - self._tail_start)
        with open(self.path, "rb") as f:
            f.seek(position)
            return f.read(count)

    def close(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None

    def saved(self) -> dict[str, int | None] | None:
        """What reading a finished spool back from its file needs (None: not all on disk)."""
        if not self.finished or self._mem is not None:
            return None
        return {
            "total": self._total,
            "fileBytes": self._file_len,
            "headLen": self._head_len,
            "tailStart": self._tail_start,
        }

    @classmethod
    def reopened(cls, path: Path, max_output_bytes: int, saved: dict[str, Any]) -> Spool:
        """A finished spool read back from the file another process left (`saved()`)."""
        spool = cls(path, max_output_bytes)
        spool._mem = None
        spool._total = int(saved["total"])
        spool._file_len = int(saved["fileBytes"])
        head_len = saved.get("headLen")
        spool._head_len = int(head_len) if head_len is not None else None
        spool._tail_start = int(saved.get("tailStart") or 0)
        spool.finished = True
        return spool

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
    lost_bytes: int = 0  # dropped from the middle of running outputs by the cap
    spilled: int = 0  # outputs moved from memory to disk under memory pressure


class SpoolStore:
    """Spools by execution id, least recently read last, bounded by count and disk bytes."""

    def __init__(
        self,
        directory: Path,
        *,
        max_count: int = 256,
        max_bytes: int = 1 << 30,
        max_running_bytes: int = DEFAULT_MAX_RUNNING_BYTES,
    ) -> None:
        self.directory = directory
        self._folder = os.fspath(directory)
        self.max_count = max_count
        self.max_bytes = max_bytes
        self.max_running_bytes = max_running_bytes
        self._spools: OrderedDict[str, Spool] = OrderedDict()
        self._counted: dict[str, int] = {}  # finished spools: the bytes counted for each
        self._bytes = 0  # of finished spools
        self._evicted = 0
        self._spilled = 0
        self._expired: OrderedDict[str, str] = OrderedDict()  # id -> why
        self._reason: tuple[tuple[int, int], str] = ((0, 0), "")  # (budget, its reason)

    def create(self, execution_id: str, max_output_bytes: int) -> Spool:
        spool = Spool(
            f"{self._folder}/{execution_id}.out",
            max_output_bytes,
            max_running_bytes=self.max_running_bytes,
        )
        spools = self._spools
        spools[execution_id] = spool
        if self._expired:
            self._expired.pop(execution_id, None)
        if len(spools) > self.max_count or self._bytes > self.max_bytes:
            self._evict()
        return spool

    def get(self, execution_id: str) -> Spool:
        spool = self._spools.get(execution_id)
        if spool is None:
            why = self._expired.get(execution_id)
            if why is not None:
                raise OutputExpired(
                    f"the output of execution {execution_id!r} has expired: {why}",
                    data={"executionId": execution_id, "expired": True},
                )
            raise InvalidParams(f"unknown executionId {execution_id!r} (never run here)")
        self._spools.move_to_end(execution_id)
        return spool

    def read(self, execution_id: str, offset: int, limit: int) -> tuple[str, int, bool]:
        return self.get(execution_id).read(offset, limit)

    def finished(self, execution_id: str) -> None:
        """Count a finished spool's bytes (a running one's grow; they are counted once here)."""
        spool = self._spools.get(execution_id)
        if spool is not None and execution_id not in self._counted:
            spool.finish()
            stored = spool.stored_bytes
            self._counted[execution_id] = stored
            self._bytes += stored
            if len(self._spools) > self.max_count or self._bytes > self.max_bytes:
                self._evict()

    @property
    def finished_bytes(self) -> int:
        return self._bytes

    def _evict(self) -> None:
        while len(self._spools) > self.max_count or self._bytes > self.max_bytes:
            if not self._drop_oldest_finished():
                return

    def _drop_oldest_finished(self, why: str | None = None) -> bool:
        for key, spool in self._spools.items():
            if spool.finished:
                self._drop(key, spool, why)
                return True
        return False

    def _drop(self, key: str, spool: Spool, why: str | None = None) -> None:
        del self._spools[key]
        self._bytes -= self._counted.pop(key, 0)
        spool.delete()
        self._evicted += 1
        self._expired[key] = why or self._budget_reason()
        while len(self._expired) > _EXPIRED_REMEMBERED:
            self._expired.popitem(last=False)

    def _budget_reason(self) -> str:
        """Why an output was released to keep within the budget (one string while the budget
        stays: a command past `max_count` releases one)."""
        budget = (self.max_count, self.max_bytes)
        if self._reason[0] != budget:
            self._reason = (
                budget,
                f"released, least recently read first, to keep the server's spools within "
                f"{self.max_count} outputs and {self.max_bytes} bytes on disk",
            )
        return self._reason[1]

    def spill(self) -> int:
        """Move finished outputs held in memory to disk; returns the memory bytes freed."""
        freed = 0
        for key, spool in list(self._spools.items()):
            if spool.finished and not spool.on_disk and spool.total:
                freed += spool.spill()
                self._spilled += 1
                counted = self._counted.get(key)
                if counted is not None:
                    self._bytes += spool.stored_bytes - counted
                    self._counted[key] = spool.stored_bytes
        self._evict()
        return freed

    def trim(self, keep_bytes: int) -> int:
        """Release finished spools, oldest first, until at most `keep_bytes` remain; freed bytes."""
        before = self._bytes
        why = f"released to bring the server's spools down to {keep_bytes} bytes"
        while self._bytes > keep_bytes and self._drop_oldest_finished(why):
            pass
        return before - self._bytes

    def saved(self) -> dict[str, dict[str, int | None]]:
        """The finished outputs whose files hold them whole, by execution id (what a
        successor process needs to read them: `adopt`)."""
        found = {}
        for key, spool in self._spools.items():
            state = spool.saved()
            if state is not None:
                found[key] = state
        return found

    def adopt(self, saved: dict[str, Any], max_output_bytes: int = 256 * 1024) -> int:
        """Serve the finished outputs another process left on disk (`saved()`); returns how
        many files were found."""
        adopted = 0
        for key, state in saved.items():
            path = self.directory / f"{key}.out"
            if key in self._spools or type(state) is not dict or not path.is_file():
                continue
            spool = Spool.reopened(path, max_output_bytes, state)
            self._spools[key] = spool
            self._counted[key] = spool.stored_bytes
            self._bytes += spool.stored_bytes
            adopted += 1
        self._evict()
        return adopted

    def release(self) -> None:
        """Forget every spool but leave the files (a successor adopts them)."""
        for spool in self._spools.values():
            spool.close()
        self._spools.clear()
        self._counted.clear()
        self._bytes = 0

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
            disk_bytes=sum(s.stored_bytes for s in spools if s.on_disk),
            memory_bytes=sum(s.memory_bytes for s in spools),
            evicted=self._evicted,
            lost_bytes=sum(s.lost_bytes for s in spools),
            spilled=self._spilled,
        )
