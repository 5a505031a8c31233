"""search_files' text block: the matches as `grep -n` lines, then the counts and how to go on,
holding what the structured content holds; other tools keep their JSON as text."""

from __future__ import annotations

import re
from typing import Any

import orjson

from lapce_bridge.mcp.server import tool_result
from lapce_bridge.mcp.tools import BY_NAME, TOOLS, search_text, to_snake
from lapce_bridge.schema.files import SearchMatch, SearchResult


def page(*matches: tuple[str, int, str], cursor: str | None = None, timed_out: bool = False,
         searched: int = 7, skipped: int = 2) -> dict[str, Any]:  # fmt: skip
    built: dict[str, Any] = to_snake(
        SearchResult(
            matches=[SearchMatch(path=p, line=n, text=t) for p, n, t in matches],
            next_cursor=cursor, complete=cursor is None, timed_out=timed_out,
            files_searched=searched, files_skipped=skipped,
        )
    )  # fmt: skip
    return built


def test_matches_are_grep_lines_then_the_counts() -> None:
    out = page(("src/a.py", 3, 'x = "needle"'), ("src/b c.py", 10, "  needle\\t"))
    assert search_text(out) == (
        'src/a.py:3:x = "needle"\n'
        "src/b c.py:10:  needle\\t\n"
        "-- 2 matches, 7 files searched, 2 skipped; complete"
    )


def test_a_cut_page_gives_its_cursor_and_says_when_time_ran_out() -> None:
    more = search_text(page(("a", 1, "n"), cursor="eyJ2IjoxfQ==", searched=1, skipped=0))
    assert more.splitlines()[-1] == (
        '-- 1 match, 1 file searched, 0 skipped; more: call again with cursor "eyJ2IjoxfQ=="'
    )
    late = search_text(page(cursor="c2", timed_out=True))
    assert (
        late
        == '-- 0 matches, 7 files searched, 2 skipped; timed out; more: call again with cursor "c2"'
    )


def test_the_text_holds_what_the_structured_content_holds() -> None:
    out = page(("p/q.py", 4, "a:b:c"), ("p/r.py", 12, ""), cursor="Zm9v", searched=30, skipped=1)
    *lines, tail = search_text(out).split("\n")
    back = []
    for line in lines:
        path, number, text = line.split(":", 2)
        back.append({"path": path, "line": int(number), "text": text})
    assert back == out["matches"]
    got = re.fullmatch(r"-- (\d+) matches, (\d+) files searched, (\d+) skipped; "
                       r'more: call again with cursor "(.*)"', tail)  # fmt: skip
    assert got is not None
    assert got.groups() == ("2", "30", "1", "Zm9v")


def test_only_search_files_has_its_own_text_and_the_result_carries_it() -> None:
    assert [t.name for t in TOOLS if t.text is not None] == ["search_files"]
    out = page(("a.py", 2, "hit"))
    tool = BY_NAME["search_files"]
    assert tool.text is not None
    wire = tool_result(out, tool.text(out))
    assert wire == {
        "content": [
            {
                "type": "text",
                "text": "a.py:2:hit\n-- 1 match, 7 files searched, 2 skipped; complete",
            }
        ],
        "structuredContent": out,
    }
    plain = {"exit_code": 0}
    assert tool_result(plain)["content"] == [{"type": "text", "text": orjson.dumps(plain).decode()}]
