"""The OpenRPC document of protocol version 1, generated from `schema.methods.METHODS`.

Every params and result Struct becomes a JSON Schema (draft 2020-12) under
`components.schemas`; each method lists its params by name (`paramStructure: by-name`) with
their schemas, and its result. The document is shipped in the package as `openrpc.json`
(`lapce-bridge schema` prints it); a test keeps that file equal to what this module builds,
so the Structs stay the one definition.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
import msgspec
import orjson

from lapce_bridge import __version__
from lapce_bridge.schema.methods import METHODS

SHIPPED = Path(__file__).with_name("openrpc.json")
REF = "#/components/schemas/{name}"

ERRORS: list[dict[str, Any]] = [
    {"code": -32700, "message": "parse error"},
    {"code": -32600, "message": "invalid request"},
    {"code": -32601, "message": "method not found"},
    {"code": -32602, "message": "invalid params"},
    {"code": -32603, "message": "internal error"},
    {"code": -32800, "message": "request cancelled"},
    {"code": -32001, "message": "timeout"},
    {"code": -32002, "message": "unavailable (circuit open, feature degraded)"},
    {"code": -32003, "message": "terminal failure"},
    {"code": -32004, "message": "file-system failure (ConflictError: stale expectedMtimeNs)"},
    {"code": -32005, "message": "resource exhausted"},
    {"code": -32006, "message": "permission denied (outside the workspace, bad token)"},
    {"code": -32007, "message": "message too large"},
]


def build() -> dict[str, Any]:
    """The OpenRPC document as a JSON-ready dict."""
    kinds: list[Any] = []
    for spec in METHODS.values():
        kinds.append(spec.params)
        if spec.result is not None:
            kinds.append(spec.result)
    schemas, components = msgspec.json.schema_components(kinds, ref_template=REF)
    by_kind = dict(zip((id(k) for k in kinds), schemas, strict=True))
    methods = []
    for name, spec in METHODS.items():
        params_schema = components[spec.params.__name__]
        required = set(params_schema.get("required", ()))
        params = [
            {"name": field, "required": field in required, "schema": schema}
            for field, schema in params_schema.get("properties", {}).items()
        ]
        result = by_kind[id(spec.result)] if spec.result is not None else {"type": "null"}
        methods.append(
            {
                "name": name,
                "summary": spec.summary,
                "paramStructure": "by-name",
                "params": params,
                "result": {"name": "result", "schema": result},
            }
        )
    return {
        "openrpc": "1.3.2",
        "info": {
            "title": "lapce-bridge",
            "version": __version__,
            "description": (
                "JSON-RPC 2.0 over LSP framing (Content-Length headers). Params are objects; "
                "an unknown or misspelt parameter is refused with -32602 naming it. Every "
                "error's data carries category, severity, retryable, fallbackAvailable, detail."
            ),
        },
        "methods": methods,
        "components": {
            "schemas": components,
            "errors": {str(e["code"]): e for e in ERRORS},
        },
    }


def render(document: dict[str, Any]) -> bytes:
    return orjson.dumps(document, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"


def shipped() -> dict[str, Any]:
    loaded: dict[str, Any] = orjson.loads(SHIPPED.read_bytes())
    return loaded


@click.command("schema")
@click.option("--check", is_flag=True, help="Exit 1 if the shipped document is out of date.")
def schema_command(check: bool) -> None:
    """Print the OpenRPC document of the protocol (every method's params and result)."""
    built = render(build())
    if check:
        if SHIPPED.read_bytes() != built:
            raise click.ClickException(f"{SHIPPED} is out of date; regenerate it")
        return
    click.echo(built.decode(), nl=False)


__all__ = ["ERRORS", "SHIPPED", "build", "render", "schema_command", "shipped"]
