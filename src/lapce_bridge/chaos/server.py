"""Server killed with work in flight: terminals, a running command, a stream, a watch, a queue.

One real server with its terminals in the host process (`--terminal-host on`), driven by
`BridgeClient.spawn` (its supervisor restarts the server, its outbox resends what was queued,
keyed). Before the kill: a terminal with a cwd and an exported variable, a command running
(`sleep 2; echo done`), output streaming from `yes | head -c 50M` (`stream: true`), and a
watch on a folder. Then SIGKILL, and during the outage requests are queued: pings and file
writes. Each item is counted on its own (RPO, item by item):

- every queued request answered, and each written file whole on disk;
- the running command's real result (`done`, exit code 0), its replay answered by the host;
- the stream whole: its result's `outputBytes`, and the bytes and SHA-256 of the output read
  back with `terminal/readOutput`, equal to what `head` sent; and the bytes and SHA-256 of
  what the `terminal/data` notifications delivered (the client resumes the stream by sequence
  number after the restart, and reads what its ring lost from the spool): once, in order;
- `terminal/list` equal before and after (ids, pids, cwd), the first terminal keeping its cwd
  and env;
- the watch reporting a file created after the restart.

Two figures, each timed on the monotonic clock from the kill, median over the rounds (BENCHMARKS.md:
goal 200 ms, seed 5 s): RTO, to the first queued ping answered by the new server (the server
answering), and its own row, to a terminal made before the kill answering a command (the
terminals usable). They are larger than the bench's restart rows (`bench --only host`) for
what the scenario does on purpose: the stream goes on in the host at full speed through the
outage (`yes`, `head` and the host reading and spooling take the machine's cores while the
new server starts), and the queued requests (pings behind keyed executes, 50 file writes)
are all sent at once on the new connection. With `break_recovery` the client's supervisor
may not restart the server (one death is a crash loop), so everything sent during the
outage is lost.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import time
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from lapce_bridge.bench.report import figure_row
from lapce_bridge.chaos.harness import ServerUnderTest, Tally
from lapce_bridge.chaos.scenario import ChaosContext, ChaosResult
from lapce_bridge.chaos.terminal import execute, new_terminal
from lapce_bridge.core.errors import BridgeError


async def one_round(ctx: ChaosContext, i: int, tally: Tally, usable_after: list[float]) -> float:
    rng = ctx.rng(f"server-restart:{i}")
    stream_bytes = ctx.n(50_000_000, 2_000_000)
    queued = ctx.n(50, 10)
    sut = ServerUnderTest(
        ctx.workdir,
        f"restart-{i}",
        "--terminal-host",
        "on",
        max_crashes=1 if ctx.break_recovery else 5,
    )
    async with sut as client:
        ws = sut.workspace
        sub = (ws / "sub").resolve()
        sub.mkdir()
        (ws / "watched").mkdir()
        value = f"v{rng.randrange(10**9)}"
        t1 = await new_terminal(client, "bash", ws)
        await execute(client, t1, f"cd {sub}; export CHAOS_KEEP={value}")
        t2 = await new_terminal(client, "bash", ws)
        t3 = await new_terminal(client, "bash", ws)
        streamed: dict[str, int] = defaultdict(int)
        hashed: dict[str, Any] = defaultdict(hashlib.sha256)

        def heard(p: dict[str, Any]) -> None:
            data = p["data"].encode()
            streamed[p["executionId"]] += len(data)
            hashed[p["executionId"]].update(data)

        client.on_notification("terminal/data", heard)
        events: list[str] = []
        client.on_notification(
            "fs/didChange", lambda p: events.extend(c["path"] for c in p.get("changes", []))
        )
        await client.request("fs/watch", {"paths": ["watched"]})
        running = asyncio.ensure_future(
            client.send_with_recovery(
                "terminal/execute",
                {"terminalId": t2, "command": "sleep 2; echo done", "timeoutMs": 30_000},
            )
        )
        stream = asyncio.ensure_future(
            client.send_with_recovery(
                "terminal/execute",
                {
                    "terminalId": t3,
                    "command": f"yes | head -c {stream_bytes}",
                    "stream": True,
                    "maxOutputBytes": 4096,
                    "timeoutMs": 60_000,
                },
            )
        )
        await asyncio.sleep(rng.uniform(0.3, 0.6))
        before = await _listed(client)
        killed = time.monotonic()
        os.kill(sut.pid, signal.SIGKILL)
        usable = asyncio.ensure_future(_usable(client, t1, killed))
        contents = {f"q/{n}.txt": f"queued {n} {rng.random()}\n" for n in range(queued)}
        pings = [asyncio.ensure_future(client.send_with_recovery("ping")) for _ in range(queued)]
        writes = [
            asyncio.ensure_future(
                client.send_with_recovery(
                    "fs/write", {"path": path, "content": text, "createDirs": True}
                )
            )
            for path, text in contents.items()
        ]
        outage = 5.0 if ctx.break_recovery else 30.0
        rto = float("inf")
        try:
            await asyncio.wait_for(asyncio.shield(pings[0]), outage)
            rto = (time.monotonic() - killed) * 1000
        except (BridgeError, TimeoutError):
            pass
        for kind, futures in (("queued ping", pings), ("queued write", writes)):
            for outcome in await _settle(futures, outage):
                tally.check(not isinstance(outcome, BaseException), f"{kind} not answered")
        for path, text in contents.items():
            on_disk = ws / path
            tally.check(
                on_disk.exists() and on_disk.read_text() == text, "queued write not on disk"
            )
        (result,) = await _settle([running], outage)
        tally.check(
            isinstance(result, dict) and result.get("output") == "done\n", "running command lost"
        )
        tally.check(
            isinstance(result, dict) and result.get("exitCode") == 0, "running command's exit code"
        )
        (streamed_result,) = await _settle([stream], 60)
        execution = streamed_result.get("executionId") if isinstance(streamed_result, dict) else ""
        tally.check(
            isinstance(streamed_result, dict)
            and streamed_result.get("outputBytes") == stream_bytes,
            "streamed command's output lost",
        )
        whole = await _read_back(client, str(execution))
        expected = hashlib.sha256(b"y\n" * (stream_bytes // 2)).hexdigest()
        tally.check(whole == (stream_bytes, expected), "streamed output not read back whole")
        tally.check(streamed.get(str(execution), 0) == stream_bytes, "streamed notifications lost")
        tally.check(
            hashed[str(execution)].hexdigest() == expected, "streamed notifications not whole"
        )
        tally.check(await _listed(client) == before, "terminal/list changed")
        await _after_restart(client, sut.workspace, (t1, t2, t3), sub, value, events, tally)
        (usable_ms,) = await _settle([usable], outage)
        usable_after.append(usable_ms if isinstance(usable_ms, float) else float("inf"))
    return rto


async def _listed(client: Any) -> list[tuple[Any, ...]]:
    try:
        terminals = await client.send_with_recovery("terminal/list")
    except BridgeError:
        return []
    return sorted((t["terminalId"], t["pid"], t["cwd"], t["shell"]) for t in terminals)


async def _usable(client: Any, tid: str, killed: float) -> float:
    """Milliseconds from the kill to `tid` (made before it) answering a command."""
    answer = await client.send_with_recovery(
        "terminal/execute", {"terminalId": tid, "command": "echo usable"}
    )
    if answer.get("output") != "usable\n":
        raise BridgeError(f"the terminal answered {answer.get('output')!r}")
    return (time.monotonic() - killed) * 1000


async def _read_back(client: Any, execution: str) -> tuple[int, str]:
    """The bytes and SHA-256 of an execution's whole output, paged with readOutput."""
    digest = hashlib.sha256()
    size = offset = 0
    try:
        while True:
            page = await client.request(
                "terminal/readOutput", {"executionId": execution, "offset": offset}, timeout=30
            )
            data = page["data"].encode()
            digest.update(data)
            size += len(data)
            offset = page["offset"]
            if page["eof"] or not data:
                break
    except (BridgeError, TimeoutError):
        return (-1, "")
    return (size, digest.hexdigest())


