from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from lapce_bridge.testing import FakeClock
from tests.hosts import stop_hosts_under

log = logging.getLogger("tests")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(autouse=True)
def _stop_terminal_hosts(request: pytest.FixtureRequest) -> Iterator[None]:
    """Stop the terminal hosts a test's servers started in its `tmp_path` (a host outlives
    its server on purpose; left running, each would load the machine for the next tests)."""
    yield
    tmp_path = request.node.funcargs.get("tmp_path")
    if tmp_path is not None:
        stop_hosts_under(tmp_path)


@pytest.fixture(autouse=True, scope="session")
def _no_terminal_host_left(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Hosts of module-wide servers (no test's `tmp_path`) are stopped at the end."""
    yield
    left = stop_hosts_under(tmp_path_factory.getbasetemp())
    if left:
        log.warning("stopped %d terminal host(s) left by module fixtures: %s", len(left), left)
