"""search_files' outputSchema types a match apart, in `$defs`, and describes it on the list:
a client validating with `jsonschema` checks the page, not each of its thousands of matches."""

from __future__ import annotations

from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match

from lapce_bridge.mcp.tools import BY_NAME, TOOLS, object_schema, output_schema, to_snake
from lapce_bridge.schema.files import SearchMatch, SearchResult


def answer(**changed: Any) -> dict[str, Any]:
    built: dict[str, Any] = to_snake(
        SearchResult(
            matches=[SearchMatch(path="src/a.py", line=3, text="needle")],
            next_cursor="c", complete=False, timed_out=False, files_searched=3,
            files_skipped=0,
        )
    )  # fmt: skip
    built.update(changed)
    return built


def refusal(instance: dict[str, Any]) -> str | None:
    """The error the SDK client would raise (`validate_tool_result`'s way), if any."""
    validator = Draft202012Validator(output_schema(BY_NAME["search_files"]))
    error = best_match(validator.iter_errors(instance))
    return None if error is None else error.message


def test_a_real_answer_passes_and_the_page_itself_is_still_checked() -> None:
    assert refusal(answer()) is None
    assert refusal(answer(matches="a:1:x")) == "'a:1:x' is not of type 'array'"
    assert refusal(answer(files_searched="3")) == "'3' is not of type 'integer'"
    missing = answer()
    del missing["complete"]
    assert refusal(missing) is not None
    # A match is not checked item by item: that is the trade (see `items_apart`).
    assert refusal(answer(matches=[{"path": "a"}])) is None


def test_the_match_is_typed_in_defs_and_described_on_the_list() -> None:
    schema = output_schema(BY_NAME["search_files"])
    typed = object_schema(SearchResult)["properties"]["matches"]["items"]
    assert schema["$defs"] == {"SearchMatch": typed}
    assert typed["properties"] == {
        "path": {"type": "string"}, "line": {"type": "integer"}, "text": {"type": "string"},
    }  # fmt: skip
    # The typed item validates real matches and refuses others, for a client that wants it.
    item = Draft202012Validator(typed)
    assert item.is_valid({"path": "a", "line": 1, "text": ""})
    assert not item.is_valid({"path": "a", "line": "1", "text": ""})
    listed = schema["properties"]["matches"]
    assert set(listed) == {"type", "description"}  # no `items` to descend into
    assert listed["type"] == "array"
    assert listed["description"].startswith("The matching lines")
    assert listed["description"].endswith(
        "Each an object with the fields path (string), line (integer), text (string): typed "
        "in $defs/SearchMatch, not checked item by item."
    )
    Draft202012Validator.check_schema(schema)


def test_only_the_listed_fields_are_typed_apart() -> None:
    for tool in TOOLS:
        schema = output_schema(tool)
        for name, prop in object_schema(tool.output)["properties"].items():
            if name in tool.unchecked_items:
                assert "items" not in schema["properties"][name]
            else:
                assert schema["properties"][name] == prop
    assert [t.name for t in TOOLS if t.unchecked_items] == ["search_files"]
