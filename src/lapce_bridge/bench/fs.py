"""File-system rows: cached and disk reads, the mixed read/write rate, transient-error recovery.

Reads are timed one call at a time through the `fs/read` handler, as the server calls it
(parameter checks, confinement, the cache's stat, rendering to the wire shape), awaited
directly; a separate info row times the same call wrapped in a Task, which is what the
server adds for an async handler. The disk row uses a service whose cache holds nothing.
The mixed row runs concurrent workers (as concurrent requests would) over a set of 4 KiB
files, with real `fsync`s; the file system type of the bench folder is in the note, since
fsync on a disk dominates the writes and is near free on tmpfs. A second mixed row without
fsync shows what the writes cost besides it. The recovery row times a read that meets two
injected EIO errors on the real clock: it must finish within the retry schedule.
"""

from __future__ import annotations

import asyncio
import gc
import os
import random
import statistics
import time
from pathlib import Path
from typing import Any

from lapce_bridge.bench.report import Row, figure_row, latency_row
from lapce_bridge.bench.runner import BenchContext
from lapce_bridge.fs.cache import FileCache
from lapce_bridge.fs.service import FileService
from lapce_bridge.ipc.raw import BlockingRawClient, frame
from lapce_bridge.rpc import Method

SUITE = "fs"
KIB4 = 4096
FILES = 64


class _Ctx:
    connection_id = 0
    received_at = 0.0

    def notify(self, method: str, params: Any) -> None:
        pass

    def on_close(self, callback: Any) -> None:
        pass


CTX = _Ctx()


def fs_type(path: Path) -> str:
    """The file system type holding `path` (longest matching mount point), e.g. ext4, tmpfs."""
    best, kind = "", "unknown"
    target = os.path.realpath(path)
    try:
        with open("/proc/self/mounts", encoding="utf-8") as mounts:
            for line in mounts:
                parts = line.split()
                if len(parts) < 3:
                    continue
                point = parts[1].replace("\\040", " ")
                inside = target == point or target.startswith(point.rstrip("/") + "/")
                if inside and len(point) > len(best):
                    best, kind = point, parts[2]
    except OSError:
        pass
    return kind


def _workspace(ctx: BenchContext, name: str) -> Path:
    root = ctx.workdir / name
    root.mkdir(parents=True, exist_ok=True)
    for i in range(FILES):
        (root / f"f{i:03d}.txt").write_bytes(bytes([97 + i % 26]) * KIB4)
    return root


async def _time_reads(read: Method, n: int, paths: list[str]) -> list[float]:
    clock = time.perf_counter
    handler = read.handler
    samples = []
    for i in range(n):
        params = {"path": paths[i % len(paths)]}
        started = clock()
        await handler(params, CTX)
        samples.append(clock() - started)
    return samples


async def _time_reads_in_tasks(read: Method, n: int, paths: list[str]) -> list[float]:
    loop = asyncio.get_running_loop()
    clock = time.perf_counter
    handler = read.handler
    samples = []
    for i in range(n):
        params = {"path": paths[i % len(paths)]}
        started = clock()
        await asyncio.ensure_future(handler(params, CTX), loop=loop)
        samples.append(clock() - started)
    return samples


async def reads(ctx: BenchContext) -> list[Row]:
    root = _workspace(ctx, "reads")
    paths = [f"f{i:03d}.txt" for i in range(FILES)]
    # Files changed within the racy window are re-read, not served: let it pass first.
    await asyncio.sleep(0.06)
    rows = []
    async with FileService(workspace=root, sweep_on_start=False) as svc:
        read = svc.methods()["fs/read"]
        await _time_reads(read, FILES * 2, paths)  # warm: every file cached
        n = ctx.n(20_000, 2_000)
        samples = await _time_reads(read, n, paths)
        assert svc.statistics().store.disk_reads == FILES, "cached reads went to disk"
        rows.append(
            latency_row(SUITE, "file read, cached (4 KiB)", samples,
                        seed=(10, 100, 1000), goal=(5, 30),
                        note="fs/read handler awaited directly: stat + identity check + render")
        )  # fmt: skip
        tasks = await _time_reads_in_tasks(read, ctx.n(5_000, 500), paths)
        rows.append(
            latency_row(SUITE, "file read, cached, in a Task (server's async path)", tasks,
                        note="the same call wrapped in the Task the server makes for an "
                        "async handler: the price of fs/read not being answered inline")
        )  # fmt: skip
    async with FileService(
        workspace=root, cache=FileCache(max_entries=0), sweep_on_start=False
    ) as svc:
        read = svc.methods()["fs/read"]
        await _time_reads(read, FILES, paths)
        samples = await _time_reads(read, ctx.n(10_000, 1_000), paths)
        rows.append(
            latency_row(SUITE, "file read, disk (4 KiB)", samples,
                        seed=(100, 1000, 10000), goal=(30, 200),
                        note="cache disabled: stat, open, verify, fstat, read to EOF, close "
                        "(page cache warm)")
        )  # fmt: skip
        stat = svc.methods()["fs/stat"].handler
        stat_samples = []
        for i in range(ctx.n(10_000, 1_000)):
            params = {"path": paths[i % FILES]}
            started = time.perf_counter()
            stat(params, CTX)
            stat_samples.append(time.perf_counter() - started)
        rows.append(latency_row(SUITE, "fs/stat (inline)", stat_samples))
    return rows


