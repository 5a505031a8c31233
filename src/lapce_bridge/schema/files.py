"""Params and results of `fs/edit`, `fs/search` and `fs/tree`."""

from __future__ import annotations

from typing import Annotated, Literal

from msgspec import Meta

from lapce_bridge.schema.base import NonNegative, Params, Result, Strict

Path = Annotated[str, Meta(min_length=1, description="workspace-relative or absolute path")]


class TextEdit(Strict):
    """One exact search/replace."""

    old_text: Annotated[str, Meta(min_length=1, description="exact text to find")]
    new_text: Annotated[str, Meta(description="text to put in its place")]
    count: Annotated[int, Meta(ge=1, description="how many times old_text must occur")] = 1


class EditParams(Params):
    path: Path
    edits: Annotated[list[TextEdit], Meta(min_length=1, max_length=1000)]
    dry_run: bool = False
    expected_mtime_ns: NonNegative | None = None


class EditResult(Result):
    path: str
    diff: str
    mtime_ns: int
    size: int
    dry_run: bool
    replacements: int


class SearchParams(Params):
    query: Annotated[str, Meta(min_length=1, max_length=4096)]
    regex: bool = False
    case_sensitive: bool = True
    path: Path = "."
    include: Annotated[list[str], Meta(max_length=256)] = []
    exclude: Annotated[list[str], Meta(max_length=256)] = []
    gitignore: bool = True
    max_results: Annotated[int, Meta(ge=1, le=10_000)] = 500
    timeout_ms: Annotated[int, Meta(ge=1, le=600_000)] = 10_000
    cursor: str | None = None


class SearchMatch(Result):
    path: str
    line: int
    text: str


class SearchResult(Result):
    matches: Annotated[
        list[SearchMatch],
        Meta(
            description="the matching lines, in the walk's order: each its file's path "
            "(relative to the workspace, '/'-separated), its number (from 1) and its text "
            "(without the line end, at most 500 characters)"
        ),
    ]
    next_cursor: str | None
    complete: bool
    timed_out: bool
    files_searched: int
    files_skipped: int


class TreeParams(Params):
    path: Path = "."
    depth: Annotated[int, Meta(ge=1, le=32)] = 2
    gitignore: bool = False
    max_entries: Annotated[int, Meta(ge=1, le=100_000)] = 5_000


Kind = Literal["file", "directory", "symlink", "other"]


class TreeEntry(Result):
    name: str
    kind: Kind
    size: int
    mtime_ns: int
    children: list[TreeEntry] | None = None


class TreeResult(Result):
    path: str
    entries: list[TreeEntry]
    count: int
    truncated: bool


__all__ = [
    "EditParams",
    "EditResult",
    "SearchMatch",
    "SearchParams",
    "SearchResult",
    "TextEdit",
    "TreeEntry",
    "TreeParams",
    "TreeResult",
]
