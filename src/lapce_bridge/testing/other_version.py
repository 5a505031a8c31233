"""Run this package as another version of itself: a real server or terminal host that says
it is version V (and, optionally, speaks link protocol N) in its `hello` and `welcome`.

    python -m lapce_bridge.testing.other_version --version 0.0.1 [--protocol 1] \\
        -- python -m lapce_bridge serve ...

What follows `--` is the command line that would run (`PYTHON -m MODULE ARGS`); it is run
in this process after `lapce_bridge.__version__` (and `host.link.PROTOCOL_VERSION`) are
replaced, before any other module of the package loads, so every place that reads them sees
the other version. A terminal host the server starts runs through this module too, with the
same versions: an "old" server and its "old" host, as an installed older release would be.
Everything else is the real code: the versions are what differ on purpose, because the
version check is what is under test (an upgraded server meeting the host an older release
left running).
"""

from __future__ import annotations

import argparse
import runpy
import sys
from collections.abc import Sequence

MODULE = "lapce_bridge.testing.other_version"  # its name also when run as __main__


def override(version: str, protocol: int | None) -> None:
    """Make this process, and the hosts it starts, say `version` and `protocol`."""
    # The package's own, and every loaded module's copy of it (`from lapce_bridge import
    # __version__`); the modules loaded later copy the new one.
    for name, module in list(sys.modules.items()):
        if name.split(".")[0] == "lapce_bridge" and hasattr(module, "__version__"):
            vars(module)["__version__"] = version
    from lapce_bridge.host import attach, link

    if protocol is not None:
        link.PROTOCOL_VERSION = protocol
    real_command = attach.host_command
    wrapper = [sys.executable, "-m", MODULE, "--version", version]
    if protocol is not None:
        wrapper += ["--protocol", str(protocol)]

    def host_command(*args: object, **kwargs: object) -> list[str]:
        return [*wrapper, "--", *real_command(*args, **kwargs)]  # type: ignore[arg-type]

    attach.host_command = host_command


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog=f"python -m {MODULE}")
    p.add_argument("--version", required=True, help="the package version to say")
    p.add_argument("--protocol", type=int, help="the link protocol version to say")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- PYTHON -m MODULE ARGS...")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if len(command) < 3 or command[1] != "-m":
        p.error("expected -- PYTHON -m MODULE [ARGS...] after the options")
    override(args.version, args.protocol)
    sys.argv = [command[2], *command[3:]]
    try:
        runpy.run_module(command[2], run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["main", "override"]
