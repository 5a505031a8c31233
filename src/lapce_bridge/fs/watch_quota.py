"""How many watches, and how many watched entries, one client and the server may hold.

Theory of operation: a watch keeps a snapshot of every path it covers, about 300 bytes an
entry here (path string, stamp tuple, dict slot), so 68 recursive watches of a 20,000-file
tree hold some 400 MB: past the server's memory budget, which then throttles every client.
`WatchQuota` is the pure policy that prevents it; `WatcherRecovery` asks it before a watch
starts and after its first scan:

- `admit(owner, held)`: refused (-32005) when the server holds `max_watches` watches, when
  the owner (a connection) holds `max_per_owner`, or when no entry is left in the server's
  or the owner's entry budget; otherwise the number of entries the new watch's first scan
  may take (the smaller of what is left in the two budgets).
- A first scan cut short by that budget (not by the per-watch snapshot limit) means the
  watch does not fit: `too_many_entries` is the -32005 the caller raises after dropping it.

Entries are counted as the snapshots hold them when a watch is admitted; a snapshot that
grows later stays within the per-watch snapshot limit. `owner` None (an in-process caller)
counts against the server's budgets only.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from lapce_bridge.core.errors import ResourceExhausted

Held = Iterable[tuple[int | None, int]]
"""(owner, snapshot entries) of every open watch."""


@dataclass(frozen=True, slots=True)
class WatchQuota:
    max_watches: int = 256
    max_per_owner: int = 16
    max_entries: int = 250_000  # about 75 MB of snapshots in all
    max_entries_per_owner: int = 100_000

    def admit(self, owner: int | None, held: Held) -> int:
        """The entry budget for a new watch of `owner`; raises ResourceExhausted."""
        watches = mine = entries = my_entries = 0
        for who, count in held:
            watches += 1
            entries += count
            if owner is not None and who == owner:
                mine += 1
                my_entries += count
        if watches >= self.max_watches:
            raise ResourceExhausted(
                f"{watches} watches are open on this server, its limit; unwatch some first",
                data={"watches": watches, "limit": self.max_watches},
            )
        if owner is not None and mine >= self.max_per_owner:
            raise ResourceExhausted(
                f"this connection holds {mine} watches, the most one connection may; "
                "unwatch some first (or watch a common parent folder once)",
                data={"watches": mine, "limit": self.max_per_owner},
            )
        budget = self.max_entries - entries
        if owner is not None:
            budget = min(budget, self.max_entries_per_owner - my_entries)
        if budget <= 0:
            raise self.too_many_entries(owner, entries, my_entries)
        return budget

    def too_many_entries(
        self, owner: int | None, entries: int, my_entries: int
    ) -> ResourceExhausted:
        held = f"the server watches {entries} of at most {self.max_entries}"
        if owner is not None:
            held += f", this connection {my_entries} of at most {self.max_entries_per_owner}"
        return ResourceExhausted(
            f"watching these paths would pass the limit on watched entries ({held}); watch "
            "a smaller folder, or unwatch some",
            data={
                "entries": entries,
                "limit": self.max_entries,
                "connectionEntries": my_entries,
                "connectionLimit": self.max_entries_per_owner,
            },
        )


__all__ = ["Held", "WatchQuota"]
