"""The fault controls a chaos run loads into a server: faults armed, counted, cleared."""

from __future__ import annotations

import errno
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from lapce_bridge.core.errors import InvalidParams
from lapce_bridge.fs.ops import REAL_FS
from lapce_bridge.rpc import CallContext
from lapce_bridge.testing import FaultyFs
from lapce_bridge.testing.server_faults import methods


def _app() -> Any:
    store = SimpleNamespace(ops=REAL_FS)
    return SimpleNamespace(services=[SimpleNamespace(store=store)], resources=None)


class _Ctx:
    connection_id = 1
    received_at = 0.0

    def notify(self, method: str, params: Any) -> None:
        raise AssertionError("no notifications expected")

    def on_close(self, callback: Callable[[], None]) -> None:
        raise AssertionError("no connection here")


def _call(table: dict[str, Any], name: str, params: Any = None) -> Any:
    ctx: CallContext = _Ctx()
    return table[name].handler(params, ctx)


def test_faults_reach_the_file_store_and_clear(tmp_path: Path) -> None:
    app = _app()
    table = methods(app)
    ops = app.services[0].store.ops
    assert isinstance(ops, FaultyFs)
    target = tmp_path / "f.txt"
    target.write_text("x")
    assert _call(table, "test/faults/add", {"op": "open", "times": 1}) == {"faults": 1}
    with pytest.raises(OSError) as caught:
        ops.open(str(target), 0)
    assert caught.value.errno == errno.EIO
    ops.close(ops.open(str(target), 0))  # one time only: the next open passes
    assert _call(table, "test/faults/count", {"op": "open", "outcome": "EIO"}) == 1
    _call(table, "test/faults/add", {"op": "open", "times": None, "errno": "ENOSPC"})
    _call(table, "test/faults/clear")
    ops.close(ops.open(str(target), 0))


def test_bad_fault_requests_are_invalid_params() -> None:
    table = methods(_app())
    with pytest.raises(InvalidParams):
        _call(table, "test/faults/add", {"op": "open", "errno": "ENOTANERRNO"})
    with pytest.raises(InvalidParams):
        _call(table, "test/faults/add", {"op": "teleport"})
    with pytest.raises(InvalidParams):
        _call(table, "test/memory/budget", {"bytes": 1})  # no resource manager here


def test_memory_is_held_until_released() -> None:
    table = methods(_app())
    assert _call(table, "test/memory/allocate", {"mib": 2}) == {"heldMiB": 2}
    assert _call(table, "test/memory/allocate", {"mib": 1}) == {"heldMiB": 3}
    assert _call(table, "test/memory/release") == {"heldMiB": 0}
