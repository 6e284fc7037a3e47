"""PolicyRuntime under a simulated clock: rates, overruns, delay compensation, hand-overs, safety paths."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from internvla_ros.runtime.commands import JointTrajectoryCommand
from internvla_ros.runtime.errors import PolicyRuntimeError
from internvla_ros.runtime.observation import Observation
from internvla_ros.runtime.safety import MotionLimiter
from internvla_ros.runtime.scheduler import PolicyRuntime
from internvla_ros.runtime.status import RuntimeState
from internvla_ros.runtime.trajectory import TimedPath

from .harness import ACTION_DIM, CAMERAS, CHUNK, JOINTS, MS, SimLoop, make_runtime, padded
from .motion_checks import assert_commands_within, assert_trajectory_within, forward_values

STEP_NS = 33_333_333  # round(1e9 / 30): the chunk step period


FAST_ARM = {
    f"joints__limits__{j}__{k}": v
    for j in ("shoulder", "elbow")
    for k, v in (("max_velocity", 50.0), ("max_acceleration", 5000.0), ("max_jump", 0.05))
}


def hold_policy(observation: Observation) -> np.ndarray:
    """Zero deltas; gripper open (0), belt stopped (0): stays where the robot is."""
    return np.zeros((CHUNK, ACTION_DIM))


def offset_policy(offset: float) -> callable:
    """Deltas of +offset on the arm joints for the whole chunk."""

    def policy(observation: Observation) -> np.ndarray:
        actions = np.zeros((CHUNK, 4))
        actions[:, :2] = offset
        return padded(actions)

    return policy


def executed_path(trajectory: JointTrajectoryCommand) -> TimedPath:
    """The trajectory as a joint_trajectory_controller executes it (cubic with velocities, else linear)."""
    points = trajectory.points
    times = np.array([trajectory.stamp_ns + p.time_from_start_ns for p in points], dtype=np.int64)
    velocities = np.array([p.velocities for p in points]) if points[0].velocities else None
    return TimedPath(times, np.array([p.positions for p in points]), velocities)


def assert_executed_within_limits(trajectory: JointTrajectoryCommand, limiter: MotionLimiter,
                                  columns: list[int]) -> None:
    """Sampled every millisecond, the executed setpoint never leaves the position or velocity limits."""
    path = executed_path(trajectory)
    for now in range(int(path.stamps_ns[0]), int(path.stamps_ns[-1]), MS):
        positions, velocities = path.sample(now)
        assert (positions >= limiter.low[columns] - 1e-9).all() and (positions <= limiter.high[columns] + 1e-9).all()
        assert (np.abs(velocities) <= limiter.max_velocity[columns] * (1 + 1e-9) + 1e-9).all(), (now, velocities)


def feed_all(runtime: PolicyRuntime, stamp_ns: int, positions: tuple[float, ...] = (0.0, 0.0, 0.08, 0.0)) -> None:
    names = list(JOINTS)
    runtime.update_joint_state(stamp_ns, names, [*positions[:3], 0.0], [0.0, 0.0, 0.0, positions[3]])
    for camera in CAMERAS:
        runtime.update_camera(camera, stamp_ns, np.zeros(1))


# Rates ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("control_hz", "inference_hz", "foresight_hz", "preview_hz"),
    [(50.0, 5.0, 5.0, 0.0), (100.0, 10.0, 5.0, 2.0), (30.0, 2.0, 1.0, 1.0), (60.0, 4.0, 4.0, 4.0)],
)
def test_rates_are_held_on_average_with_bounded_jitter(
    tmp_path: Path, control_hz: float, inference_hz: float, foresight_hz: float, preview_hz: float
) -> None:
    runtime = make_runtime(
        tmp_path,
        rates__control_rate_hz=control_hz,
        rates__inference_rate_hz=inference_hz,
        rates__foresight_rate_hz=foresight_hz,
        rates__foresight_preview_rate_hz=preview_hz,
    )
    # The caller wakes every 0.5-1.5 ms (a jittery executor); latency well under the inference period.
    loop = SimLoop(runtime, hold_policy, latency_ns=50 * MS, step_ns=500_000, step_jitter_ns=MS, seed=7)
    loop.start()
    result = loop.run_until(10_000 * MS)
    stamps = np.array([o.stamp_ns for o in result.outputs])
    intervals = np.diff(stamps)
    control_ns = 1e9 / control_hz
    assert intervals.mean() == pytest.approx(control_ns, rel=2e-3)
    assert np.abs(intervals - control_ns).max() <= 1.5 * MS  # at most one caller wake-up late
    requests = np.array([o.request_ns for o in result.observations])
    assert np.diff(requests).mean() == pytest.approx(1e9 / inference_hz, rel=2e-3)
    assert np.abs(np.diff(requests) - 1e9 / inference_hz).max() <= 1.5 * MS
    recomputes = sum(o.recompute_foresight for o in result.observations)
    previews = sum(o.decode_preview for o in result.observations)
    assert recomputes == pytest.approx(10 * foresight_hz, abs=1)
    assert previews == pytest.approx(10 * preview_hz, abs=1)
    status = runtime.status(loop.now_ns)
    assert status.control_rate_hz == pytest.approx(control_hz, rel=1e-2)
    assert status.inference_rate_hz == pytest.approx(inference_hz, rel=1e-2)
    assert status.foresight_rate_hz == pytest.approx(foresight_hz, rel=1e-2)
    assert status.preview_rate_hz == pytest.approx(preview_hz, rel=1e-2)
    assert status.overruns == 0 and status.missed_control_ticks == 0


def test_first_observation_recomputes_foresight_and_later_ones_follow_the_rate(tmp_path: Path) -> None:
    runtime = make_runtime(tmp_path, rates__foresight_rate_hz=2.5)  # every other chunk at 5 Hz
    loop = SimLoop(runtime, hold_policy, latency_ns=50 * MS)
    loop.start()
    result = loop.run_until(2_000 * MS)
    assert [o.recompute_foresight for o in result.observations][:6] == [True, False] * 3


def test_overrun_is_detected_counted_and_never_queued(tmp_path: Path) -> None:
    runtime = make_runtime(tmp_path)  # 5 Hz: a 200 ms period
    loop = SimLoop(runtime, hold_policy, latency_ns=300 * MS)
    loop.start()
    in_flight_max = 0
    result = None
    for end in range(0, 4_000 * MS + 1, 10 * MS):
        result = loop.run_until(end, result)
        in_flight_max = max(in_flight_max, len(loop.pending))
    assert in_flight_max == 1
    requests = [o.request_ns for o in result.observations]
    # Each 300 ms inference misses one 200 ms slot: requests land on every other grid point.
    assert np.diff(requests).tolist() == [400 * MS] * (len(requests) - 1)
    status = runtime.status(loop.now_ns)
    assert status.overruns == len(result.chunk_results) >= 9  # the one in flight has not overrun yet
    assert status.inference_latency_max_ns == 300 * MS


def test_lost_inference_times_out_and_requests_again(tmp_path: Path) -> None:
    runtime = make_runtime(tmp_path)
    loop = SimLoop(runtime, hold_policy, latency_ns=10_000 * MS)  # never back within the run
    loop.start()
    result = loop.run_until(2_000 * MS)
    status = runtime.status(loop.now_ns)
    assert status.inference_timeouts == 1  # after one chunk duration (50 steps = 1.67 s)
    assert len(result.observations) == 2
    assert result.observations[1].request_ns == 1_800 * MS  # the next inference-grid slot
    assert "not back" in status.last_error


def test_missed_control_ticks_are_counted_and_not_replayed(tmp_path: Path) -> None:
    runtime = make_runtime(tmp_path)
    feed_all(runtime, 0)
    runtime.start(0)
    assert runtime.tick(0) is not None
    assert runtime.tick(10 * MS) is None  # within the period: nothing
    feed_all(runtime, 90 * MS)
    assert runtime.tick(90 * MS) is not None  # serves the 80 ms slot; 20, 40, 60 ms were missed
    assert runtime.tick(95 * MS) is None  # no burst to catch up
    assert runtime.tick(100 * MS) is not None
    assert runtime.status(100 * MS).missed_control_ticks == 3


# Delay compensation ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("joint_age_ms", "latency_ms", "expected_index"),
    [
        (0, 0, 0),
        (0, 16, 0),  # 0.48 steps
        (0, 17, 1),  # 0.51 steps
        (0, 100, 3),
        (0, 250, 8),  # 7.5 steps rounds up
        (0, 400, 12),
        (0, 1_000, 30),
        (0, 1_600, 48),
        (20, 280, 9),  # the joint state was 20 ms old at the request: 300 ms since the observation
        (30, 1_600, 49),
    ],
)
def test_start_index_matches_the_time_since_the_observation(
    tmp_path: Path, joint_age_ms: int, latency_ms: int, expected_index: int
) -> None:
    runtime = make_runtime(tmp_path, safety__joint_state_max_age_s=2.0, safety__camera_max_age_s=2.0)
    request_ns = 1_000 * MS
    feed_all(runtime, 0)
    runtime.start(0)
    feed_all(runtime, request_ns - joint_age_ms * MS)
    observation = runtime.poll_observation(request_ns)
    assert observation is not None and observation.stamp_ns == request_ns - joint_age_ms * MS
    result = runtime.submit_chunk(hold_policy(observation), observation.stamp_ns, request_ns + latency_ms * MS)
    assert result.accepted, result.reason
    assert result.start_index == expected_index
    assert runtime.status(request_ns).last_start_index == expected_index


def test_chunk_entirely_in_the_past_is_dropped(tmp_path: Path) -> None:
    runtime = make_runtime(tmp_path, safety__joint_state_max_age_s=5.0, safety__camera_max_age_s=5.0)
    feed_all(runtime, 0)
    runtime.start(0)
    observation = runtime.poll_observation(0)
    result = runtime.submit_chunk(hold_policy(observation), observation.stamp_ns, 1_650 * MS)  # 49.5 steps
    assert not result.accepted and result.reason == "arrived_in_past"
    assert runtime.status(1_650 * MS).dropped_chunks == {"arrived_in_past": 1}


def test_execution_follows_the_chunk_index_for_now(tmp_path: Path) -> None:
    """With delay compensation the motion converges onto the chunk's value at (t - obs_stamp) / step, after
    repeating the running motion for the trajectory lead."""
    runtime = make_runtime(
        tmp_path,
        execution__blend_steps=0,
        rates__control_rate_hz=100.0,
        **{**FAST_ARM, "joints__limits__shoulder__max_jump": 1.0},
    )
    ramp = np.zeros((CHUNK, 4))
    ramp[:, 0] = 0.01 * np.arange(CHUNK)  # 0.3 rad/s at 30 Hz: under the velocity limit
    loop = SimLoop(runtime, lambda obs: padded(ramp), latency_ns=300 * MS)
    loop.start()
    result = loop.run_until(480 * MS)
    first = result.chunk_results[0]
    assert first.accepted and first.start_index == 9
    sent = next(o for o in result.outputs if o.trajectories)
    trajectory = sent.trajectories[0]
    assert sent.stamp_ns >= 300 * MS
    lead_ns = runtime.config.safety.trajectory_lead_ns
    end_ns = (CHUNK - 1) * STEP_NS
    checked = 0
    for point in trajectory.points:
        t = sent.stamp_ns + point.time_from_start_ns
        if t <= sent.stamp_ns + lead_ns:
            assert point.positions[0] == 0.0  # the lead repeats the hold the controller is executing
        elif sent.stamp_ns + lead_ns + 200 * MS <= t <= end_ns:
            assert point.positions[0] == pytest.approx(0.01 * t / STEP_NS, abs=1e-3)
            checked += 1
    assert checked > 50


def test_uncompensated_mode_starts_at_index_zero_on_arrival(tmp_path: Path) -> None:
    runtime = make_runtime(tmp_path, execution__mode="uncompensated", execution__blend_steps=0)
    ramp = np.zeros((CHUNK, 4))
    ramp[:, 0] = 0.01 * np.arange(CHUNK)
    loop = SimLoop(runtime, lambda obs: padded(ramp), latency_ns=300 * MS)
    loop.start()
    result = loop.run_until(360 * MS)
    assert result.chunk_results[0].start_index == 0
    at_arrival = next(o for o in result.outputs if o.stamp_ns == 300 * MS)
    assert at_arrival.positions[0] == pytest.approx(0.0, abs=1e-9)


def test_reference_mode_executes_n_steps_then_replans(tmp_path: Path) -> None:
    runtime = make_runtime(tmp_path, execution__mode="reference", execution__reference_steps=10)
    loop = SimLoop(runtime, hold_policy, latency_ns=100 * MS)
    loop.start()
    result = loop.run_until(2_000 * MS)
    requests = [o.request_ns for o in result.observations]
    # Request, 100 ms inference, then steps 0..9 (9 periods = 300 ms), then the next request.
    expected_gap = 100 * MS + 9 * STEP_NS
    assert np.allclose(np.diff(requests), expected_gap, atol=MS)
    assert all(r.start_index == 0 for r in result.chunk_results)
    assert runtime.status(loop.now_ns).overruns == 0


# Chunk bookkeeping -------------------------------------------------------------------------------


def test_older_and_unknown_chunks_are_dropped(tmp_path: Path) -> None:
    runtime = make_runtime(tmp_path)
    feed_all(runtime, 0)
    runtime.start(0)
    first = runtime.poll_observation(0)
    runtime.submit_chunk(hold_policy(first), first.stamp_ns, 300 * MS)  # overrun: next slot at 400 ms
    feed_all(runtime, 400 * MS)
    second = runtime.poll_observation(400 * MS)
    assert runtime.submit_chunk(hold_policy(second), second.stamp_ns, 450 * MS).accepted
    again = runtime.submit_chunk(hold_policy(first), first.stamp_ns, 460 * MS)
    assert again.reason == "not_newer_than_active"
    assert runtime.submit_chunk(hold_policy(first), 123, 470 * MS).reason == "unknown_observation"
    assert runtime.status(470 * MS).dropped_chunks == {"not_newer_than_active": 1, "unknown_observation": 1}


def test_start_needs_every_input_fresh(tmp_path: Path) -> None:
    runtime = make_runtime(tmp_path)
    assert runtime.tick(0) is None  # idle: nothing commanded
    with pytest.raises(PolicyRuntimeError, match="no joint state"):
        runtime.start(0)
    runtime.update_joint_state(0, list(JOINTS), [0.0] * 4, [0.0] * 4)
    runtime.update_camera("head", 0, np.zeros(1))
    with pytest.raises(PolicyRuntimeError, match="waiting for fresh camera:wrist"):
        runtime.start(0)
    runtime.update_camera("wrist", 0, np.zeros(1))
    with pytest.raises(PolicyRuntimeError, match="waiting for fresh camera:head, camera:wrist, joint_state"):
        runtime.start(300 * MS)  # everything older than its max age
    runtime.start(50 * MS)
    assert runtime.state is RuntimeState.RUNNING


def test_bad_joint_state_is_counted_and_reported(tmp_path: Path) -> None:
    runtime = make_runtime(tmp_path)
    assert not runtime.update_joint_state(0, ["shoulder", "elbow"], [0.0, 0.0])
    assert not runtime.update_camera("tail", 0, np.zeros(1))
    status = runtime.status(0)
    assert status.rejected == {"joint_state": 1, "unknown_camera": 1}
    assert "tail" in status.last_error


def test_frame_history_supplies_the_frame_half_a_second_earlier(tmp_path: Path) -> None:
    runtime = make_runtime(tmp_path)
    loop = SimLoop(runtime, hold_policy, scene=lambda t: np.array([t]))
    loop.start()
    result = loop.run_until(2_000 * MS)
    history_ns = 15 * STEP_NS
    for observation in result.observations[4:]:
        for frames in observation.cameras.values():
            assert frames.current[0] == frames.current_stamp_ns
            assert frames.history[0] == frames.history_stamp_ns
            age = frames.current_stamp_ns - frames.history_stamp_ns
            assert history_ns <= age < history_ns + loop.camera_period_ns
    slots = {name: frames.slot for name, frames in result.observations[-1].cameras.items()}
    assert slots == {"head": 0, "wrist": 1}


def test_history_reuse_picks_an_already_sent_frame_near_the_exact_one(tmp_path: Path) -> None:
    """With history reuse, the older frame is one the policy has already seen as a current frame (so its
    encoding is cached), never further than the reuse window from the exact t-15 frame."""
    reuse_steps = 3
    runtime = make_runtime(tmp_path, execution__history_reuse_steps=reuse_steps)
    loop = SimLoop(runtime, hold_policy, scene=lambda t: np.array([t]))
    loop.start()
    result = loop.run_until(3_000 * MS)
    sent = {name: set() for name in CAMERAS}
    reused = 0
    history_ns = 15 * STEP_NS
    for index, observation in enumerate(result.observations):
        for name, frames in observation.cameras.items():
            if index >= 4:
                age = frames.current_stamp_ns - frames.history_stamp_ns
                assert abs(age - history_ns) <= reuse_steps * STEP_NS + loop.camera_period_ns
                reused += frames.history_stamp_ns in sent[name]
            sent[name].add(frames.current_stamp_ns)
    assert reused >= 0.8 * (len(result.observations) - 4) * len(CAMERAS)


# Hand-overs --------------------------------------------------------------------------------------


def alternating_policy(offset: float) -> callable:
    """Each chunk targets +offset or -offset around zero: consecutive chunks disagree by 2 * offset."""
    count = {"n": 0}

    def policy(observation: Observation) -> np.ndarray:
        count["n"] += 1
        sign = 1.0 if count["n"] % 2 else -1.0
        actions = np.zeros((CHUNK, 4))
        actions[:, :2] = sign * offset - observation.state[:2]  # deltas to an absolute target
        return padded(actions)

    return policy


@pytest.mark.parametrize("blend_steps", [8, 0])
def test_hand_over_between_chunks_stays_under_the_max_jump(tmp_path: Path, blend_steps: int) -> None:
    runtime = make_runtime(tmp_path, execution__blend_steps=blend_steps, **FAST_ARM)
    loop = SimLoop(runtime, alternating_policy(0.1), latency_ns=100 * MS)
    loop.start()
    result = loop.run_until(3_000 * MS)
    positions = np.array([o.positions for o in result.outputs])
    assert np.abs(np.diff(positions[:, :2], axis=0)).max() <= 0.05 + 1e-12  # the safety net always holds
    assert runtime.status(loop.now_ns).chunks_accepted >= 10
    limiter = runtime.limiter
    for trajectory in (t for o in result.outputs for t in o.trajectories):
        assert_trajectory_within(trajectory, limiter.low[:2], limiter.high[:2], limiter.max_velocity[:2],
                                 limiter.max_acceleration[:2])


# Safety paths through the runtime ----------------------------------------------------------------


@pytest.mark.parametrize(("camera", "source"), [("wrist", "camera:wrist"), ("head", "camera:head")])
def assert_stopped_under_control(runtime: PolicyRuntime, held: list) -> None:
    """Every command of a stop stays within the limits, trajectories end at rest and the motion comes to
    rest (the belt at speed 0)."""
    limiter = runtime.limiter
    forward = [2, 3]
    assert_commands_within(forward_values(held, forward), limiter.period_s, limiter.low[forward],
                           limiter.high[forward], limiter.max_velocity[forward], limiter.max_acceleration[forward])
    for trajectory in (t for o in held for t in o.trajectories):
        assert_trajectory_within(trajectory, limiter.low[:2], limiter.high[:2], limiter.max_velocity[:2],
                                 limiter.max_acceleration[:2])
    assert not any(held[-1].velocities) and abs(held[-1].positions[3]) <= 1e-9
    assert held[-1].positions == held[-2].positions


@pytest.mark.parametrize(("camera", "source"), [("wrist", "camera:wrist"), ("head", "camera:head")])
def test_stale_camera_holds_and_is_counted(tmp_path: Path, camera: str, source: str) -> None:
    runtime = make_runtime(tmp_path)
    loop = SimLoop(runtime, offset_policy(0.3), latency_ns=100 * MS, camera_outage={camera: (1_000 * MS, 1_600 * MS)})
    loop.start()
    result = loop.run_until(2_500 * MS)
    held = [o for o in result.outputs if o.state == "holding"]
    assert held, "never held"
    assert held[0].stamp_ns == pytest.approx(1_000 * MS + 200 * MS, abs=40 * MS)  # after the 0.2 s max age
    assert_stopped_under_control(runtime, held)
    status = runtime.status(loop.now_ns)
    assert status.stale == {source: 1}
    assert status.state is RuntimeState.RUNNING  # recovered once frames came back
    assert any(r.accepted and r.latency_ns for r in result.chunk_results if r.start_index >= 0)
    assert result.outputs[-1].state == "running"


def test_stale_joint_state_holds_and_is_counted(tmp_path: Path) -> None:
    runtime = make_runtime(tmp_path)
    loop = SimLoop(runtime, offset_policy(0.3), latency_ns=100 * MS, joint_outage=(1_000 * MS, 1_500 * MS))
    loop.start()
    result = loop.run_until(2_000 * MS)
    states = [o.state for o in result.outputs]
    assert "holding" in states and states[-1] == "running"
    assert runtime.status(loop.now_ns).stale == {"joint_state": 1}
    assert not any(o.request_ns and 1_100 * MS < o.request_ns < 1_500 * MS for o in result.observations)


def test_estop_latches_until_reset(tmp_path: Path) -> None:
    runtime = make_runtime(tmp_path)
    loop = SimLoop(runtime, offset_policy(0.3), latency_ns=100 * MS)
    loop.start()
    result = loop.run_until(450 * MS)  # the 400 ms request is in flight
    runtime.estop("operator button")
    result = loop.run_until(700 * MS, result)
    runtime.resume()  # does not release an e-stop
    result = loop.run_until(1_500 * MS, result)
    stopped = [o for o in result.outputs if o.stamp_ns > 450 * MS]
    assert {o.state for o in stopped} == {"estopped"}
    assert_stopped_under_control(runtime, stopped)
    assert runtime.status(loop.now_ns).estop_reason == "operator button"
    assert "not_running" in runtime.status(loop.now_ns).dropped_chunks  # the chunk in flight at the e-stop
    runtime.reset_estop()
    result = loop.run_until(2_500 * MS, result)
    assert result.outputs[-1].state == "running"
    assert result.outputs[-1].positions != stopped[-1].positions  # moving again


def test_pause_holds_and_resume_discards_chunks_from_before(tmp_path: Path) -> None:
    runtime = make_runtime(tmp_path)
    # A slow inference: the 600 ms request comes back once the resumed arm is measured still again.
    loop = SimLoop(runtime, offset_policy(0.3), latency_ns=500 * MS)
    loop.start()
    result = loop.run_until(610 * MS)  # the 600 ms request is in flight
    runtime.pause()
    result = loop.run_until(700 * MS, result)
    runtime.resume()
    result = loop.run_until(1_500 * MS, result)
    paused = [o for o in result.outputs if o.state == "paused"]
    assert paused  # 90 ms: still within the trajectory lead, so the arm is not yet braking
    status = runtime.status(loop.now_ns)
    assert status.dropped_chunks == {"predates_hold": 1}  # computed from the 600 ms observation
    assert result.outputs[-1].state == "running"
    assert not [o for o in result.observations if 610 * MS < o.request_ns < 700 * MS]


def test_dry_run_computes_everything_and_commands_nothing(tmp_path: Path) -> None:
    outputs = {}
    for dry_run in (True, False):
        runtime = make_runtime(tmp_path, safety__dry_run=dry_run)
        loop = SimLoop(runtime, offset_policy(0.2), latency_ns=100 * MS)
        loop.start()
        outputs[dry_run] = loop.run_until(1_000 * MS).outputs
    assert all(not o.forward and not o.trajectories and o.dry_run for o in outputs[True])
    assert any(o.trajectories for o in outputs[False]) and all(o.forward for o in outputs[False])
    assert [o.positions for o in outputs[True]] == [o.positions for o in outputs[False]]
    assert max(o.positions[0] for o in outputs[True]) > 0.2  # it did compute motion


# Output shapes -----------------------------------------------------------------------------------


def test_trajectories_start_now_increase_and_end_at_rest(tmp_path: Path) -> None:
    runtime = make_runtime(tmp_path)
    limiter = runtime.limiter
    ramp = np.zeros((CHUNK, 4))
    ramp[:, 0] = np.linspace(0.0, 3.0, CHUNK)  # asks for more than the limits allow
    ramp[:, 1] = -0.02 * np.arange(CHUNK)
    loop = SimLoop(runtime, lambda obs: padded(ramp), latency_ns=120 * MS)
    loop.start()
    result = loop.run_until(1_000 * MS)
    with_trajectory = [o for o in result.outputs if o.trajectories]
    assert len(with_trajectory) >= 3
    lead_ns = runtime.config.safety.trajectory_lead_ns
    for k, output in enumerate(with_trajectory):
        (trajectory,) = output.trajectories
        assert trajectory.controller == "arm_controller" and trajectory.joint_names == ("shoulder", "elbow")
        assert trajectory.stamp_ns == output.stamp_ns
        points = trajectory.points
        # the first one's first point at the lead's end (the controller blends there from its hold), later ones now
        assert points[0].time_from_start_ns == (lead_ns if k == 0 else 0)
        assert points[0].positions == output.positions[:2]
        times = [p.time_from_start_ns for p in points]
        assert all(b > a for a, b in itertools.pairwise(times))
        assert points[-1].velocities == (0.0, 0.0)  # at rest at the end
        assert_trajectory_within(trajectory, limiter.low[:2], limiter.high[:2], limiter.max_velocity[:2],
                                 limiter.max_acceleration[:2])
    assert runtime.status(loop.now_ns).clamped_trajectory.get("velocity", 0) > 0


def test_forward_commands_every_tick_in_controller_order(tmp_path: Path) -> None:
    runtime = make_runtime(tmp_path)
    actions = np.zeros((CHUNK, 4))
    actions[:, 2] = 1.0  # close the gripper
    actions[:, 3] = 0.3  # belt speed
    loop = SimLoop(runtime, lambda obs: padded(actions), latency_ns=100 * MS)
    loop.start()
    result = loop.run_until(2_000 * MS)
    for output in result.outputs:
        names = [(c.controller, c.joint_names) for c in output.forward]
        assert names == [("gripper_controller", ("gripper",)), ("belt_controller", ("belt",))]
        assert output.forward[0].values == (output.positions[2],)
    last = result.outputs[-1]
    assert last.forward[0].values == (0.0,)  # closed
    assert last.forward[1].values == pytest.approx((0.3,), abs=1e-6)


# Whatever the policy outputs ---------------------------------------------------------------------

ODD_SHAPES = st.sampled_from([(CHUNK, ACTION_DIM), (CHUNK, 4), (10, ACTION_DIM), (CHUNK, 3), (CHUNK,), (60, 32)])
ODD_VALUES = st.floats(min_value=-1e40, max_value=1e40) | st.sampled_from([np.nan, np.inf, -np.inf, 0.0])


@settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_no_policy_output_makes_an_unsafe_command(tmp_path: Path, data: st.DataObject) -> None:
    runtime = make_runtime(tmp_path)
    limiter = runtime.limiter
    chunks = [data.draw(hnp.arrays(np.float64, data.draw(ODD_SHAPES), elements=ODD_VALUES)) for _ in range(6)]
    queue = iter(chunks)
    loop = SimLoop(runtime, lambda obs: next(queue, np.zeros((CHUNK, ACTION_DIM))), latency_ns=80 * MS, step_ns=5 * MS)
    loop.start()
    result = loop.run_until(1_400 * MS)
    previous = None
    for output in result.outputs:
        positions = np.array(output.positions)
        assert np.isfinite(positions).all() and np.isfinite(output.velocities).all()
        assert (positions >= limiter.low).all() and (positions <= limiter.high).all()
        if previous is not None:
            step = np.abs(positions - previous)
            assert (step <= limiter.max_jump + 1e-12).all()
            assert (step <= limiter.max_velocity * 0.02 + 1e-9).all()
        previous = positions
        for trajectory in output.trajectories:
            columns = [JOINTS.index(name) for name in trajectory.joint_names]
            for point in trajectory.points:
                assert np.isfinite(point.positions).all() and np.isfinite(point.velocities).all()
            assert_executed_within_limits(trajectory, limiter, columns)
    for chunk_result in result.chunk_results:
        assert chunk_result.accepted or chunk_result.reason in {"shape", "non_finite", "statistics"}
    status = runtime.status(loop.now_ns)
    assert sum(status.rejected_chunks.values()) == sum(not r.accepted for r in result.chunk_results)


def test_hold_and_stop_commands_a_hold_then_idles(tmp_path: Path) -> None:
    """When no tick can follow, the trajectory controller gets the whole controlled stop at once."""
    runtime = make_runtime(tmp_path)
    loop = SimLoop(runtime, offset_policy(0.3), latency_ns=100 * MS)
    loop.start()
    outputs = loop.run_until(800 * MS).outputs
    output = runtime.hold_and_stop(loop.now_ns)
    (trajectory,) = output.trajectories
    limiter = runtime.limiter
    assert_trajectory_within(trajectory, limiter.low[:2], limiter.high[:2], limiter.max_velocity[:2],
                             limiter.max_acceleration[:2])
    forward = [2, 3]
    assert_commands_within(forward_values([*outputs[-2:], output], forward), limiter.period_s, limiter.low[forward],
                           limiter.high[forward], limiter.max_velocity[forward], limiter.max_acceleration[forward])
    assert runtime.state is RuntimeState.IDLE
    assert runtime.tick(loop.now_ns + 100 * MS) is None
    assert runtime.hold_and_stop(loop.now_ns + 100 * MS) is None


def test_no_observation_is_requested_without_an_instruction(tmp_path: Path) -> None:
    runtime = make_runtime(tmp_path)
    runtime.set_instruction("   ")
    feed_all(runtime, 0)
    runtime.start(0)
    for now in range(0, 2000 * MS, 10 * MS):
        feed_all(runtime, now)
        assert runtime.poll_observation(now) is None
        runtime.tick(now)
    runtime.set_instruction("track the parcel")
    assert runtime.poll_observation(2000 * MS) is not None


def test_consecutive_trajectories_join_without_a_step(tmp_path: Path) -> None:
    """A new trajectory starts where the running one has the joints at its send time, even when every
    chunk is wild enough to keep the limiter clamping (what an untrained model produces)."""
    runtime = make_runtime(tmp_path, rates__control_rate_hz=100.0)
    rng = np.random.default_rng(3)
    # The caller wakes off the control grid (a jittery executor), as the node does.
    loop = SimLoop(runtime, lambda obs: padded(rng.normal(0.0, 2.0, (CHUNK, 4))), latency_ns=120 * MS,
                   step_ns=500_000, step_jitter_ns=3 * MS, seed=5)
    loop.start()
    result = loop.run_until(3_000 * MS)
    sent = [(o.stamp_ns, o.trajectories[0]) for o in result.outputs if o.trajectories]
    assert len(sent) >= 8
    assert sum(runtime.status(loop.now_ns).clamped.values()) > 0
    for (_, previous), (next_stamp, current) in itertools.pairwise(sent):
        expected, _ = executed_path(previous).sample(next_stamp)
        np.testing.assert_allclose(current.points[0].positions, expected, atol=1e-6)
    for _, trajectory in sent:  # what the controller executes stays inside every limit
        assert_executed_within_limits(trajectory, runtime.limiter, [JOINTS.index(n) for n in trajectory.joint_names])


def test_switching_actuation_on_restarts_from_the_measured_joints(tmp_path: Path) -> None:
    """During a dry run the computed command moves on while the robot stands still; switching actuation
    on must start from where the robot is, not jump to where the dry run had got to."""
    runtime = make_runtime(tmp_path, safety__dry_run=True)
    policy = offset_policy(0.5)
    feed_all(runtime, 0)
    runtime.start(0)
    pending: list[tuple[int, np.ndarray, int]] = []
    outputs = []
    for now in range(0, 2_000 * MS, 5 * MS):
        feed_all(runtime, now)  # the robot stays at zero: nothing is commanded yet
        if now == 1_000 * MS:
            assert max(o.positions[0] for o in outputs) > 0.3  # the dry run computed motion
            runtime.set_dry_run(False)
        for item in [p for p in pending if p[0] <= now]:
            pending.remove(item)
            runtime.submit_chunk(item[1], item[2], now)
        observation = runtime.poll_observation(now)
        if observation is not None:
            pending.append((now + 100 * MS, policy(observation), observation.stamp_ns))
        output = runtime.tick(now)
        if output is not None:
            outputs.append(output)
    actuated = [o for o in outputs if not o.dry_run]
    assert actuated and all(o.forward for o in actuated)
    limiter = runtime.limiter
    assert abs(actuated[0].positions[0]) <= limiter.max_jump[0] + 1e-9
    steps = np.abs(np.diff([o.positions for o in actuated], axis=0))
    assert (steps <= limiter.max_jump + 1e-9).all()
