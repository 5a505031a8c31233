"""A server started with signals ignored or blocked gives its shells the defaults.

A `lapce-bridge serve` started in the background by a non-interactive shell (or under a
supervisor that ignores SIGINT and SIGQUIT, or blocks signals) inherits those dispositions,
and a child keeps an ignored disposition and the signal mask across exec. Its terminals'
shells must not: there Ctrl-C (`terminal/interrupt`) would stop nothing. Checked through a
real serve started with SIGINT and SIGQUIT ignored and SIGINT blocked, in bash, zsh and fish.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
from pathlib import Path

import pytest

from lapce_bridge.ipc.client import BridgeClient
from tests.integration.serve_process import serve

pytestmark = [pytest.mark.shells, pytest.mark.asyncio(loop_scope="function")]

# What a command in the terminal was given: SIGINT's and SIGQUIT's dispositions, and the mask.
PROBE = (
    "python3 -c 'import signal; g = signal.getsignal; "
    "print(g(signal.SIGINT) is signal.SIG_IGN, g(signal.SIGQUIT) == signal.SIG_IGN, "
    "sorted(signal.pthread_sigmask(signal.SIG_BLOCK, [])))'"
)
# SIGINT and SIGQUIT ignored, SIGINT and SIGUSR1 blocked, then the server.
IGNORING = (
    sys.executable,
    "-c",
    "import os, signal, sys; S = signal\n"
    "for sig in (S.SIGINT, S.SIGQUIT): S.signal(sig, S.SIG_IGN)\n"
    "S.pthread_sigmask(S.SIG_BLOCK, [S.SIGINT, S.SIGUSR1]); os.execv(sys.argv[1], sys.argv[1:])",
)


def _masks(pid: int) -> tuple[int, int]:
    """The process's ignored and blocked signals (bit n-1: signal n)."""
    fields = dict(
        line.split(":\t", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return int(fields["SigIgn"], 16), int(fields["SigBlk"], 16)


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
async def test_a_server_started_with_sigint_ignored_still_interrupts(
    shell: str, tmp_path: Path
) -> None:
    if shutil.which(shell) is None:
        pytest.skip(f"{shell} is not installed")
    async with serve(tmp_path, prefix=IGNORING) as srv, BridgeClient(srv.socket) as client:
        ignored, blocked = await asyncio.to_thread(_masks, srv.proc.pid)
        assert ignored & (1 << 2), "the server was started with SIGQUIT ignored"
        assert blocked & (1 << 1), "the server was started with SIGINT blocked"
        tid = (await client.request("terminal/create", {"shell": shell}))["terminalId"]
        probed = await client.request("terminal/execute", {"terminalId": tid, "command": PROBE})
        assert probed["output"] == "False False []\n"
        running = await client.request(
            "terminal/execute",
            {"terminalId": tid, "command": "echo up; sleep 30", "maxWaitMs": 500},
        )
        assert running["status"] == "running"
        await client.request("terminal/interrupt", {"terminalId": tid})
        ended = await client.request(
            "terminal/wait", {"executionId": running["executionId"], "timeoutMs": 20_000}
        )
        assert (ended["status"], ended["exitCode"]) == ("interrupted", 130)
        # SIGINT reached `sleep` as Ctrl-C does, within the first grace period: no SIGKILL of
        # the shell, so the terminal keeps its process.
        after = await client.request("terminal/execute", {"terminalId": tid, "command": "echo ok"})
        assert after["output"] == "ok\n"
