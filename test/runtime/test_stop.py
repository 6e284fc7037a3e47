"""The controlled stop, property-tested: whatever the limits, the motion, the control period and the cause."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from internvla_ros.runtime.commands import JointTrajectoryCommand, TrajectoryPoint
from internvla_ros.runtime.status import RuntimeState
from internvla_ros.runtime.stop import StopProfile
from internvla_ros.runtime.trajectory import merge_knots

from .harness import MS, SimLoop, make_runtime
from .motion_checks import assert_commands_within, assert_trajectory_within, forward_values
from .test_scheduler import offset_policy

NS = 1_000_000_000


@st.composite
def moving_joint(draw: st.DrawFn) -> dict[str, float]:
    """Limits, a control period and a commanded state that can brake inside the limits (what the limiter
    guarantees of every command it emits)."""
    low = draw(st.floats(-5.0, 5.0))
    high = low + draw(st.floats(1e-3, 10.0))
    vmax = draw(st.floats(1e-3, 5.0))
    amax = draw(st.floats(1.0, 100.0))  # stops of at most 5 s: a few thousand commands to check
    period = draw(st.sampled_from([0.002, 0.005, 0.01, 0.02, 1 / 30, 0.04]))
    position = draw(st.floats(low, high))
    velocity = draw(st.floats(-vmax, vmax))
    velocity = min(velocity, np.sqrt(2 * amax * (high - position)))
    velocity = max(velocity, -np.sqrt(2 * amax * (position - low)))
    return {"low": low, "high": high, "vmax": vmax, "amax": amax, "period": period, "p": position, "v": velocity}


def profile_for(joint: dict[str, float], target: float = np.nan) -> StopProfile:
    return StopProfile.plan(0, np.array([joint["p"]]), np.array([joint["v"]]), np.array([target]),
                            np.array([joint["vmax"]]), np.array([joint["amax"]]))


def grid_samples(profile: StopProfile, period: float) -> np.ndarray:
    count = int((profile.rest_ns - profile.start_ns) / (period * NS)) + 3
    return profile.sample_many(np.round(np.arange(count) * period * NS))[0]


def check_commands(joint: dict[str, float], values: np.ndarray, previous_acceleration: float) -> None:
    """Forward commands from the one before the stop (a constant-acceleration period) through the stop."""
    t = joint["period"]
    # The previous period's start velocity v - u t was within the velocity limit too.
    u = np.clip(previous_acceleration, (joint["v"] - joint["vmax"]) / t, (joint["v"] + joint["vmax"]) / t)
    before = joint["p"] - joint["v"] * t + u * t * t / 2
    lo, hi = np.array([joint["low"]]), np.array([joint["high"]])
    vmax, amax = np.array([joint["vmax"]]), np.array([joint["amax"]])
    assert_commands_within(np.concatenate([[[before]], values]), t, np.minimum(lo, before), np.maximum(hi, before),
                           vmax, amax)
    assert_commands_within(values, t, lo, hi, vmax, amax)


def check_trajectory(joint: dict[str, float], profile: StopProfile) -> None:
    """The controller's cubic through the grid and the profile's knots reproduces the stop within limits."""
    period_ns = round(joint["period"] * NS)
    knots = merge_knots([0, *profile.knots_ns()], list(range(period_ns, profile.rest_ns, period_ns))[:20])
    points = []
    for k in knots:
        p, v = profile.sample(k)
        points.append(TrajectoryPoint((float(p[0]),), (float(v[0]),), k))
    points[-1] = TrajectoryPoint(points[-1].positions, (0.0,), points[-1].time_from_start_ns)
    trajectory = JointTrajectoryCommand("arm", ("j",), 0, tuple(points))
    assert_trajectory_within(trajectory, np.array([joint["low"]]), np.array([joint["high"]]),
                             np.array([joint["vmax"]]), np.array([joint["amax"]]) * (1 + 1e-6))


@settings(max_examples=1200, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(joint=moving_joint(), previous_acceleration=st.floats(-1.0, 1.0))
def test_braking_joint_stops_within_every_limit_and_in_time(joint: dict[str, float],
                                                            previous_acceleration: float) -> None:
    profile = profile_for(joint)
    rest_s = (profile.rest_ns - profile.start_ns) / NS
    assert rest_s <= abs(joint["v"]) / joint["amax"] + joint["period"] + 1e-9
    values = grid_samples(profile, joint["period"])  # from the last command before the stop
    check_commands(joint, values, previous_acceleration * joint["amax"])
    position, velocity = profile.sample(profile.rest_ns + 1)
    assert velocity[0] == 0.0 and values[-1, 0] == position[0]
    check_trajectory(joint, profile)


@settings(max_examples=700, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(joint=moving_joint(), previous_acceleration=st.floats(-1.0, 1.0))
def test_speed_joint_ramps_to_its_stop_value_within_every_limit(joint: dict[str, float],
                                                                previous_acceleration: float) -> None:
    """A conveyor's speed (its 'position') goes to 0, or to the limit nearest 0, and rests there."""
    target = min(max(0.0, joint["low"]), joint["high"])
    profile = profile_for(joint, target)
    values = grid_samples(profile, joint["period"])  # from the last command before the stop
    check_commands(joint, values, previous_acceleration * joint["amax"])
    assert values[-1, 0] == pytest.approx(target, abs=1e-9)
    lo, hi = min(joint["p"], target), max(joint["p"], target)
    braking = joint["v"] ** 2 / (2 * joint["amax"])
    assert (values >= min(lo, joint["p"] - braking) - 1e-9).all()
    assert (values <= max(hi, joint["p"] + braking) + 1e-9).all()
    check_trajectory(joint, profile)


