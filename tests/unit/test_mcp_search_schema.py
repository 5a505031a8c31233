"""search_files' outputSchema checks each match by shape: an object holding path, line and
text, their types named in its description, as a client validating with `jsonschema` sees it."""

from __future__ import annotations

from typing import Any

import msgspec
from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match

from lapce_bridge.mcp.tools import BY_NAME, TOOLS, object_schema, output_schema, to_snake
from lapce_bridge.schema.files import SearchMatch, SearchResult


def answer(*matches: Any) -> dict[str, Any]:
    page = SearchResult(
        matches=[], next_cursor="c", complete=False, timed_out=False, files_searched=3,
        files_skipped=0,
    )  # fmt: skip
    built: dict[str, Any] = to_snake(page)
    built["matches"] = list(matches)
    return built


def refusal(instance: dict[str, Any]) -> str | None:
    """The error the SDK client would raise (`validate_tool_result`'s way), if any."""
    validator = Draft202012Validator(output_schema(BY_NAME["search_files"]))
    error = best_match(validator.iter_errors(instance))
    return None if error is None else error.message


def test_a_real_answer_passes_and_a_match_of_another_shape_is_refused() -> None:
    real = to_snake(
        SearchResult(
            matches=[SearchMatch(path="src/a.py", line=3, text="needle")],
            next_cursor=None, complete=True, timed_out=False, files_searched=1,
            files_skipped=0,
        )
    )  # fmt: skip
    assert refusal(real) is None
    assert refusal(answer({"path": "a", "line": 1, "text": ""})) is None
    missing = refusal(answer({"path": "a", "text": "x"}))
    assert missing == "'line' is a required property"
    assert refusal(answer("a:1:x")) == "'a:1:x' is not of type 'object'"


def test_the_description_names_each_field_and_its_type_from_the_struct() -> None:
    items = output_schema(BY_NAME["search_files"])["properties"]["matches"]["items"]
    typed = object_schema(SearchResult)["properties"]["matches"]["items"]["properties"]
    fields = [f.name for f in msgspec.structs.fields(SearchMatch)]
    assert items["required"] == fields == list(typed)
    assert set(items) == {"type", "description", "required"}  # no subschema to descend into
    named = ", ".join(f"{name} ({typed[name]['type']})" for name in fields)
    assert named == "path (string), line (integer), text (string)"
    assert items["description"].endswith(f"Fields: {named}.")
    assert items["description"].startswith("A matching line")


def test_only_the_listed_fields_are_checked_by_shape() -> None:
    for tool in TOOLS:
        schema = output_schema(tool)
        for name, prop in object_schema(tool.output)["properties"].items():
            if name in tool.by_shape:
                assert "properties" not in schema["properties"][name]["items"]
            else:
                assert schema["properties"][name] == prop
    assert [t.name for t in TOOLS if t.by_shape] == ["search_files"]
