"""File-system faults under a real server: transient EIO, a permanent failure, a folder gone.

Errnos are injected inside the server process (`lapce_bridge.testing.server_faults`: a
healthy disk cannot be made to fail on demand); the folder is deleted and re-created for real.

- transient: the next two `open`s of a file fail with EIO; `fs/read` must still answer the
  file's current content, not stale, within the retry schedule (goal under 1 s; seed 10 s).
- permanent: every `open` of a file read before fails; `fs/read` must answer the cached
  content marked `stale: true` instead of failing (RTO: that answer's time). The fallback
  is an incident a user can see: open in `health/get` while the disk fails, counted in
  `metrics/get`, and ended (recovered) by the first read that reaches the disk again.
- watched folder deleted and re-created: a file created in the new folder must be reported
  to the watch (RTO: re-creation to the event).
"""

from __future__ import annotations

import asyncio
import shutil
import statistics
import time
from typing import Any

from lapce_bridge.chaos.harness import ServerUnderTest, Tally
from lapce_bridge.chaos.scenario import ChaosContext, ChaosResult
from lapce_bridge.core.errors import BridgeError
from lapce_bridge.ipc.client import BridgeClient


async def _read(client: BridgeClient, path: str) -> tuple[float, dict[str, Any]]:
    started = time.monotonic()
    try:
        answer = await client.request("fs/read", {"path": path}, timeout=15)
    except (BridgeError, TimeoutError) as exc:
        answer = {"error": str(exc)}
    return (time.monotonic() - started) * 1000, answer


def _median(rtos: list[float]) -> float:
    return statistics.median(rtos) if rtos else float("inf")


async def run_transient(ctx: ChaosContext) -> ChaosResult:
    rng = ctx.rng("fs-transient")
    rounds = ctx.n(10, 2)
    tally = Tally()
    rtos: list[float] = []
    async with ServerUnderTest(ctx.workdir, "fs-transient") as client:
        for i in range(rounds):
            path = f"transient-{i}.txt"
            text = f"round {i} {rng.random()}\n" * rng.randrange(1, 200)
            await client.request("fs/write", {"path": path, "content": text})
            times = None if ctx.break_recovery else 2  # broken: the fault never clears
            await client.request(
                "test/faults/add", {"op": "open", "times": times, "pathGlob": f"*/{path}"}
            )
            elapsed, answer = await _read(client, path)
            await client.request("test/faults/clear")
            if tally.check(answer.get("content") == text, "read failed or wrong content"):
                rtos.append(elapsed)
            tally.check(answer.get("stale") is False, "answered stale instead of retrying")
    return tally.result(
        "transient file-system error",
        _median(rtos),
        rounds,
        seed_ms=10_000,
        goal_ms=1_000,
        detail="two EIO on open, default retry schedule; RTO = the read's answer time.",
    )


async def run_permanent(ctx: ChaosContext) -> ChaosResult:
    rng = ctx.rng("fs-permanent")
    rounds = ctx.n(10, 2)
    tally = Tally()
    rtos: list[float] = []
    sut = ServerUnderTest(ctx.workdir, "fs-permanent")
    async with sut as client:
        for i in range(rounds):
            path = f"permanent-{i}.txt"
            text = f"cached {i} {rng.random()}\n"
            if ctx.break_recovery:  # broken: written behind the server's back, never cached
                (sut.workspace / path).write_text(text)
            else:
                await client.request("fs/write", {"path": path, "content": text})
                await _read(client, path)
            await client.request(
                "test/faults/add", {"op": "open", "times": None, "pathGlob": f"*/{path}"}
            )
            elapsed, answer = await _read(client, path)
            subject = f"fs/read {path}"
            health = await client.request("health/get")
            opened = [x for x in health["incidents"]["open"] if x["subject"] == subject]
            tally.check(
                [x["kind"] for x in opened] == ["cache_fallback"], "fallback not an open incident"
            )
            counters = (await client.request("metrics/get"))["counters"]
            tally.check(
                counters.get("incidents.cache_fallback", 0) >= i + 1, "fallback not counted"
            )
            await client.request("test/faults/clear")
            if tally.check(answer.get("content") == text, "failed instead of the cached copy"):
                rtos.append(elapsed)
            tally.check(answer.get("stale") is True, "cached copy not marked stale")
            _, fresh = await _read(client, path)
            tally.check(fresh.get("stale") is False, "not read afresh once the disk was back")
            health = await client.request("health/get")
            ended = [x for x in health["incidents"]["recent"] if x["subject"] == subject]
            tally.check(
                len(ended) == 1 and ended[0]["recovered"] is True and ended[0]["durationMs"] > 0,
                "fallback incident not ended when the disk was back",
            )
    return tally.result(
        "permanent file-system error",
        _median(rtos),
        rounds,
        seed_ms=10_000,
        goal_ms=1_000,
        detail="every open fails with EIO after a read; the cached copy answered as stale, an "
        "incident until the disk answers again.",
    )


async def run_watched_folder(ctx: ChaosContext) -> ChaosResult:
    rounds = ctx.n(5, 2)
    tally = Tally()
    rtos: list[float] = []
    sut = ServerUnderTest(ctx.workdir, "fs-watched")
    async with sut as client:
        folder = sut.workspace / "watched"
        folder.mkdir()
        events: list[str] = []
        client.on_notification(
            "fs/didChange", lambda p: events.extend(c["path"] for c in p.get("changes", []))
        )
        watch = await client.request("fs/watch", {"paths": ["watched"]})
        if ctx.break_recovery:  # broken: nobody watches any more
            await client.request("fs/unwatch", {"watchId": watch["watchId"]})
        for i in range(rounds):
            shutil.rmtree(folder)
            await asyncio.sleep(0.2)  # the deletion is seen before the folder comes back
            folder.mkdir()
            recreated = time.monotonic()
            name = f"new-{i}.txt"
            (folder / name).write_text(f"{i}\n")
            deadline = recreated + ctx.patience(10)
            # Polls what the notification handler appended; bounded by the deadline.
            while time.monotonic() < deadline and not any(name in p for p in events):  # noqa: ASYNC110
                await asyncio.sleep(0.01)
            if tally.check(any(name in p for p in events), "file in re-created folder unseen"):
                rtos.append((time.monotonic() - recreated) * 1000)
    return tally.result(
        "watched folder deleted and re-created",
        _median(rtos),
        rounds,
        seed_ms=10_000,
        goal_ms=1_000,
        detail="rm -r and mkdir of a watched folder, then a new file in it; RTO = re-creation "
        "to its event.",
    )
