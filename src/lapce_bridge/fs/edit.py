"""`fs/edit`: exact search/replace edits applied to one file as one atomic write.

Theory of operation: the file is read (through the store's cache and recovery), the edits are
applied in order to the text, each to the result of the ones before it, and the new text
replaces the file with one atomic write (`FileStore.write`). Invariants:

- Exact or nothing. Every edit's `oldText` must occur exactly `count` times (default once):
  a text found twice is ambiguous, and guessing which one was meant is how an agent edits the
  wrong function. If any edit does not match as stated, nothing is written and the error
  (EditMismatch, -32602) names every such edit, how often it matched, and where: the lines of
  each occurrence, or, when it matched nowhere, the nearest lines of the file.
- No lost update. The write carries the mtime of the version the edits were applied to as
  its `expectedMtimeNs`, so a concurrent writer's version is never overwritten unseen: the
  write is refused (ConflictError), and the edit is re-applied to the new version (the edits
  are exact, so they either still match as stated or fail as above). With the caller's own
  `expectedMtimeNs`, a changed file is a ConflictError at once: the caller asked to edit the
  version it saw, not whatever is there now. The read and the write happen under the path's
  write lock in the file store, so this server's own writers (fs/write, other edits) wait
  their turn instead of starving an edit; only a writer outside the server makes it retry.
- A reader (or a crash) sees the whole old file or the whole new one, never a mix: the
  write is `write_atomic`'s temp file + fsync + rename.
- `dryRun` computes the same answer (the unified diff, the replacement count) and writes
  nothing; `mtimeNs` is then the current file's.

Text only: a file that is not UTF-8 is refused (edit it with `fs/write`). Line endings are
matched as they are; when `oldText` fails only because the file uses CRLF, the error says so.
"""

from __future__ import annotations

import asyncio
import difflib
from dataclasses import dataclass

import msgspec

from lapce_bridge.core.errors import ConflictError, FileSystemError, InvalidParams
from lapce_bridge.fs.files import FileStore
from lapce_bridge.rpc import Params
from lapce_bridge.schema.files import EditParams, EditResult, TextEdit
from lapce_bridge.schema.validate import convert

METHOD = "fs/edit"
CONFLICT_ATTEMPTS = 10  # re-applications after a concurrent writer won the race
THREAD_EDIT_BYTES = 256 * 1024  # above this, matching and diffing run in a worker thread
MAX_LINES_SHOWN = 10
NEAREST = 3


class EditMismatch(InvalidParams):
    """An edit did not match the file as many times as stated; nothing was written."""


@dataclass(frozen=True, slots=True)
class Miss:
    index: int
    expected: int
    matches: int
    lines: list[int]  # where it matched (when too often)
    nearest: list[tuple[int, str]]  # the closest lines (when it matched nowhere)
    hint: str

    def to_wire(self) -> dict[str, object]:
        return {
            "index": self.index,
            "expected": self.expected,
            "matches": self.matches,
            "lines": self.lines,
            "nearest": [{"line": n, "text": t} for n, t in self.nearest],
            **({"hint": self.hint} if self.hint else {}),
        }

    def describe(self) -> str:
        times = "once" if self.matches == 1 else f"{self.matches} times"
        text = f"edits[{self.index}].oldText matched {times}, expected {self.expected}"
        if self.lines:
            shown = ", ".join(str(n) for n in self.lines)
            more = ", ..." if self.matches > len(self.lines) else ""
            text += f" (at lines {shown}{more}; add surrounding lines to make it unique"
            text += " or state count)" if self.expected == 1 else ")"
        elif self.nearest:
            near = "; ".join(f"{n}: {t.strip()[:80]!r}" for n, t in self.nearest)
            text += f" (nearest lines {near})"
        if self.hint:
            text += f"; {self.hint}"
        return text


def apply_edits(text: str, edits: list[TextEdit]) -> tuple[str, int, list[Miss]]:
    """`text` with `edits` applied in order; the replacement count; the edits that missed.

    An edit that misses is skipped, so each later edit is still checked (against the text the
    matching ones produced) and the caller learns about every problem in one answer.
    """
    misses: list[Miss] = []
    replaced = 0
    for index, edit in enumerate(edits):
        found = text.count(edit.old_text)
        if found != edit.count:
            misses.append(_miss(text, index, edit, found))
            continue
        text = text.replace(edit.old_text, edit.new_text, found)
        replaced += found
    return text, replaced, misses


