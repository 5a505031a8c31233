"""The client's outbox: order, bound, durability across a restart."""

from __future__ import annotations

from pathlib import Path

import pytest

from lapce_bridge.core.errors import ResourceExhausted
from lapce_bridge.ipc.outbox import Outbox


def test_entries_keep_their_order_until_answered() -> None:
    box = Outbox(limit=3)
    a = box.put("m", {"n": 1}, "ka")
    b = box.put("m", {"n": 2}, "kb")
    c = box.put("m", {"n": 3}, "kc")
    assert [e.key for e in box.pending()] == ["ka", "kb", "kc"]
    box.done(b)
    assert [e.key for e in box.pending()] == ["ka", "kc"]
    box.done(b)  # twice is harmless
    assert len(box) == 2
    assert a.seq < c.seq


def test_a_full_outbox_refuses_new_entries_and_keeps_the_old() -> None:
    box = Outbox(limit=2)
    box.put("m", {}, "1")
    box.put("m", {}, "2")
    with pytest.raises(ResourceExhausted, match="full") as info:
        box.put("m", {}, "3")
    assert info.value.code == -32005
    assert info.value.data == {"outboxLimit": 2}
    assert [e.key for e in box.pending()] == ["1", "2"]


def test_a_durable_outbox_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite3"
    box = Outbox(path=path)
    first = box.put("fs/write", {"path": "a", "idempotencyKey": "k1"}, "k1")
    box.put("fs/write", {"path": "b", "idempotencyKey": "k2"}, "k2")
    box.done(first)
    box.close()
    again = Outbox(path=path)
    recovered = again.recovered()
    assert [(e.key, e.method, e.params["path"]) for e in recovered] == [("k2", "fs/write", "b")]
    assert recovered[0].recovered
    newer = again.put("ping", {}, "k3")
    assert newer.seq > recovered[0].seq  # new work goes after what was left
    again.done(recovered[0])
    again.close()
    assert [e.key for e in Outbox(path=path).recovered()] == ["k3"]


def test_limit_must_be_positive() -> None:
    with pytest.raises(ValueError):
        Outbox(limit=0)
