"""`lapce_bridge.testing.other_version`: a process of this package that says another version
(real processes: the override is process-wide, so each check runs in its own)."""

from __future__ import annotations

import json
import subprocess
import sys

from lapce_bridge import __version__
from lapce_bridge.host import link

MODULE = "lapce_bridge.testing.other_version"


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=60, check=False
    )


def test_the_command_it_runs_says_the_other_version() -> None:
    done = _run(
        "-m", MODULE, "--version", "9.9.9", "--", sys.executable, "-m", "lapce_bridge", "--version"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "lapce-bridge, version 9.9.9"
    assert __version__ != "9.9.9"


def test_its_hello_and_the_hosts_it_starts_say_it_too() -> None:
    script = (
        "import json, sys\n"
        "from lapce_bridge.testing.other_version import override\n"
        "override('0.0.1', 1)\n"
        "from pathlib import Path\n"
        "from lapce_bridge.host import attach, link\n"
        "import lapce_bridge.host.process as process\n"
        "hello = attach.hello(workspace=Path('/'), shell=None, max_message_bytes=1, features={})\n"
        "cmd = attach.host_command(Path('/s'), Path('/w'), None, 1.0, sys.executable)\n"
        "print(json.dumps([hello['version'], hello['protocol'], process.__version__, cmd]))\n"
    )
    done = _run("-c", script)
    assert done.returncode == 0, done.stderr
    version, protocol, host_version, cmd = json.loads(done.stdout)
    assert (version, protocol, host_version) == ("0.0.1", 1, "0.0.1")
    assert protocol != link.PROTOCOL_VERSION
    assert cmd[1:7] == ["-m", MODULE, "--version", "0.0.1", "--protocol", "1"]
    assert cmd[7:11] == ["--", sys.executable, "-m", "lapce_bridge.host"]


def test_a_command_line_that_is_not_python_m_is_refused() -> None:
    done = _run("-m", MODULE, "--version", "9", "--", "bash", "-c", "true")
    assert done.returncode == 2
    assert "expected -- PYTHON -m MODULE" in done.stderr