def _miss(text: str, index: int, edit: TextEdit, found: int) -> Miss:
    old = edit.old_text
    lines: list[int] = []
    nearest: list[tuple[int, str]] = []
    hint = ""
    if found:
        at = -1
        for _ in range(min(found, MAX_LINES_SHOWN)):
            at = text.find(old, at + 1)
            lines.append(text.count("\n", 0, at) + 1)
    else:
        nearest = _nearest_lines(text, old)
        if "\r\n" in text and "\r\n" not in old and old.replace("\n", "\r\n") in text:
            hint = "the file uses CRLF line endings; write \\r\\n in oldText"
        elif _squash(old) and _squash(old) in _squash(text):
            hint = "it matches when whitespace is ignored: copy the file's exact indentation"
    return Miss(index, edit.count, found, lines, nearest, hint)


def _squash(text: str) -> str:
    return " ".join(text.split())


def _nearest_lines(text: str, old: str) -> list[tuple[int, str]]:
    """The file's lines most like the first non-blank line of `old`, best first."""
    target = next((line.strip() for line in old.splitlines() if line.strip()), "")
    if not target:
        return []
    matcher = difflib.SequenceMatcher(autojunk=False)
    matcher.set_seq2(target)
    scored: list[tuple[float, int, str]] = []
    cutoff = 0.5
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped:
            continue
        matcher.set_seq1(stripped)
        if matcher.real_quick_ratio() < cutoff or matcher.quick_ratio() < cutoff:
            continue
        ratio = matcher.ratio()
        if ratio >= cutoff:
            scored.append((ratio, number, line))
    scored.sort(key=lambda item: (-item[0], item[1]))
    return [(number, line) for _, number, line in scored[:NEAREST]]


def unified_diff(old: str, new: str, rel: str) -> str:
    """A `git diff`-style unified diff of `old` to `new` (3 lines of context)."""
    out: list[str] = []
    diff = difflib.unified_diff(
        old.splitlines(keepends=True),
        new.splitlines(keepends=True),
        f"a/{rel}",
        f"b/{rel}",
        n=3,
    )
    for line in diff:
        if line.endswith("\n"):
            out.append(line)
        else:
            out.append(line + "\n\\ No newline at end of file\n")
    return "".join(out)


def _prepare(text: str, edits: list[TextEdit], rel: str) -> tuple[str, int, str]:
    new, replaced, misses = apply_edits(text, edits)
    if misses:
        problems = "; ".join(miss.describe() for miss in misses)
        raise EditMismatch(
            f"{METHOD}: {rel}: {problems}; nothing was written",
            data={"path": rel, "edits": [miss.to_wire() for miss in misses]},
        )
    return new, replaced, unified_diff(text, new, rel)


async def edit(store: FileStore, params: Params) -> dict[str, object]:
    """The `fs/edit` method on `store`."""
    p = convert(params, EditParams, METHOD)
    real = store.workspace.resolve(p.path)
    rel = store.workspace.relative(real)
    attempt = 0
    while True:
        attempt += 1
        # Under the path's write lock this server's other writes wait, so a retry is
        # needed only when a writer outside the server changed the file meanwhile.
        async with store.writer(real):
            current = await store.read_with_recovery(real)
            if current.stale:
                raise FileSystemError(
                    f"{METHOD}: {rel} could not be read afresh ({current.stale_reason})",
                    retryable=True,
                    data={"path": rel},
                )
            expected = p.expected_mtime_ns
            if expected is not None and current.mtime_ns != expected:
                raise ConflictError(
                    f"{rel} changed since it was read (mtimeNs {current.mtime_ns}, expected "
                    f"{expected}); read it again and redo the edits",
                    data={"mtimeNs": current.mtime_ns, "path": rel},
                )
            try:
                text = current.data.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InvalidParams(
                    f"{METHOD}: {rel} is not UTF-8 text (byte {exc.start}); use fs/write",
                    data={"path": rel},
                ) from exc
            if len(current.data) > THREAD_EDIT_BYTES:
                new, replaced, diff = await asyncio.to_thread(_prepare, text, p.edits, rel)
            else:
                new, replaced, diff = _prepare(text, p.edits, rel)
            if p.dry_run:
                mtime_ns, size = current.mtime_ns, len(current.data)
            else:
                data = new.encode("utf-8")
                try:
                    st = await store.write_locked(real, data, expected_mtime_ns=current.mtime_ns)
                except ConflictError:
                    if expected is not None or attempt >= CONFLICT_ATTEMPTS:
                        raise
                    continue  # a writer outside the server won: apply the edits to its version
                mtime_ns, size = st.st_mtime_ns, st.st_size
            result = EditResult(
                path=rel, diff=diff, mtime_ns=mtime_ns, size=size, dry_run=p.dry_run,
                replacements=replaced,
            )  # fmt: skip
            return msgspec.to_builtins(result)  # type: ignore[no-any-return]


__all__ = ["EditMismatch", "apply_edits", "edit", "unified_diff"]
