"""execution.mode: rtc: its config keys, the delay estimate, and the guidance target it builds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from internvla_ros.runtime.errors import RuntimeConfigError
from internvla_ros.runtime.execution import RtcMode, execution_mode
from internvla_ros.runtime.observation import Observation

from .harness import ACTION_DIM, CHUNK, MS, SimLoop, SimResult, make_config, make_runtime

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
    # 7 steps executed, more than s = 6: the mask ends with the shifted chunk, at 50 - 7
    assert (request.delay, request.horizon, request.beta, request.schedule) == (4, 7, 8.0, "exp")
    auto = execution_mode(make_config(execution__mode="rtc"))  # s = the inference period: 30 Hz / 5 Hz
    assert isinstance(auto, RtcMode)
    req = auto.request(previous, 0, 0)
    assert req is not None and req.horizon == 6


def test_a_slow_inference_guides_only_towards_what_is_left_of_the_previous_chunk() -> None:
    """An inference slower than its period shifts the previous chunk by more than s: its padded rows must get
    no weight, and d must stay inside what is left; a chunk that has ended guides nothing."""
    from internvla_ros.model.rtc import prefix_weights

    mode = execution_mode(make_config(execution__mode="rtc"))  # s = 6
    assert isinstance(mode, RtcMode)
    for _ in range(5):
        mode.record_latency(40 * STEP_NS)  # d = 40 steps
    previous = np.ones((CHUNK, 2), np.float32)
    request = mode.request(previous, previous_origin_ns=0, obs_stamp_ns=30 * STEP_NS)  # 30 steps executed
    assert request is not None and (request.horizon, request.delay) == (30, CHUNK - 30)
    weights = prefix_weights(request.delay, request.horizon, CHUNK, request.schedule)
    assert weights[: CHUNK - 30].min() > 0 and not weights[CHUNK - 30:].any()
    assert request.target[: CHUNK - 30].all() and not request.target[CHUNK - 30:].any()
    assert mode.request(previous, previous_origin_ns=0, obs_stamp_ns=CHUNK * STEP_NS) is None


ARM = slice(0, 2)  # shoulder, elbow: delta joints on the trajectory controller
SIGMA = 0.3  # spread of the toy policy's chunks (normalised = joint units with std 1 stats)


def toy_flow_policy(seed: int):
    """A real flow-matching sampler (10 Euler steps) of chunks ~ N(ramp, SIGMA^2) that honours the RTC request.

    Its exact velocity is linear in x_t, so the guidance runs the same autograd VJP as the model's."""
    import torch

    from internvla_ros.model.pipeline import euler
    from internvla_ros.model.rtc import RtcGuidance, autograd_guidance, guided_velocity

    mean = torch.zeros(1, CHUNK, ACTION_DIM)
    mean[0, :, ARM] = 0.005 * torch.arange(CHUNK, dtype=torch.float32)[:, None]  # a steady motion
    mean[0, :, 3] = 0.2  # belt speed
    generator = torch.Generator().manual_seed(seed)

    def velocity(x_t: torch.Tensor, time: torch.Tensor) -> torch.Tensor:
        t = time.reshape(-1, 1, 1)
        centred = x_t - (1 - t) * mean
        var = t * t + (1 - t) ** 2 * SIGMA**2
        return t / var * centred - (mean + (1 - t) * SIGMA**2 / var * centred)

    def policy(observation: Observation) -> np.ndarray:
        noise = torch.randn(1, CHUNK, ACTION_DIM, generator=generator)
        rtc = observation.rtc
        if rtc is None:
            return euler(noise, 10, velocity)[0].numpy()
        guidance = RtcGuidance.build(rtc.target, rtc.delay, rtc.horizon, rtc.beta, rtc.schedule)
        return euler(noise, 10, guided_velocity(velocity, autograd_guidance(velocity), guidance))[0].numpy()

    return policy


def switch_jumps(result: SimResult) -> list[float]:
    """At each adopted chunk's start, how far its arm targets lie from where the previous chunk was then."""
    jumps = []
    previous = None
    for observation, chunk in zip(result.observations, result.chunk_results, strict=False):
        if not chunk.accepted or chunk.positions is None:
            continue
        if previous is not None:
            old_stamp, old_positions = previous
            old_index = round((observation.stamp_ns + chunk.start_index * STEP_NS - old_stamp) / STEP_NS)
            jumps.append(float(np.abs(chunk.positions[chunk.start_index, ARM] - old_positions[old_index, ARM]).max()))
        previous = (observation.stamp_ns, chunk.positions)
    return jumps


@pytest.mark.parametrize("seed", [0, 1])
def test_rtc_keeps_the_motion_continuous_at_chunk_switches(tmp_path: Path, seed: int) -> None:
    jumps = {}
    for mode in ("delay_compensated", "rtc"):
        runtime = make_runtime(tmp_path, execution__mode=mode, execution__blend_steps=0, rtc__beta=10.0)
        loop = SimLoop(runtime, toy_flow_policy(seed), latency_ns=100 * MS)
        loop.start()
        result = loop.run_until(4_000 * MS)
        assert sum(c.accepted for c in result.chunk_results) >= 15
        jumps[mode] = switch_jumps(result)
        if mode == "rtc":
            assert sum(o.rtc is not None for o in result.observations) >= 14
    plain, rtc = np.median(jumps["delay_compensated"]), np.median(jumps["rtc"])
    assert plain > SIGMA * 0.5, jumps  # chunks from different noise disagree
    assert rtc < 0.2 * plain, (plain, rtc)


def test_the_rtc_request_crosses_the_wire() -> None:
    from internvla_ros.runtime.observation import RtcRequest
    from internvla_ros.runtime.wire import decode_observation, encode_observation, frame_from_bytes, frame_to_bytes

    target = np.random.default_rng(0).normal(size=(CHUNK, ACTION_DIM)).astype(np.float32)
    base = Observation(stamp_ns=5, request_ns=6, cameras={}, state=np.zeros(4), normalized_state=np.zeros(ACTION_DIM),
                       instruction="go", recompute_foresight=False, decode_preview=False)
    for rtc in (None, RtcRequest(target=target, delay=3, horizon=6, beta=5.0, schedule="linear")):
        sent = Observation(**{**vars(base), "rtc": rtc})
        got = decode_observation(*frame_from_bytes(frame_to_bytes(*encode_observation(sent))))
        if rtc is None:
            assert got.rtc is None
        else:
            assert got.rtc is not None and (got.rtc.delay, got.rtc.horizon, got.rtc.beta, got.rtc.schedule) == (
                3, 6, 5.0, "linear")
            np.testing.assert_array_equal(got.rtc.target, target)