async def _after_restart(
    client: Any,
    ws: Any,
    terminals: tuple[str, ...],
    sub: Any,
    value: str,
    events: list[str],
    tally: Tally,
) -> None:
    try:
        listed = {t["terminalId"] for t in await client.request("terminal/list", timeout=10)}
    except (BridgeError, TimeoutError):
        listed = set()
    for tid in terminals:
        tally.check(tid in listed, "terminal gone")
    try:
        answer = await execute(client, terminals[0], 'echo "$CHAOS_KEEP"; pwd')
    except (BridgeError, TimeoutError):
        answer = {}
    lines = str(answer.get("output", "")).splitlines()
    tally.check(lines[:1] == [value], "terminal's env lost")
    tally.check(lines[1:2] == [str(sub)], "terminal's cwd lost")
    events.clear()
    (ws / "watched" / "after-restart.txt").write_text("x")
    deadline = time.monotonic() + 5
    # Polls what the notification handler appended; bounded by the deadline.
    while time.monotonic() < deadline and not any("after-restart" in p for p in events):  # noqa: ASYNC110
        await asyncio.sleep(0.02)
    tally.check(any("after-restart" in p for p in events), "watch lost")


async def _settle(futures: Sequence[asyncio.Future[Any]], within: float) -> list[Any]:
    """Each future's result or exception; those still pending after `within` are cancelled."""
    _, pending = await asyncio.wait(futures, timeout=within) if futures else (set(), set())
    for future in pending:
        future.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    out: list[Any] = []
    for future in futures:
        if future in pending or future.cancelled():
            out.append(TimeoutError("not answered"))
        elif future.exception() is not None:
            out.append(future.exception())
        else:
            out.append(future.result())
    return out


async def run(ctx: ChaosContext) -> ChaosResult:
    rounds = ctx.n(3, 1)
    tally = Tally()
    usable: list[float] = []
    rtos = [await one_round(ctx, i, tally, usable) for i in range(rounds)]
    rto = _median(rtos)
    usable_ms = _median(usable)
    return tally.result(
        "server killed and restarted",
        rto,
        rounds,
        seed_ms=5_000,
        goal_ms=200,
        detail="SIGKILL with terminals in the host, a running command, a 50 MB stream going on "
        "through the outage, a watch and queued requests; RTO = kill to the first queued ping "
        "answered; terminalsUsableMs = kill to a terminal made before it answering.",
        extra={"terminalsUsableMs": usable_ms},
        more=[
            figure_row(
                "chaos",
                "server killed and restarted: terminals usable",
                usable_ms,
                "ms",
                higher_is_better=False,
                seed=5_000,
                goal=200,
                samples=rounds,
                note="kill to a terminal made before it answering a command (same id)",
            )
        ],
    )


def _median(values: list[float]) -> float:
    """The median, infinite when any round never recovered."""
    finite = sorted(v for v in values if v != float("inf"))
    return finite[len(finite) // 2] if finite and len(finite) == len(values) else float("inf")
