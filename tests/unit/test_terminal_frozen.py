"""`quick_init`: the same constructor as the dataclass's own, through the slots' descriptors."""

from __future__ import annotations

import dataclasses
import inspect

import pytest

from lapce_bridge.terminal.frozen import quick_init
from lapce_bridge.terminal.result import ExecResult, Mode, Status


@dataclasses.dataclass(frozen=True, slots=True)
class Plain:
    a: int
    b: str
    c: int | None = None
    d: tuple[int, ...] = dataclasses.field(default=())


@quick_init
@dataclasses.dataclass(frozen=True, slots=True)
class Quick:
    a: int
    b: str
    c: int | None = None
    d: tuple[int, ...] = dataclasses.field(default=())


def test_the_signature_is_the_dataclass_one() -> None:
    plain, quick = inspect.signature(Plain.__init__), inspect.signature(Quick.__init__)
    assert str(plain) == str(quick)
    assert [p.default for p in plain.parameters.values()] == [
        p.default for p in quick.parameters.values()
    ]


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        ((1, "x"), {}),
        ((1, "x", 3, (4,)), {}),
        ((), {"b": "y", "a": 2, "d": (5,)}),
        ((7,), {"b": ""}),
    ],
)
def test_objects_are_the_same_as_the_dataclass_builds(
    args: tuple[object, ...], kwargs: dict[str, object]
) -> None:
    plain, quick = Plain(*args, **kwargs), Quick(*args, **kwargs)  # type: ignore[arg-type]
    assert dataclasses.astuple(plain) == dataclasses.astuple(quick)
    assert repr(plain).replace("Plain", "Quick") == repr(quick)
    assert quick == Quick(*args, **kwargs)  # type: ignore[arg-type]
    assert hash(quick) == hash(Quick(*args, **kwargs))  # type: ignore[arg-type]
    assert dataclasses.replace(quick, c=9).c == 9
    with pytest.raises(dataclasses.FrozenInstanceError):
        quick.a = 5  # type: ignore[misc]


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [((), {}), ((1,), {}), ((1, "x", 3, (), 5), {}), ((1, "x"), {"e": 1}), ((1,), {"a": 1})],
)
def test_bad_arguments_are_refused_as_the_dataclass_refuses_them(
    args: tuple[object, ...], kwargs: dict[str, object]
) -> None:
    with pytest.raises(TypeError):
        Plain(*args, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Quick(*args, **kwargs)  # type: ignore[arg-type]


def test_only_frozen_slotted_dataclasses_with_plain_fields_are_taken() -> None:
    @dataclasses.dataclass(slots=True)
    class Mutable:
        a: int

    @dataclasses.dataclass(frozen=True)
    class Unslotted:
        a: int

    @dataclasses.dataclass(frozen=True, slots=True)
    class Factory:
        a: list[int] = dataclasses.field(default_factory=list)

    @dataclasses.dataclass(frozen=True, slots=True)
    class PostInit:
        a: int

        def __post_init__(self) -> None:
            pass

    for cls in (Mutable, Unslotted, Factory, PostInit, int):
        with pytest.raises(TypeError):
            quick_init(cls)


def test_a_result_keeps_its_default_recoveries() -> None:
    result = ExecResult(
        execution_id="t1-1",
        terminal_id="t1",
        exit_code=0,
        output="x\n",
        output_bytes=2,
        truncated=False,
        cwd="/",
        duration_ms=1.5,
        status=Status.COMPLETED,
        mode=Mode.SHELL_INTEGRATION,
        shell="bash",
    )
    assert result.recoveries == ()
    assert result.to_wire()["recoveries"] == []
