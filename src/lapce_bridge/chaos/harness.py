"""The real server every chaos scenario drives, and the tally that counts loss item by item.

`ServerUnderTest` starts `lapce-bridge serve` through `BridgeClient.spawn` with the default
policies (the client's supervisor and breaker, the server's crash-loop, timeout and pressure
policies), an empty HOME (the machine's rc files would be measured otherwise) and the fault
controls of `lapce_bridge.testing.server_faults` (inert until a scenario arms a fault).

`Tally` is how a scenario reports: each thing a user would check (an output, an exit code,
the cwd, an env variable, a file's content, a watch event, an answer) is one `check`; every
failed check is one lost item, with its reason kept for the table's note. RTO figures are
taken on the monotonic clock from the fault to the first correct answer.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lapce_bridge.bench.report import Row
from lapce_bridge.chaos.scenario import ChaosResult
from lapce_bridge.core.errors import BridgeError
from lapce_bridge.host.places import stop_host
from lapce_bridge.ipc.client import BridgeClient
from lapce_bridge.testing.server_faults import SPEC as FAULTS_SPEC


@dataclass
class Tally:
    checked: int = 0
    lost: int = 0
    reasons: list[str] = field(default_factory=list)

    def check(self, ok: bool, what: str) -> bool:
        self.checked += 1
        if not ok:
            self.lost += 1
            if len(self.reasons) < 200:
                self.reasons.append(what)
        return ok

    def result(
        self,
        scenario: str,
        rto_ms: float,
        rounds: int,
        *,
        seed_ms: float,
        goal_ms: float,
        detail: str,
        ok: bool | None = None,
        extra: dict[str, float] | None = None,
        more: Sequence[Row] = (),
    ) -> ChaosResult:
        """The scenario's row: ok when nothing was lost and the RTO is within the seed."""
        return ChaosResult(
            scenario,
            rto_ms,
            self.lost,
            rounds,
            seed_ms=seed_ms,
            goal_ms=goal_ms,
            ok=(self.lost == 0 and rto_ms < seed_ms) if ok is None else ok,
            detail=f"{detail.rstrip()} {self.summary()}",
            extra={**(extra or {}), "items": float(self.checked)},
            more=list(more),
        )

    def summary(self) -> str:
        if not self.reasons:
            return f"{self.checked} items checked, none lost"
        shown = "; ".join(dict.fromkeys(self.reasons))
        return f"{self.checked} items checked; lost: {shown[:300]}"


class ServerUnderTest:
    def __init__(self, workdir: Path, name: str, *extra_args: str, max_crashes: int = 5) -> None:
        self.root = Path(tempfile.mkdtemp(prefix=f"{name[:12]}-", dir=workdir))
        self.workspace = self.root / "ws"
        self.home = self.root / "home"
        for folder in (self.workspace, self.home):
            folder.mkdir()
        self.socket = self.root / "run" / "bridge.sock"
        self.log = self.root / "server.log"
        self.args = (
            "--workspace", str(self.workspace), "--state-dir", str(self.root / "state"),
            "--extra-methods", FAULTS_SPEC, *extra_args,
        )  # fmt: skip
        self.max_crashes = max_crashes  # the client's default unless a scenario breaks it
        self.client: BridgeClient | None = None

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(HOME=str(self.home), XDG_CONFIG_HOME=str(self.home / ".config"))
        return env

    async def __aenter__(self) -> BridgeClient:
        self.client = await BridgeClient.spawn(
            self.socket,
            server_args=self.args,
            env=self.env(),
            stderr_path=self.log,
            max_crashes=self.max_crashes,
        )
        return self.client

    async def __aexit__(self, *exc: object) -> None:
        if self.client is not None:
            await self.client.close()
        # The server's terminal host outlives it on purpose; a chaos run leaves none behind.
        await stop_host(self.root / "state", self.workspace)

    @property
    def pid(self) -> int:
        sup = self.client.supervisor if self.client is not None else None
        if sup is None or sup.process is None:
            raise RuntimeError("the server is not running")
        return sup.process.pid

    async def connect_another(self) -> BridgeClient:
        """A second client of the same server (no supervisor of its own)."""
        return await BridgeClient(self.socket).connect()


async def until_ok(
    attempt: Callable[[], Awaitable[Any]],
    ok: Callable[[Any], bool],
    within: float,
    pause: float = 0.005,
) -> tuple[float, Any]:
    """Retry `attempt` until its answer passes `ok`: (seconds taken, last answer); inf if never."""
    started = time.monotonic()
    last: Any = None
    while True:
        try:
            last = await asyncio.wait_for(
                attempt(), max(within - (time.monotonic() - started), 0.01)
            )
            if ok(last):
                return time.monotonic() - started, last
        except (BridgeError, TimeoutError, OSError) as exc:
            last = exc
        if time.monotonic() - started >= within:
            return float("inf"), last
        await asyncio.sleep(pause)


def exec_ok(expected_output: str) -> Callable[[Any], bool]:
    def ok(result: Any) -> bool:
        return (
            isinstance(result, dict)
            and result.get("output") == expected_output
            and result.get("exitCode") == 0
        )

    return ok


__all__ = ["ServerUnderTest", "Tally", "exec_ok", "until_ok"]
