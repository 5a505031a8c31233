"""What the bridge's container allows: memory and CPU limits read from its cgroup files.

Theory of operation: a process's cgroups are named in `/proc/self/cgroup` (`0::PATH` for the
unified v2 hierarchy; `N:memory:PATH`, `N:cpu,cpuacct:PATH` for v1 controllers) and the
hierarchies are mounted where `/proc/self/mountinfo` says (`cgroup2`, or `cgroup` with the
controller among its super options). A mount may show only part of the tree (a container
sees its own cgroup as the mount's root), so a path is taken relative to the mount's root.

- Memory: the limit is the tightest one from the process's cgroup up to the mount's root
  (v2 `memory.max`, v1 `memory.limit_in_bytes`; "max" or v1's near-2^63 value is none); the
  working set is the limiting cgroup's usage less its inactive page cache (`memory.current`
  or `memory.usage_in_bytes`, less `inactive_file` or v1's hierarchical `total_inactive_file`),
  as container runtimes count it before they kill.
- CPU: the cores the cgroup may use, quota over period, the tightest up the tree (v2
  `cpu.max` "QUOTA PERIOD", "max" is none; v1 `cpu.cfs_quota_us` / `cpu.cfs_period_us`,
  -1 is none).

Where v2 has the controller it is used; a hybrid machine (v2 mounted, the memory controller
on v1) falls back to v1. Everything here reads files only; a missing file is no limit.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path

V1_UNLIMITED = 1 << 60  # v1 writes "no limit" as 0x7FFFFFFFFFFFF000 (page-rounded 2^63 - 1)


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.lstrip("-").isdigit() else None


def _stat_value(path: Path, *keys: str) -> int:
    """The first of `keys` found in a memory.stat file (0 when none is)."""
    with contextlib.suppress(OSError, ValueError):
        values = dict(line.split(maxsplit=1) for line in path.read_text().splitlines())
        for key in keys:
            if key in values:
                return int(values[key])
    return 0


def _up_the_tree(start: Path, root: Path) -> list[Path]:
    """`start` and its parents up to and including `root`."""
    out = [start]
    while out[-1] != root and root in out[-1].parents:
        out.append(out[-1].parent)
    return out


class CgroupMemory:
    """The working set and limit of a cgroup (None, None outside any limit), v2 or v1."""

    def __init__(self, root: Path, path: str, *, v1: bool = False) -> None:
        self.root = root  # where the hierarchy holding the memory controller is mounted
        self.cgroup = root / path.lstrip("/")
        self.v1 = v1

    def read(self) -> tuple[int | None, int | None]:
        """(working set bytes, limit bytes) of the cgroup holding the tightest limit."""
        limit_file = "memory.limit_in_bytes" if self.v1 else "memory.max"
        limit: int | None = None
        holder: Path | None = None
        for directory in _up_the_tree(self.cgroup, self.root):
            found = _read_int(directory / limit_file)  # v2 "max" reads as None
            if found is not None and found >= V1_UNLIMITED:
                found = None
            if found is not None and (limit is None or found < limit):
                limit, holder = found, directory
        if limit is None or holder is None:
            return None, None
        usage = _read_int(holder / ("memory.usage_in_bytes" if self.v1 else "memory.current"))
        if usage is None:
            return None, None
        keys = ("total_inactive_file", "inactive_file") if self.v1 else ("inactive_file",)
        return max(0, usage - _stat_value(holder / "memory.stat", *keys)), limit


class CgroupCpu:
    """The cores a cgroup may use (quota over period, the tightest up the tree), v2 or v1."""

    def __init__(self, root: Path, path: str, *, v1: bool = False) -> None:
        self.root = root
        self.cgroup = root / path.lstrip("/")
        self.v1 = v1

    def cores(self) -> float | None:
        """The limit in cores (0.5: half of one), None where there is none."""
        tightest: float | None = None
        for directory in _up_the_tree(self.cgroup, self.root):
            found = self._limit(directory)
            if found is not None and (tightest is None or found < tightest):
                tightest = found
        return tightest

    def _limit(self, directory: Path) -> float | None:
        if self.v1:
            quota = _read_int(directory / "cpu.cfs_quota_us")
            period = _read_int(directory / "cpu.cfs_period_us")
        else:
            try:
                fields = (directory / "cpu.max").read_text().split()
            except OSError:
                return None
            if len(fields) != 2 or not fields[0].isdigit() or not fields[1].isdigit():
                return None  # "max 100000": no quota
            quota, period = int(fields[0]), int(fields[1])
        if quota is None or period is None or quota <= 0 or period <= 0:
            return None
        return quota / period


def locate(cgroups: str, mountinfo: str, controller: str) -> tuple[Path, str, bool] | None:
    """(mount point, path inside it, whether v1) of this process's cgroup for `controller`
    ("memory" or "cpu"), from the text of /proc/self/cgroup and /proc/self/mountinfo."""
    v2_path: str | None = None
    v1_path: str | None = None
    for line in cgroups.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        if parts[0] == "0" and parts[1] == "":
            v2_path = parts[2]
        elif controller in parts[1].split(","):
            v1_path = parts[2]
    v2_mount = v1_mount = None
    for line in mountinfo.splitlines():
        head, sep, tail = line.partition(" - ")
        fields, after = head.split(), tail.split()
        if not sep or len(fields) < 5 or len(after) < 3:
            continue
        mount = (Path(fields[4]), fields[3])  # (mount point, the cgroup at its root)
        if after[0] == "cgroup2":
            v2_mount = mount
        elif after[0] == "cgroup" and controller in after[2].split(","):
            v1_mount = mount
    if v2_path is not None and v2_mount is not None:
        point, root = v2_mount
        inside = _inside(v2_path, root)
        file = "memory.max" if controller == "memory" else "cpu.max"
        # A hybrid machine mounts v2 without the controller: then v1 has it.
        if inside is not None and any(
            (d / file).exists() for d in _up_the_tree(point / inside.lstrip("/"), point)
        ):
            return point, inside, False
    if v1_path is not None and v1_mount is not None:
        point, root = v1_mount
        inside = _inside(v1_path, root)
        if inside is not None:
            return point, inside, True
    return None


def _inside(path: str, mount_root: str) -> str | None:
    """`path` relative to the cgroup a mount shows at its root (None: not under it)."""
    if mount_root in ("", "/"):
        return path
    if path == mount_root or path.startswith(mount_root.rstrip("/") + "/"):
        return path[len(mount_root.rstrip("/")) :] or "/"
    return None


def for_self(
    read: Callable[[str], str] = lambda name: Path(name).read_text(),
) -> tuple[CgroupMemory | None, CgroupCpu | None]:
    """This process's memory and CPU cgroups (None where there is no cgroup to read)."""
    try:
        cgroups, mountinfo = read("/proc/self/cgroup"), read("/proc/self/mountinfo")
    except OSError:
        return None, None
    memory = locate(cgroups, mountinfo, "memory")
    cpu = locate(cgroups, mountinfo, "cpu")
    return (
        CgroupMemory(memory[0], memory[1], v1=memory[2]) if memory else None,
        CgroupCpu(cpu[0], cpu[1], v1=cpu[2]) if cpu else None,
    )


__all__ = ["CgroupCpu", "CgroupMemory", "for_self", "locate"]
