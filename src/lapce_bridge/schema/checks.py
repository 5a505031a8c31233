"""The schema's params checks, attached to a method table as each `Method.validate`.

The dispatcher calls `Method.validate(params)` before any handler runs; `checked` gives
every method of a table the check its definition in `schema.methods` implies. The check
loads the schema (msgspec and some fifty Structs) on its first call, not when the table is
built, so a server's start-up does not pay for it; a method the schema does not define is
left unchecked (the schema test lists every served method, so none is left for long).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from lapce_bridge.rpc import Method, Params

_UNLOADED: Any = object()


class SchemaCheck:
    """`Method.validate` for one method: params converted to its Struct, or InvalidParams."""

    __slots__ = ("_convert", "_kind", "method")

    def __init__(self, method: str) -> None:
        self.method = method
        self._kind: Any = _UNLOADED
        self._convert: Any = None  # `schema.validate.convert`, kept once loaded

    def __call__(self, params: Params) -> None:
        kind = self._kind
        if kind is _UNLOADED:
            kind = self._load()
        if kind is not None:
            self._convert(params, kind, self.method)

    def _load(self) -> Any:
        from lapce_bridge.schema.methods import METHODS
        from lapce_bridge.schema.validate import convert

        self._convert = convert  # kept: an import statement on every request cost 2 us
        spec = METHODS.get(self.method)
        self._kind = spec.params if spec is not None else None
        return self._kind


def checked(methods: Mapping[str, Method]) -> dict[str, Method]:
    """`methods`, each with its schema check (a method with its own check keeps it)."""
    return {
        name: m if m.validate is not None else replace(m, validate=SchemaCheck(name))
        for name, m in methods.items()
    }


__all__ = ["SchemaCheck", "checked"]
