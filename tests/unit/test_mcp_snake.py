"""A tool's answer under the Python (snake_case) names of its Structs, at every depth."""

from __future__ import annotations

import msgspec

from lapce_bridge.mcp.tools import FileInfoResult, to_snake
from lapce_bridge.schema.files import SearchResult, TreeResult
from lapce_bridge.schema.methods import ExecResult


def test_every_struct_inside_an_answer_is_renamed_and_nothing_else() -> None:
    tree = msgspec.convert(
        {
            "path": ".",
            "count": 3,
            "truncated": False,
            "entries": [
                {
                    "name": "src",
                    "kind": "directory",
                    "size": 0,
                    "mtimeNs": 5,
                    "children": [{"name": "a.py", "kind": "file", "size": 3, "mtimeNs": 6}],
                },
                {"name": "b.py", "kind": "file", "size": 1, "mtimeNs": 7},
            ],
        },
        TreeResult,
    )
    assert to_snake(tree) == {
        "path": ".",
        "entries": [
            {
                "name": "src",
                "kind": "directory",
                "size": 0,
                "mtime_ns": 5,
                "children": [
                    {"name": "a.py", "kind": "file", "size": 3, "mtime_ns": 6, "children": None}
                ],
            },
            {"name": "b.py", "kind": "file", "size": 1, "mtime_ns": 7, "children": None},
        ],
        "count": 3,
        "truncated": False,
    }
    done = msgspec.convert(
        {
            "executionId": "t1-1-abc",
            "terminalId": "t1",
            "exitCode": None,
            "output": "x\n",
            "outputBytes": 2,
            "truncated": False,
            "cwd": "/w",
            "durationMs": 1.5,
            "status": "interrupted",
            "mode": "shell_integration",
            "shell": "/bin/bash",
            "recoveries": [{"action": "restarted", "reason": "the shell died"}],
        },
        ExecResult,
    )
    snake = to_snake(done)
    assert list(snake) == [f.name for f in msgspec.structs.fields(ExecResult)]
    assert (snake["exit_code"], snake["duration_ms"], snake["recoveries"]) == (
        None,
        1.5,
        [{"action": "restarted", "reason": "the shell died"}],
    )
    page = SearchResult(
        matches=[], next_cursor="c", complete=False, timed_out=True, files_searched=2,
        files_skipped=1,
    )  # fmt: skip
    assert to_snake(page) == {
        "matches": [],
        "next_cursor": "c",
        "complete": False,
        "timed_out": True,
        "files_searched": 2,
        "files_skipped": 1,
    }
    info = FileInfoResult(path="a", kind="file", size=1, mtime_ns=2)
    assert to_snake(info) == {
        "path": "a", "kind": "file", "size": 1, "mtime_ns": 2, "target_kind": None,
        "target": None,
    }  # fmt: skip


class _Sparse(msgspec.Struct, rename="camel", omit_defaults=True, kw_only=True):
    wire_name: str
    left_out: int = 0


def test_a_struct_that_omits_defaults_keeps_what_to_builtins_gives() -> None:
    """Only a Struct whose built form holds each field and nothing else is taken under its
    Python names directly; the others are built and renamed (their omissions kept)."""
    assert to_snake(_Sparse(wire_name="a")) == {"wire_name": "a"}
    assert to_snake(_Sparse(wire_name="a", left_out=2)) == {"wire_name": "a", "left_out": 2}
