"""A faster `__init__` for the frozen, slotted dataclasses built at every command.

A frozen dataclass's generated `__init__` sets each field with `object.__setattr__(self,
name, value)` (the class's own `__setattr__` refuses): a generic attribute lookup by name at
every field, about 0.5 us a field here. The terminal builds several such objects per command
(a command's result of 12 fields, the parser's markers of 9, the tracker's events), so
`quick_init` replaces that `__init__` by one with the same signature (names, order, defaults)
that stores each field through its slot's descriptor, as `object.__setattr__` ends up doing.
Everything else (equality, hashing, `repr`, `replace`, immutability) stays the dataclass's.
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

__all__ = ["quick_init"]

T = TypeVar("T")


def quick_init(cls: type[T]) -> type[T]:
    """Apply over `@dataclass(frozen=True, slots=True)` (fields with plain defaults only)."""
    params = getattr(cls, "__dataclass_params__", None)
    if params is None or not params.frozen or "__slots__" not in cls.__dict__:
        raise TypeError(f"{cls.__name__} is not a frozen, slotted dataclass")
    if hasattr(cls, "__post_init__"):
        raise TypeError(f"{cls.__name__} has a __post_init__")
    namespace: dict[str, Any] = {}
    args, body = [], []
    for field in dataclasses.fields(cls):  # type: ignore[arg-type]
        name = field.name
        if field.default_factory is not dataclasses.MISSING or field.kw_only or not field.init:
            raise TypeError(f"{cls.__name__}.{name}: only plain fields are supported")
        namespace[f"_set_{name}"] = getattr(cls, name).__set__
        if field.default is dataclasses.MISSING:
            args.append(name)
        else:
            namespace[f"_default_{name}"] = field.default
            args.append(f"{name}=_default_{name}")
        body.append(f"    _set_{name}(self, {name})")
    source = f"def __init__(self, {', '.join(args)}):\n" + "\n".join(body) + "\n"
    exec(source, namespace)  # (built from the class's own field names only)
    init = namespace["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__doc__ = cls.__init__.__doc__
    init.__annotations__ = dict(cls.__init__.__annotations__)  # (what `inspect` shows)
    cls.__init__ = init  # type: ignore[method-assign]
    return cls