async def mixed(ctx: BenchContext, *, durable: bool) -> Row:
    root = _workspace(ctx, f"mixed-{durable}")
    paths = [f"f{i:03d}.txt" for i in range(FILES)]
    workers = 16
    per_worker = ctx.n(1_000, 60)
    content = "w" * KIB4
    counts = {"read": 0, "write": 0}
    async with FileService(workspace=root, durable=durable, sweep_on_start=False) as svc:
        table = svc.methods()
        read, write = table["fs/read"].handler, table["fs/write"].handler

        async def worker(seed: int) -> None:
            rng = random.Random(seed)
            for _ in range(per_worker):
                params: dict[str, Any] = {"path": rng.choice(paths)}
                if rng.random() < 0.1:
                    params["content"] = content
                    await write(params, CTX)
                    counts["write"] += 1
                else:
                    await read(params, CTX)
                    counts["read"] += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker(i) for i in range(workers)))
        elapsed = time.perf_counter() - started
    ops = counts["read"] + counts["write"]
    kind = fs_type(root)
    name = "file operations, mixed 90% read / 10% atomic write"
    if not durable:
        return figure_row(
            SUITE, name + ", no fsync", ops / elapsed, "ops/s", higher_is_better=True,
            note="the same load with fsync off: what the writes cost besides the fsync",
            extra={"writes_per_s": counts["write"] / elapsed},
        )  # fmt: skip
    return figure_row(
        SUITE, name, ops / elapsed, "ops/s", higher_is_better=True, seed=1000, goal=5000,
        note=f"{workers} concurrent workers, 4 KiB files, fsync of file and folder per write, "
        f"on {kind} ({root.parent})",
        extra={"writes_per_s": counts["write"] / elapsed, "reads_per_s": counts["read"] / elapsed},
    )  # fmt: skip


async def transient_recovery(ctx: BenchContext) -> Row:
    import errno

    from lapce_bridge.testing.faultfs import Fault, FaultyFs

    root = _workspace(ctx, "transient")
    fs = FaultyFs()
    times: list[float] = []
    async with FileService(workspace=root, ops=fs, sweep_on_start=False) as svc:
        read = svc.methods()["fs/read"].handler
        for i in range(ctx.n(10, 3)):
            fs.add(Fault("open", errno.EIO, times=2))
            started = time.perf_counter()
            result = await read({"path": f"f{i:03d}.txt"}, CTX)
            times.append(time.perf_counter() - started)
            assert not result["stale"], "the read should have recovered, not fallen back"
    ms = [t * 1e3 for t in times]
    return figure_row(
        SUITE, "transient file-system error recovery", statistics.median(ms), "ms",
        higher_is_better=False, seed=10_000, goal=1_000, samples=len(ms),
        note="a read meeting two EIO errors, real clock, default retry (50 ms, 100 ms, ±10 %)",
        extra={"min_ms": min(ms), "max_ms": max(ms)},
    )  # fmt: skip


IPC_CALLS = {
    "fs/read, cached (4 KiB), IPC round trip": ("fs/read", {"path": "f.txt"}),
    "fs/stat, IPC round trip": ("fs/stat", {"path": "f.txt"}),
    "ping, IPC round trip (same run)": ("ping", None),
}
IPC_NOTES = {
    "fs/read": "async handler: the server runs it in a Task (compare fs/stat, answered inline)",
    "fs/stat": "sync handler, answered inline by the server",
    "ping": "the floor: framing, dispatch, socket",
}


def ipc_round_trips(sock: Path, count: int, warmup: int) -> dict[str, list[float]]:
    """Round trips of each call in `IPC_CALLS`, interleaved on one blocking client.

    Notifications the server sends meanwhile (a `health/alert`, say) are skipped, and every
    answer is checked to carry its request's id, so a round trip is never timed against the
    answer to an earlier request.
    """
    client = BlockingRawClient.connect_unix(sock)
    calls = [
        (name, frame({"jsonrpc": "2.0", "id": i, "method": m, "params": p}), b'"id":%d,' % i)
        for i, (name, (m, p)) in enumerate(IPC_CALLS.items())
    ]
    samples: dict[str, list[float]] = {name: [] for name, _, _ in calls}
    clock = time.perf_counter
    recv = client.recv_body

    def answer(name: str, tag: bytes) -> bytes:
        while True:
            body = recv()
            if tag in body[:40]:
                return body
            if b'"method":' not in body[:40]:
                raise RuntimeError(f"{name}: unexpected answer {body[:200]!r}")

    try:
        for name, request, tag in calls:
            client.send_bytes(request)
            if b'"result":' not in answer(name, tag)[:60]:
                raise RuntimeError(f"{name}: the server answered with an error")
        for i in range(warmup + count):
            for name, request, tag in calls:
                started = clock()
                client.send_bytes(request)
                answer(name, tag)
                if i >= warmup:
                    samples[name].append(clock() - started)
    finally:
        client.close()
    return samples


async def ipc(ctx: BenchContext) -> list[Row]:
    from lapce_bridge.bench.ipc import server_process

    async with server_process(ctx.workdir, "fs-ipc") as sock:
        (ctx.workdir / "fs-ipc" / "workspace" / "f.txt").write_bytes(b"r" * KIB4)
        await asyncio.sleep(0.06)  # past the racy window, so the read is cached
        found = await asyncio.to_thread(ipc_round_trips, sock, ctx.n(5_000, 300), ctx.n(500, 50))
    return [
        latency_row(SUITE, name, samples, note=IPC_NOTES[IPC_CALLS[name][0]])
        for name, samples in found.items()
    ]


async def run(ctx: BenchContext) -> list[Row]:
    gc.collect()
    rows = await reads(ctx)
    rows.extend(await ipc(ctx))
    rows.append(await mixed(ctx, durable=True))
    rows.append(await mixed(ctx, durable=False))
    rows.append(await transient_recovery(ctx))
    return rows


__all__ = ["fs_type", "ipc_round_trips", "run"]
