"""A server whose terminals live in the host starts without the terminals' code, and still
serves every terminal method with the limits the terminal service gives it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson

PROBE = """
import asyncio, sys, orjson
from pathlib import Path
from lapce_bridge.app import App

async def main():
    base = Path(sys.argv[1])
    async with App(workspace=base / "ws", state_dir=base / "state", terminal_host=True) as app:
        loaded = sorted(m for m in sys.modules if m.startswith("lapce_bridge.terminal."))
        methods = sorted(m for m in app._methods if m.startswith("terminal/"))
    from lapce_bridge.terminal.service import TerminalService
    served = TerminalService(workspace=base / "ws", state_dir=base / "state").methods()
    probe = {"timeoutMs": 5000, "maxWaitMs": 2000}
    limits = {
        name: [
            m.limit(probe) if m.limit else None,
            app._methods[name].limit(probe) if app._methods[name].limit else None,
        ]
        for name, m in served.items()
    }
    print(orjson.dumps({"loaded": loaded, "methods": methods, "served": sorted(served),
                        "limits": limits}).decode())

asyncio.run(main())
"""


def test_a_server_with_the_terminal_host_opens_without_the_terminals_code(
    tmp_path: Path,
) -> None:
    (tmp_path / "ws").mkdir()
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(tmp_path)],
        capture_output=True,
        check=True,
        timeout=120,
    )
    found = orjson.loads(done.stdout)
    # Only the light table of names and limits (and the crash policy the server hands the
    # host), not the terminal service, PTYs, parsers or spools.
    assert "lapce_bridge.terminal.params" in found["loaded"]
    assert set(found["loaded"]) <= {
        "lapce_bridge.terminal.params",
        "lapce_bridge.terminal.recovery",
    }
    # Every terminal method, and the one of the host's own (stopping it).
    assert found["methods"] == sorted([*found["served"], "terminal/stopHost"])
    assert "terminal/execute" in found["methods"]
    for name, (own, forwarded) in found["limits"].items():
        assert own == forwarded, name
    assert found["limits"]["terminal/execute"][0] == 32.0  # maxWaitMs 2 s + the 30 s margin
