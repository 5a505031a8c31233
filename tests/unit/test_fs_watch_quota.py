"""The watch quota policy, on plain numbers."""

from __future__ import annotations

import pytest

from lapce_bridge.core.errors import ResourceExhausted
from lapce_bridge.fs.watch_quota import WatchQuota


def test_a_watch_is_admitted_with_what_is_left_of_both_budgets() -> None:
    quota = WatchQuota(max_watches=10, max_per_owner=3, max_entries=1000, max_entries_per_owner=600)
    assert quota.admit(1, []) == 600
    assert quota.admit(1, [(1, 100), (2, 500)]) == 400  # the server has 400 left, 1 has 500
    assert quota.admit(None, [(1, 100), (2, 500)]) == 400  # in-process: the server's only
    assert quota.admit(3, [(1, 100)]) == 600


@pytest.mark.parametrize(
    ("held", "owner", "match"),
    [
        ([(1, 1)] * 3, 1, "this connection holds 3 watches"),
        ([(n, 1) for n in range(10)], 11, "10 watches are open on this server"),
        ([(1, 600)], 1, "this connection 600 of at most 600"),
        ([(2, 500), (3, 500)], 1, "the server watches 1000 of at most 1000"),
    ],
)
def test_refusals_say_which_limit(held: list[tuple[int, int]], owner: int, match: str) -> None:
    quota = WatchQuota(max_watches=10, max_per_owner=3, max_entries=1000, max_entries_per_owner=600)
    with pytest.raises(ResourceExhausted, match=match) as info:
        quota.admit(owner, held)
    assert info.value.code == -32005
