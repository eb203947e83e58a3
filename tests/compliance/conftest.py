from __future__ import annotations

import pytest

from tests.compliance.clock import ManualClock


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()
