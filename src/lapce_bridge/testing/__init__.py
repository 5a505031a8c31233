"""Test doubles shipped with the package, for faults that cannot be produced for real.

`FakeClock` replaces time (a jump, a long timeout); the fault-injecting file system raises
chosen errnos on a healthy disk; `other_version` runs the real server or terminal host saying
another release (the version check an upgrade meets). Real shells, sockets and files are
used everywhere else.
"""

from lapce_bridge.testing.clock import FakeClock
from lapce_bridge.testing.faultfs import Fault, FaultyFs, FaultyWatchBackend

__all__ = ["FakeClock", "Fault", "FaultyFs", "FaultyWatchBackend"]