CAUSES = ("pause", "estop", "stale_camera", "fault", "request_stop", "dry_run")


@settings(max_examples=60, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(cause=st.sampled_from(CAUSES), when_ms=st.integers(150, 1500), offset=st.floats(-1.0, 1.0),
       control_hz=st.sampled_from([30.0, 50.0, 100.0, 125.0]))
def test_every_stop_cause_brings_every_joint_to_rest_within_limits(tmp_path: Path, cause: str, when_ms: int,
                                                                   offset: float, control_hz: float) -> None:
    runtime = make_runtime(tmp_path, rates__control_rate_hz=control_hz)
    policy = offset_policy(offset)

    def moving(observation):  # arm deltas, gripper half closed, belt at 0.3 m/s
        actions = policy(observation)
        actions[:, 2], actions[:, 3] = 0.6, 0.3
        return actions

    outage = {"head": (when_ms * MS, 10_000 * MS)} if cause == "stale_camera" else {}
    loop = SimLoop(runtime, moving, latency_ns=80 * MS, camera_outage=outage, step_ns=2 * MS)
    loop.start()
    before = loop.run_until(when_ms * MS).outputs
    {"pause": runtime.pause, "estop": lambda: runtime.estop("test"), "stale_camera": lambda: None,
     "fault": lambda: runtime.hold_for("worker", "worker restarting"),
     "request_stop": lambda: runtime.request_stop(loop.now_ns, "deactivate"),
     "dry_run": lambda: runtime.set_dry_run(True)}[cause]()
    after = loop.run_until(when_ms * MS + 2_500 * MS).outputs
    commanded = [o for o in [*before[-2:], *after] if not o.dry_run]
    limiter = runtime.limiter
    forward = [2, 3]
    assert_commands_within(forward_values(commanded, forward), limiter.period_s, limiter.low[forward],
                           limiter.high[forward], limiter.max_velocity[forward], limiter.max_acceleration[forward])
    for trajectory in (t for o in commanded for t in o.trajectories):
        assert_trajectory_within(trajectory, limiter.low[:2], limiter.high[:2], limiter.max_velocity[:2],
                                 limiter.max_acceleration[:2])
    last = commanded[-1]
    assert abs(last.positions[3]) <= 1e-9 and not any(last.velocities[2:])  # belt stopped, gripper at rest
    if cause == "request_stop":
        assert runtime.state is RuntimeState.IDLE
    elif cause == "dry_run":
        assert runtime.dry_run and after[-1].dry_run
    else:
        assert runtime.state is not RuntimeState.RUNNING


def test_a_stop_on_the_wall_clock_is_sampled_as_exactly_as_near_zero() -> None:
    """Absolute stamps (~1.8e18 ns) must not lose the profile's sub-microsecond detail to float rounding."""
    wall_ns = 1_796_000_000_123_456_789
    args = (np.array([0.1]), np.array([0.3]), np.array([0.0]), np.array([0.5]), np.array([5.0]))
    near_zero, on_wall = StopProfile.plan(0, *args), StopProfile.plan(wall_ns, *args)
    offsets = np.arange(0, 200_000_000, 10_000_001)
    np.testing.assert_array_equal(near_zero.sample_many(offsets)[0], on_wall.sample_many(offsets + wall_ns)[0])
