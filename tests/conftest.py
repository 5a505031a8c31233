from __future__ import annotations

import pytest

from lapce_bridge.testing import FakeClock


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()
