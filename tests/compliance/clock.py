"""A manual clock (epoch microseconds) for the compliance tests: time moves only when told."""

from __future__ import annotations

START = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z


class ManualClock:
    def __init__(self, now: int = START) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += int(seconds * 1_000_000)
