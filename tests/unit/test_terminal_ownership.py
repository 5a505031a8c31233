"""Ownership bookkeeping on plain values: names, defaults, quotas, orphans, sessions."""

from __future__ import annotations

import pytest

from lapce_bridge.core.errors import InvalidParams, ResourceExhausted
from lapce_bridge.terminal.ownership import Ownership


def test_each_connection_has_its_own_default() -> None:
    own = Ownership()
    own.connect(1)
    own.connect(2)
    own.add("t1", 1)
    own.set_default(1, "t1")
    assert own.default(1) == "t1"
    assert own.default(2) is None
    own.remove("t1")
    assert own.default(1) is None


def test_names_resolve_and_are_checked() -> None:
    own = Ownership()
    own.connect(1)
    own.check_name("build")
    own.add("t1", 1, name="build")
    assert own.resolve("build") == "t1"
    assert own.resolve("t1") == "t1"
    assert own.resolve("nope") is None
    with pytest.raises(InvalidParams, match="already open") as dup:
        own.check_name("build")
    assert dup.value.data == {"terminalId": "t1"}
    for bad in ("t7", "", "x" * 129, "tab\there"):
        with pytest.raises(InvalidParams):
            own.check_name(bad)
    own.remove("t1")
    assert own.resolve("build") is None
    own.check_name("build")  # free again


def test_a_connection_is_held_to_its_quota() -> None:
    own = Ownership(per_connection=2)
    own.connect(1)
    own.connect(2)
    own.admit(1)
    own.add("t1", 1)
    own.admit(1)
    own.add("t2", 1)
    with pytest.raises(ResourceExhausted, match="at most 2 each") as refused:
        own.admit(1)
    assert refused.value.classification.retryable is False
    own.admit(2)  # another connection is not affected
    own.admit(None)  # the server's own terminals have no quota
    own.remove("t1")
    own.admit(1)


def test_a_closed_connection_leaves_orphans_and_doomed_terminals() -> None:
    own = Ownership(grace=30.0)
    own.connect(1)
    own.add("t1", 1)
    own.set_default(1, "t1")
    own.add("t2", 1, name="server")
    own.add("t3", 1, keep=True)
    assert own.disconnect(1, now=100.0) == ["t1"]
    assert own.due(129.9) == []
    assert own.due(130.0) == ["t1"]
    assert sorted(own.orphans()) == ["t1", "t2", "t3"]
    assert own.disconnect(1, now=200.0) == []  # once only
    own.connect(2)
    own.admit(2)  # orphans count against nobody


def test_a_resumed_session_takes_back_its_default_and_terminals() -> None:
    own = Ownership()
    own.connect(1, "editor-a")
    own.add("t1", 1)
    own.set_default(1, "t1")
    own.add("t2", 1, name="logs")
    own.disconnect(1, now=0.0)
    own.connect(2, "someone-else")
    assert own.default(2) is None
    own.connect(3, "editor-a")
    assert own.default(3) == "t1"
    assert own.due(1000.0) == []  # adopted again: no longer reaped
    assert own.orphans() == []
    described = own.describe("t2")
    assert described is not None
    assert described.owner == 3


def test_an_orphan_used_again_is_adopted_and_spared() -> None:
    own = Ownership(per_connection=1, grace=30.0)
    own.connect(1)
    own.add("t1", 1)
    own.add("t2", None)
    assert own.disconnect(1, now=0.0) == ["t1"]
    own.connect(2)
    assert own.adopt("t1", 2)
    assert own.due(100.0) == []
    assert not own.adopt("t1", 3)  # not an orphan any more (and 3 is unknown)
    assert not own.adopt("t2", 2)  # over 2's quota of one
    own.remove("t1")
    assert own.adopt("t2", 2)
