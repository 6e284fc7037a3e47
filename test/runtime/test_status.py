"""Rate and latency meters of the runtime status."""

from __future__ import annotations

import pytest

from internvla_ros.runtime.status import RateMeter

MS = 1_000_000


def test_rate_meter_measures_and_decays_when_the_stream_stops() -> None:
    meter = RateMeter()
    for k in range(20):
        meter.add(k * 100 * MS)  # 10 Hz
    assert meter.rate_hz() == pytest.approx(10.0)
    assert meter.rate_hz(now_ns=2_050 * MS) == pytest.approx(10.0)  # one event late: within jitter
    assert meter.rate_hz(now_ns=10_000 * MS) == pytest.approx(19 / 10.0)  # silent for 8 s
    assert meter.rate_hz(now_ns=100_000 * MS) < 0.2
