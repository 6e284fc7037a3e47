"""execution.mode: rtc: its config keys, the delay estimate, and the guidance target it builds."""

from __future__ import annotations

import numpy as np
import pytest

from internvla_ros.runtime.errors import RuntimeConfigError
from internvla_ros.runtime.execution import RtcMode, execution_mode

from .harness import CHUNK, MS, make_config

STEP_NS = 33_333_333  # the harness's 30 Hz chunk step


def test_rtc_keys_default_and_validate() -> None:
    config = make_config(execution__mode="rtc")
    assert (config.execution.rtc.beta, config.execution.rtc.schedule, config.execution.rtc.execution_horizon) == (
        5.0, "exp", 0)
    tuned = make_config(execution__mode="rtc", rtc__beta=10.0, rtc__schedule="linear", rtc__execution_horizon=8)
    assert tuned.execution.rtc.schedule == "linear" and tuned.execution.rtc.execution_horizon == 8
    with pytest.raises(RuntimeConfigError, match=r"rtc\.schedule: 'cosine' is not allowed"):
        make_config(execution__mode="rtc", rtc__schedule="cosine")
    with pytest.raises(RuntimeConfigError, match=r"rtc\.beta: must be a float .*write 5\.0"):
        make_config(execution__mode="rtc", rtc__beta=5)
    with pytest.raises(RuntimeConfigError, match=r"rtc\.execution_horizon: 50 is out of range, allowed \[0, 49\]"):
        make_config(execution__mode="rtc", rtc__execution_horizon=CHUNK)


def test_rtc_mode_places_chunks_delay_compensated() -> None:
    mode = execution_mode(make_config(execution__mode="rtc"))
    assert isinstance(mode, RtcMode) and mode.overruns_apply
    positions = np.zeros((CHUNK, 4))
    plan = mode.plan(positions, obs_stamp_ns=1_000, ready_ns=1_000 + 250 * MS)
    assert plan is not None and plan.start_index == 8 and plan.origin_ns == 1_000


def test_delay_is_a_high_quantile_of_recent_latencies() -> None:
    mode = execution_mode(make_config(execution__mode="rtc"))
    assert isinstance(mode, RtcMode) and mode.delay_steps == 0
    for _ in range(19):
        mode.record_latency(100 * MS)  # 3 steps at 30 Hz
    mode.record_latency(2_000 * MS)  # one outlier does not move the 90th percentile
    assert mode.delay_steps == 3
    for _ in range(5):
        mode.record_latency(200 * MS)
    assert mode.delay_steps == 6  # slower inferences raise it


def test_target_is_the_previous_chunk_from_the_new_observation_on() -> None:
    mode = execution_mode(make_config(execution__mode="rtc", rtc__execution_horizon=6, rtc__beta=8.0))
    assert isinstance(mode, RtcMode)
    previous = np.arange(CHUNK * 2, dtype=np.float32).reshape(CHUNK, 2)
    assert mode.request(None, 0, 0) is None
    mode.record_latency(4 * STEP_NS)
    request = mode.request(previous, previous_origin_ns=10 * STEP_NS, obs_stamp_ns=17 * STEP_NS)
    assert request is not None
    np.testing.assert_array_equal(request.target[: CHUNK - 7], previous[7:])
    assert not request.target[CHUNK - 7:].any()
    assert (request.delay, request.horizon, request.beta, request.schedule) == (4, 6, 8.0, "exp")
    auto = execution_mode(make_config(execution__mode="rtc"))  # s = the inference period: 30 Hz / 5 Hz
    assert isinstance(auto, RtcMode)
    req = auto.request(previous, 0, 0)
    assert req is not None and req.horizon == 6
