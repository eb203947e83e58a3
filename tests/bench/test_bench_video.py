"""The video benchmark (``python -m bench video``) at tiny scale against a real ``medikus serve``:
admit → first frame in headless Chromium, and signalling in a few rooms with churn; every figure
is produced and plausible (the values themselves depend on the machine)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from bench import video
from bench.video import Load


def _say(_message: str) -> None:
    pass


@pytest.mark.skipif(not Path(video.CHROMIUM).exists(), reason="Debian's chromium is not installed")
def test_admit_to_first_frame_is_measured_in_the_page() -> None:
    with video.world("sqlite", 1) as w:
        admit = asyncio.run(video.measure_admit(w, 2, _say))
    assert admit.failed == 0
    assert len(admit.presented) == len(admit.decoded) == 2
    # A frame cannot arrive before the click, and on loopback not after the sample's timeout.
    assert all(0 < s < 20 for s in (*admit.presented, *admit.decoded))
    assert video.admit_lines(admit)[-1].endswith(("ok", "MISSED"))


def test_signalling_rooms_relay_every_connections_messages() -> None:
    load = Load(rooms=10, rate=2.0, duration_s=4.0, churn_every_s=1.0, churn_fraction=0.2)
    with video.world("sqlite", 1) as w:
        result = asyncio.run(video.measure_signalling(w, load, 1, _say))
    assert (result.rooms, result.connected, result.hard_errors) == (10, 20, 0)
    assert len(result.setup_joins) == 10 and result.churn_joins  # guests left and came back
    # 20 connections at 2/s for 4 s offer 160 signals; churn pauses a few guests.
    assert 80 <= result.messages <= 200
    assert all(0 <= r < 5 for r in result.relay)
    assert result.server_cpu > 0 and result.client_cpu > 0
    assert any("relay p50" in line for line in video.signalling_lines(result))
