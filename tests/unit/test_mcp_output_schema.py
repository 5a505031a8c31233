"""Every tool's outputSchema requires its result's required fields and types them apart, in
`$defs`: a client validating with `jsonschema` (the MCP Python SDK, on every call) checks
that they are there, and a reader or code generator finds each field's type in the result's
typed schema and in the description."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match

from lapce_bridge.mcp.tools import BY_NAME, TOOLS, object_schema, output_schema, to_snake
from lapce_bridge.schema.files import SearchMatch, SearchResult, TreeEntry, TreeResult
from lapce_bridge.schema.methods import ExecResult


def exec_answer(**changed: Any) -> dict[str, Any]:
    built: dict[str, Any] = to_snake(
        ExecResult(
            execution_id="t1-1", terminal_id="t1", exit_code=0, output="test\n",
            output_bytes=5, truncated=False, cwd="/w", duration_ms=0.4, status="completed",
            mode="shell_integration", shell="/bin/bash",
        )
    )  # fmt: skip
    built.update(changed)
    return built


def search_answer(**changed: Any) -> dict[str, Any]:
    built: dict[str, Any] = to_snake(
        SearchResult(
            matches=[SearchMatch(path="src/a.py", line=3, text="needle")],
            next_cursor="c", complete=False, timed_out=False, files_searched=3,
            files_skipped=0,
        )
    )  # fmt: skip
    built.update(changed)
    return built


def tree_answer() -> dict[str, Any]:
    leaf = TreeEntry(name="a.py", kind="file", size=3, mtime_ns=1)
    folder = TreeEntry(name="src", kind="directory", size=0, mtime_ns=1, children=[leaf])
    built: dict[str, Any] = to_snake(
        TreeResult(path=".", entries=[folder], count=2, truncated=False)
    )
    return built


def refusal(tool: str, instance: dict[str, Any]) -> str | None:
    """The error the SDK client would raise (`validate_tool_result`'s way), if any."""
    validator = Draft202012Validator(output_schema(BY_NAME[tool]))
    error = best_match(validator.iter_errors(instance))
    return None if error is None else error.message


def typed_refusal(tool: str, instance: dict[str, Any]) -> str | None:
    """The same against the result's typed schema in `$defs`, as a client that wants the
    types checked would: a `$ref` to it beside the outputSchema's own `$defs`."""
    schema = output_schema(BY_NAME[tool])
    typed = {"$ref": f"#/$defs/{BY_NAME[tool].output.__name__}", "$defs": schema["$defs"]}
    error = best_match(Draft202012Validator(typed).iter_errors(instance))
    return None if error is None else error.message


@pytest.mark.parametrize(
    ("tool", "answer"),
    [("run_command", exec_answer()), ("search_files", search_answer()),
     ("list_directory", tree_answer())],
)  # fmt: skip
def test_real_answers_pass_both_the_output_schema_and_the_typed_result(
    tool: str, answer: dict[str, Any]
) -> None:
    assert refusal(tool, answer) is None
    assert typed_refusal(tool, answer) is None


def test_a_missing_field_is_refused_and_a_wrong_type_only_by_the_typed_result() -> None:
    missing = exec_answer()
    del missing["exit_code"]
    assert refusal("run_command", missing) is not None
    # The trade: the outputSchema does not check each field's type; the typed result does.
    for wrong in (exec_answer(exit_code="0"), exec_answer(status="done")):
        assert refusal("run_command", wrong) is None
        assert typed_refusal("run_command", wrong) is not None
    bad_match = search_answer(matches=[{"path": "a", "line": "1", "text": ""}])
    assert refusal("search_files", bad_match) is None
    assert typed_refusal("search_files", bad_match) == "'1' is not of type 'integer'"
    bad_child = tree_answer()
    bad_child["entries"][0]["children"][0]["kind"] = "door"
    assert typed_refusal("list_directory", bad_child) is not None  # through its `$ref`


def test_an_error_result_is_allowed_and_typed_in_place() -> None:
    error = {"name": "ConflictError", "code": -32004, "message": "stale", "category": "fs",
             "retryable": False}  # fmt: skip
    assert refusal("write_file", {"error": error}) is None
    assert refusal("write_file", {"error": {**error, "code": "-32004"}}) is not None
    assert refusal("write_file", {}) is not None


@pytest.mark.parametrize("tool", TOOLS, ids=lambda t: t.name)
def test_every_field_is_required_typed_in_defs_and_described(tool: Any) -> None:
    schema = output_schema(tool)
    Draft202012Validator.check_schema(schema)
    typed = object_schema(tool.output)
    nested = typed.pop("$defs", {})
    name = tool.output.__name__
    assert schema["$defs"] == {name: typed, **nested}
    fields = list(typed["properties"])
    assert fields == [f.name for f in msgspec.structs.fields(tool.output)]  # snake_case
    assert "properties" not in schema  # nothing a client descends into on a result
    assert schema["anyOf"][0] == {"required": typed["required"]}
    assert schema["anyOf"][1]["required"] == ["error"]
    description = schema["description"]
    assert f"typed in $defs/{name}" in description
    for field in fields:
        assert f"{field} (" in description


def test_the_description_gives_each_field_its_type_in_words() -> None:
    described = output_schema(BY_NAME["run_command"])["description"]
    assert described.startswith(
        "The result's fields: execution_id (string); terminal_id (string); exit_code "
        "(integer | null); output (string);"
    )
    assert 'status ("completed" | "interrupted" | "running" | "timed_out" | ' in described
    assert "recoveries (array of Recovery, optional)" in described
    assert "entries (array of TreeEntry)" in output_schema(BY_NAME["list_directory"])["description"]
