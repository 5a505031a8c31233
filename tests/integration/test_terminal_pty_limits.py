"""A pseudo-terminal that cannot be allocated is a clear ResourceExhausted, for real: a child
process whose descriptor limit leaves no room for the PTY's two descriptors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

CHILD = r"""
import asyncio, os, resource, sys
from pathlib import Path
from lapce_bridge.core.errors import ResourceExhausted
from lapce_bridge.terminal.terminal import Terminal

async def main():
    state = Path(sys.argv[1])
    term = Terminal(shell="bash", cwd=str(state), state_dir=state)
    fds = len(os.listdir("/proc/self/fd"))
    held = []
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (fds + 8, hard))
    try:
        while True:
            held.append(os.open("/dev/null", os.O_RDONLY))
    except OSError:
        # Two left: enough for the folder walk and then the command file, one short of the
        # PTY's two descriptors.
        os.close(held.pop())
        os.close(held.pop())
    try:
        await term.boot()
    except ResourceExhausted as exc:
        print("exhausted:", exc.code, exc.classification.retryable, exc)
    else:
        print("started")
    finally:
        for fd in held:
            os.close(fd)
        await term.close()

asyncio.run(main())
"""


def test_no_pty_is_resource_exhausted(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(tmp_path)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("exhausted: -32005 True no pseudo-terminal could be allocated")
