"""Fixtures for the simulator tests: a private bus per test, bleak pointed at it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from devices.simulator import private_bus


@pytest.fixture
def bus_address(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    with private_bus() as address:
        # bleak reads it when it connects; BLEAK_DBUS_AUTH_UID is not needed (same uid)
        monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", address)
        yield address
