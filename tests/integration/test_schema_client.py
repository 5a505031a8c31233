"""The one schema: the shipped OpenRPC document, its JSON Schemas, and the typed client
against a real `lapce-bridge serve` process with a real shell."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from lapce_bridge.core.errors import ConflictError, FileSystemError, InvalidParams
from lapce_bridge.schema.document import build, render, shipped
from lapce_bridge.schema.methods import METHODS, ExecResult
from lapce_bridge.sync_client import SyncClient


def test_the_shipped_document_is_the_generated_one() -> None:
    from lapce_bridge.schema.document import SHIPPED

    assert SHIPPED.read_bytes() == render(build()), "regenerate with `lapce-bridge schema`"
    out = subprocess.run(
        [sys.executable, "-m", "lapce_bridge", "schema"], capture_output=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout == SHIPPED.read_bytes()


def test_every_schema_in_the_document_is_valid_json_schema() -> None:
    doc = shipped()
    assert doc["openrpc"].startswith("1.")
    components = doc["components"]["schemas"]
    for name, schema in components.items():
        jsonschema.Draft202012Validator.check_schema(schema)
        assert schema.get("type") or schema.get("anyOf") or schema.get("enum"), name
    assert [m["name"] for m in doc["methods"]] == list(METHODS)
    for m in doc["methods"]:
        assert m["paramStructure"] == "by-name"
        for param in m["params"]:
            jsonschema.Draft202012Validator.check_schema(param["schema"])
        jsonschema.Draft202012Validator.check_schema(m["result"]["schema"])
    edit = next(m for m in doc["methods"] if m["name"] == "fs/edit")
    assert {p["name"]: p["required"] for p in edit["params"]} == {
        "idempotencyKey": False, "path": True, "edits": True, "dryRun": False,
        "expectedMtimeNs": False,
    }  # fmt: skip


def result_validator(doc: dict[str, Any], method: str) -> jsonschema.Draft202012Validator:
    """A validator for `method`'s result, resolving refs into the document's components."""
    root = Resource.from_contents(doc, default_specification=DRAFT202012)
    registry = Registry().with_resource("urn:doc", root)
    schema = next(m for m in doc["methods"] if m["name"] == method)["result"]["schema"]
    rebased = _rebase(schema)
    return jsonschema.Draft202012Validator(rebased, registry=registry)


def _rebase(schema: Any) -> Any:
    if isinstance(schema, dict):
        return {
            k: ("urn:doc" + v if k == "$ref" and v.startswith("#") else _rebase(v))
            for k, v in schema.items()
        }
    if isinstance(schema, list):
        return [_rebase(v) for v in schema]
    return schema


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "calc.py").write_text(
        "def add(a, b):\n    return a + b\n\n\ndef sub(a, b):\n    return a - b\n"
    )
    sock = tmp_path / "run" / "bridge.sock"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    env["HOME"] = str(tmp_path)
    env["XDG_STATE_HOME"] = str(tmp_path / "state")
    proc = subprocess.Popen(
        [sys.executable, "-m", "lapce_bridge", "serve", "--socket", str(sock),
         "--workspace", str(ws), "--shell", "bash"],
        env=env, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline().decode()
        assert "listening" in line, line
        yield sock, ws
    finally:
        proc.terminate()
        proc.wait(30)
        if proc.stderr is not None:
            proc.stderr.close()


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_the_typed_client_against_a_real_server(server: tuple[Path, Path]) -> None:
    sock, _ws = server
    doc = shipped()
    with SyncClient.connect(sock) as client:
        ran = client.execute("cd /tmp && echo typed", timeout_ms=30_000)
        assert isinstance(ran, ExecResult)
        assert (ran.exit_code, ran.output, ran.cwd, ran.status) == (
            0,
            "typed\n",
            "/tmp",
            "completed",
        )
        read = client.read_file("calc.py")
        assert read.content.startswith("def add")
        assert read.mtime_ns > 0
        wrote = client.write_file("new.txt", "one\n", expected_mtime_ns=0)
        with pytest.raises(ConflictError) as conflict:
            client.write_file("new.txt", "two\n", expected_mtime_ns=wrote.mtime_ns - 1)
        assert conflict.value.code == -32004
        assert conflict.value.data["mtimeNs"] == wrote.mtime_ns
        with pytest.raises(FileSystemError) as missing:
            client.read_file("missing.txt")
        assert not isinstance(missing.value, ConflictError)
        assert missing.value.errno == errno.ENOENT
        edited = client.edit("calc.py", [("return a - b", "return b - a")])
        assert edited.replacements == 1
        assert "+    return b - a" in edited.diff
        with pytest.raises(InvalidParams) as ambiguous:
            client.edit("calc.py", [("(a, b):", "()")])
        assert "matched 2 times" in str(ambiguous.value)
        found = client.search("b - a")
        assert [(m.path, m.line) for m in found.matches] == [("calc.py", 6)]
        tree = client.tree(depth=1)
        assert {e.name for e in tree.entries} >= {"calc.py", "new.txt"}
        assert client.stat("calc.py").kind == "file"
        assert any(t.terminal_id == ran.terminal_id for t in client.list_terminals())
        # Every method's params are checked by the schema before its handler runs.
        for method, params, wrong in [
            ("fs/read", {"path": "calc.py", "encodng": "base64"}, "unknown parameter 'encodng'"),
            ("terminal/execute", {"comand": "ls"}, "unknown parameter 'comand'"),
            (
                "terminal/execute",
                {"command": "ls", "timeoutMs": "5"},
                "parameter 'timeoutMs' must be",
            ),
            ("fs/watch", {"paths": []}, "parameter 'paths' must be an array of length >= 1"),
            ("health/get", {"verbose": True}, "unknown parameter 'verbose'"),
        ]:
            with pytest.raises(InvalidParams) as refused:
                client.request(method, params)
            assert str(refused.value).startswith(f"{method}: "), refused.value
            assert wrong in str(refused.value)
        # The answers validate against the published schema too.
        for method, params in [
            ("terminal/execute", {"command": "echo x"}),
            ("fs/read", {"path": "calc.py"}),
            ("fs/stat", {"path": "calc.py"}),
            ("fs/search", {"query": "add"}),
            ("fs/tree", {}),
            ("health/get", {}),
            ("terminal/list", {}),
        ]:
            answer = client.request(method, params)
            result_validator(doc, method).validate(answer)


async def test_every_served_method_has_one_schema(tmp_path: Path) -> None:
    from lapce_bridge.app import App
    from lapce_bridge.schema.validate import convert

    async with App(workspace=tmp_path, state_dir=tmp_path / "state") as app:
        served = set(app.methods) | {"initialize", "shutdown", "ping"}
    missing = served - set(METHODS)
    assert not missing, f"add {sorted(missing)} to lapce_bridge.schema.methods"
    for name, spec in METHODS.items():
        if name == "initialize":
            continue  # lenient: LSP clients send fields of their own
        with pytest.raises(InvalidParams) as refused:
            convert({"bogusParam": 1}, spec.params, name)
        assert str(refused.value) == f"{name}: unknown parameter 'bogusParam'"
        assert refused.value.data["parameter"] == "bogusParam"
