"""The station benchmark (``python -m bench station``) at tiny scale: simulated BLE devices, the
station process and a real record core; every figure is produced and plausible.

The figures themselves depend on the machine: only their order and the accounting are checked
(every reading sent is stored and uploaded once, none goes to review).
PHD IG: http://hl7.org/fhir/uv/phd/ — search: https://hl7.org/fhir/R4/search.html
"""

from __future__ import annotations

import pytest

from bench import station
from bench.reads import percentile
from bench.station import Options, Sample, Throughput


def _throughput(backlogs: list[int], cpu: dict[str, float], stored_per_s: float) -> Throughput:
    samples = tuple(Sample(float(at), backlog, 0.0) for at, backlog in enumerate(backlogs))
    return Throughput(
        devices=25,
        window_s=float(len(backlogs) - 1),
        offered_per_s=stored_per_s,
        stored_per_s=stored_per_s,
        uploaded_per_s=stored_per_s,
        observations_per_s=2 * stored_per_s,
        samples=samples,
        slope_per_s=station.slope([(s.at, float(s.backlog)) for s in samples]),
        drain_s=0.0,
        lost=0,
        review=0,
        dropped=0,
        cpu=dict.fromkeys(("station", "server", "dbus-daemon", "simulator", "iowait"), 0.1)
        | {"machine": 0.5}
        | cpu,
        cores=2,
        workers=2,
    )


def test_slope_is_the_least_squares_growth_per_second() -> None:
    assert station.slope([(0, 1), (1, 3), (2, 5)]) == pytest.approx(2.0)
    assert station.slope([(0, 4), (1, 0), (2, 4), (3, 0)]) == pytest.approx(-0.8)
    assert station.slope([(5, 7)]) == 0.0


def test_a_growing_backlog_misses_the_target_and_names_the_saturated_resource() -> None:
    steady = _throughput([3, 0, 5, 1, 4, 0, 2], {}, 21.0)
    assert steady.sustained and steady.limit() == ""
    growing = [0, 10, 20, 30, 40, 50, 60]
    assert "station CPU" in _throughput(growing, {"station": 0.97}, 21.0).limit()
    assert "machine CPU" in _throughput(growing, {"machine": 0.95}, 21.0).limit()
    assert "server CPU" in _throughput(growing, {"server": 1.8}, 21.0).limit()
    assert "round trips" in _throughput(growing, {"server": 1.2}, 21.0).limit()
    result = station.Result("sqlite", 1, 0.5, 0.5, None, _throughput(growing, {}, 21.0))
    assert result.failed
    assert "slope +10.000 /s: MISSED" in station.table(result)


def test_a_tiny_run_produces_every_figure() -> None:
    options = Options(
        samples=10,
        warm_up=2,
        oximeters=2,
        duration_s=10,
        warm_up_s=2,
        glucose_records=20,
        glucose_sync_s=4,  # two or three syncs of the meter inside the run
        workers=1,
    )
    result = station.run("sqlite", options, lambda _: None)

    latency = result.latency
    assert latency is not None and latency.missing == 0
    assert len(latency.readable) == len(latency.received) == options.samples
    p50 = {
        name: percentile(sorted(values), 50)
        for name, values in (
            ("received", latency.received),
            ("stored", latency.stored),
            ("uploaded", latency.uploaded),
            ("readable", latency.readable),
        )
    }
    # In the order of events: received, committed, uploaded (and readable about then).
    assert 0 < p50["received"] <= p50["stored"] <= p50["uploaded"] < 10, p50
    assert p50["stored"] < p50["readable"] < 10, p50
    assert latency.poll_round_trip and latency.p99_ms >= p50["readable"] * 1000

    throughput = result.throughput
    assert throughput is not None
    assert throughput.devices == options.oximeters + 5
    # 2 oximeters + belt at 1 Hz, cuff and thermometer every 10 s, scale every 30 s.
    assert throughput.offered_per_s == pytest.approx(3 + 0.2 + 1 / 30)
    assert throughput.stored_per_s >= 0.8 * throughput.offered_per_s
    assert throughput.uploaded_per_s >= 0.8 * throughput.offered_per_s
    assert throughput.observations_per_s > throughput.uploaded_per_s  # SpO2 and pulse rate
    assert (throughput.lost, throughput.review, throughput.dropped) == (0, 0, 0)
    assert len(throughput.samples) == options.duration_s + 1
    assert throughput.cpu["station"] > 0 and throughput.cpu["server"] > 0
    # A glucose sync caught by a sample is a short burst, not growth (the verdict is the
    # benchmark's, at full size; here the window is too short for it).
    assert max(s.backlog for s in throughput.samples) < 50 and throughput.slope_per_s < 2.0

    printed = station.table(result)
    assert "target p99 ≤ 500 ms" in printed and "backlog start / middle / end" in printed
