"""The two base Structs every method's params and results derive from, and the field types
they share.

Wire names are camelCase (`expectedMtimeNs`), Python attributes snake_case
(`expected_mtime_ns`): `rename="camel"` maps one to the other, so a definition is written
once. Params refuse unknown fields (a misspelt parameter must not be silently ignored);
results accept them, so an older client keeps working when a server adds a field.
"""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta

Millis = Annotated[float, Meta(gt=0, le=7 * 86_400_000)]
"""A duration in milliseconds: positive, at most 7 days (as long as a terminal waits)."""
NonNegative = Annotated[int, Meta(ge=0)]


class Strict(msgspec.Struct, rename="camel", forbid_unknown_fields=True, kw_only=True):
    """An object inside params: camelCase on the wire, unknown fields refused."""


class Params(Strict, kw_only=True):
    """Every request takes `idempotencyKey` (see the protocol's idempotency section)."""

    idempotency_key: str | None = None


class Result(msgspec.Struct, rename="camel", kw_only=True, omit_defaults=False):
    """A method's answer."""


__all__ = ["Millis", "NonNegative", "Params", "Result", "Strict"]
