"""Params in, typed values out: the one parameter checker and its one style of message.

Every refusal reads `<method>: <what>`, naming the parameter as the services' own checks do:
`fs/edit: unknown parameter 'dryrun'`, `fs/edit: parameter 'edits[0].count' must be an
integer, got a string`, `fs/read: missing parameter 'path'`: a caller (or a model) can fix
the call from the message alone. The error is
InvalidParams (-32602) with `data.parameter` naming the offending parameter's path.
"""

from __future__ import annotations

import re
from typing import Any, TypeVar

import msgspec

from lapce_bridge.core.errors import InvalidParams

T = TypeVar("T")

_UNKNOWN = re.compile(
    r"Object contains unknown field `(?P<name>[^`]*)`(?: - at `\$(?P<at>[^`]*)`)?"
)
_MISSING = re.compile(
    r"Object missing required field `(?P<name>[^`]*)`(?: - at `\$(?P<at>[^`]*)`)?"
)
_EXPECTED = re.compile(
    r"Expected `(?P<want>[^`]*)`, got `(?P<got>[^`]*)`(?: - at `\$(?P<at>[^`]*)`)?"
)
_BOUND = re.compile(r"Expected `(?P<want>[^`]*)` (?P<cond>.+?)(?: - at `\$(?P<at>[^`]*)`)?")
_AT = re.compile(r"^(?P<msg>.*?)(?: - at `\$(?P<at>[^`]*)`)?$", re.S)

_NOUNS = {
    "str": "a string",
    "int": "an integer",
    "float": "a number",
    "bool": "a boolean",
    "null": "null",
    "array": "an array",
    "object": "an object",
}


def _where(at: str | None, name: str | None = None) -> str:
    path = (at or "").lstrip(".")
    if name:
        path = f"{path}.{name}" if path else name
    return path


def _noun(kind: str) -> str:
    parts = [p.strip() for p in kind.split("|")]
    return " or ".join(_NOUNS.get(p, p) for p in parts)


def describe(method: str, exc: msgspec.ValidationError) -> InvalidParams:
    """The InvalidParams error for msgspec's complaint about `method`'s params."""
    text = str(exc)
    if m := _UNKNOWN.fullmatch(text):
        where = _where(m["at"], m["name"])
        return InvalidParams(f"{method}: unknown parameter {where!r}", data={"parameter": where})
    if m := _MISSING.fullmatch(text):
        where = _where(m["at"], m["name"])
        return InvalidParams(f"{method}: missing parameter {where!r}", data={"parameter": where})
    if m := _EXPECTED.fullmatch(text):
        where = _where(m["at"]) or "params"
        return InvalidParams(
            f"{method}: parameter {where!r} must be {_noun(m['want'])}, got {_noun(m['got'])}",
            data={"parameter": where},
        )
    if m := _BOUND.fullmatch(text):
        where = _where(m["at"]) or "params"
        return InvalidParams(
            f"{method}: parameter {where!r} must be {_noun(m['want'])} {m['cond']}",
            data={"parameter": where},
        )
    m = _AT.fullmatch(text)
    assert m is not None
    where = _where(m["at"]) or "params"
    message = m["msg"]
    message = message[0].lower() + message[1:] if message else message
    return InvalidParams(f"{method}: parameter {where!r}: {message}", data={"parameter": where})


def convert(params: Any, kind: type[T], method: str) -> T:
    """`params` (a decoded JSON object, or None) as a `kind`, or InvalidParams in our style."""
    try:
        return msgspec.convert({} if params is None else params, kind)
    except msgspec.ValidationError as exc:
        raise describe(method, exc) from None


def refuse(method: str, parameter: str, problem: str) -> InvalidParams:
    """A refusal a handler finds itself (beyond types), in the same style."""
    return InvalidParams(
        f"{method}: parameter {parameter!r} {problem}", data={"parameter": parameter}
    )


__all__ = ["convert", "describe", "refuse"]
