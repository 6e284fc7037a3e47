"""Every clamp and reject path of the motion limiter, the input watchdog and the operator gate."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from internvla_ros.runtime.safety import (
    CLAMP_ACCELERATION,
    CLAMP_POSITION,
    CLAMP_VELOCITY,
    CLAMPED,
    REJECT_NON_FINITE,
    REJECT_TIME,
    REJECTED,
    EventCounters,
    InputWatchdog,
    MotionLimiter,
    MotionState,
    SafetyGate,
)

from .harness import MS, make_config

DT_NS = 20 * MS  # the base config's 50 Hz control period
DT = DT_NS / 1e9
EPS = 1e-9


def make_limiter(**overrides: object) -> tuple[MotionLimiter, EventCounters]:
    counters = EventCounters()
    return MotionLimiter(make_config(**overrides), counters), counters


def at_rest(positions: list[float], stamp_ns: int = 0) -> MotionState:
    values = np.asarray(positions, dtype=float)
    return MotionState(values, np.zeros_like(values), stamp_ns)


def test_target_within_every_limit_is_approached_at_constant_acceleration() -> None:
    """One period on, the velocity is the one that would have been on target; the position averages the two
    velocities (constant acceleration over the period), so the path is C1 and piecewise quadratic."""
    limiter, counters = make_limiter()
    velocities = np.array([0.5, 0.5, 0.25, 0.5])
    previous = MotionState(np.array([0.0, 0.0, 0.04, 0.2]), velocities, 0)
    target = previous.positions + (velocities + 0.1) * DT  # a path moving at velocities + 0.1
    result = limiter.limit(previous, target, DT_NS, target_velocity=velocities + 0.1)
    np.testing.assert_allclose(result.state.velocities, velocities + 0.1)
    np.testing.assert_allclose(result.state.positions, previous.positions + (velocities + 0.05) * DT)
    assert result.reasons == frozenset()
    assert counters.total(CLAMPED) == 0


def run_limiter(limiter: MotionLimiter, state: MotionState, targets: np.ndarray,
                velocities: np.ndarray | None = None) -> np.ndarray:
    """Positions and velocities (ticks, 2, joints) of the commands towards ``targets``, one per period."""
    rows = []
    period_ns = round(limiter.period_s * 1e9)
    for k, target in enumerate(targets):
        moving = None if velocities is None else velocities[k]
        state = limiter.limit(state, target, state.stamp_ns + period_ns, target_velocity=moving).state
        rows.append((state.positions, state.velocities))
    return np.asarray(rows)


def test_step_target_is_reached_without_overshoot_and_stays_still() -> None:
    """An acceleration-limited approach brakes in time: it neither overshoots a far target nor keeps oscillating
    around it (the limit cycle of a chase at max_acceleration), and once there it is not clamped again."""
    limiter, counters = make_limiter()
    start = at_rest([0.0, 0.0, 0.04, 0.2])
    goal = np.array([1.5, -1.0, 0.01, 0.2])
    motion = run_limiter(limiter, start, np.tile(goal, (300, 1)))
    positions, velocities = motion[:, 0], motion[:, 1]
    assert positions[:, 0].max() <= goal[0] + 1e-6
    assert positions[:, 1].min() >= goal[1] - 1e-6
    np.testing.assert_allclose(positions[-100:], np.tile(goal, (100, 1)), atol=1e-6)
    assert np.abs(velocities[-100:]).max() < 1e-4
    clamped_before = counters.total(CLAMPED)
    run_limiter(limiter, MotionState(positions[-1], velocities[-1], 300 * DT_NS), np.tile(goal, (50, 1)))
    assert counters.total(CLAMPED) == clamped_before


def test_motion_after_a_clamp_settles_instead_of_ringing() -> None:
    """A joint moving fast away from a target at rest (e.g. after a chunk switch) turns back and settles: the
    swings around the target shrink to nothing."""
    limiter, _ = make_limiter(rates__control_rate_hz=100.0, joints__limits__shoulder__max_acceleration=5.0)
    state = MotionState(np.array([0.0, 0.0, 0.04, 0.2]), np.array([1.0, -0.8, 0.0, 0.0]), 0)
    goal = np.array([0.0, 0.0, 0.04, 0.2])
    positions = run_limiter(limiter, state, np.tile(goal, (800, 1)))[:, 0]
    error = np.abs(positions[:, :2] - goal[:2])
    braking = np.array([1.0**2 / (2 * 5.0), 0.8**2 / (2 * 15.0)])  # the least overshoot: v^2 / 2a
    assert (error.max(axis=0) > braking * 0.9).all()  # it did overshoot: the joints could not stop at once
    assert (error.max(axis=0) < braking * 1.5).all()  # ... but it turned back at once, without a second swing
    assert error[-400:].max() < 1e-6


def test_moving_target_with_its_velocity_is_followed_without_lag() -> None:
    """A path within every limit, given with its velocity, is followed point for point after the start."""
    limiter, counters = make_limiter()
    times = np.arange(1, 201) * DT
    path = np.stack([0.4 * np.sin(times), 0.3 * times, np.full_like(times, 0.04), np.full_like(times, 0.2)], axis=1)
    rates = np.stack([0.4 * np.cos(times), np.full_like(times, 0.3), 0 * times, 0 * times], axis=1)
    state = MotionState(np.array([0.0, 0.0, 0.04, 0.2]), rates[0] * 0 + np.array([0.4, 0.3, 0.0, 0.0]), 0)
    positions = run_limiter(limiter, state, path, rates)[:, 0]
    np.testing.assert_allclose(positions[20:], path[20:], atol=2e-3)
    assert counters.total(CLAMPED) == 0


def test_position_limit_clamps_and_counts() -> None:
    limiter, counters = make_limiter()
    previous = MotionState(np.array([1.9, 0.0, 0.04, 0.2]), np.array([0.1, 0.0, 0.0, 0.0]), 0)
    result = limiter.limit(previous, np.array([2.5, 0.0, 0.04, 0.2]), DT_NS)
    assert result.state.positions[0] <= 2.0
    assert CLAMP_POSITION in result.reasons
    assert counters.get(CLAMPED, CLAMP_POSITION) == 1


def test_velocity_limit_clamps_and_counts() -> None:
    limiter, counters = make_limiter(joints__limits__shoulder__max_acceleration=1000.0)
    previous = MotionState(np.array([0.0, 0.0, 0.04, 0.2]), np.array([1.0, 0.0, 0.0, 0.0]), 0)
    result = limiter.limit(previous, np.array([0.05, 0.0, 0.04, 0.2]), DT_NS)  # 2.5 rad/s asked, 1.0 allowed
    assert result.state.positions[0] == pytest.approx(1.0 * DT)
    assert result.state.velocities[0] == pytest.approx(1.0)
    assert result.reasons == frozenset({CLAMP_VELOCITY})
    assert counters.get(CLAMPED, CLAMP_VELOCITY) == 1


def test_acceleration_limit_clamps_and_counts() -> None:
    limiter, counters = make_limiter()
    previous = at_rest([0.0, 0.0, 0.04, 0.2])
    result = limiter.limit(previous, np.array([0.015, 0.0, 0.04, 0.2]), DT_NS)  # 0.75 rad/s from rest
    assert result.state.velocities[0] == pytest.approx(10.0 * DT)  # a_max * dt
    assert result.state.positions[0] == pytest.approx(10.0 * DT * DT / 2)
    assert result.reasons == frozenset({CLAMP_ACCELERATION})
    assert counters.get(CLAMPED, CLAMP_ACCELERATION) == 1


def test_jump_limit_caps_the_velocity() -> None:
    """A joint whose velocity limit allows more per period than max_jump: the jump cap binds."""
    limiter, counters = make_limiter(
        joints__limits__elbow__max_velocity=50.0,
        joints__limits__elbow__max_acceleration=10000.0,
        joints__limits__elbow__max_jump=0.05,
    )
    assert limiter.max_velocity[1] == pytest.approx(0.05 / DT)
    state = at_rest([0.0, 0.0, 0.04, 0.2])
    for k in range(1, 5):
        new = limiter.limit(state, np.array([0.0, 0.8, 0.04, 0.2]), k * DT_NS).state
        assert new.positions[1] - state.positions[1] <= 0.05 + EPS
        state = new
    assert counters.get(CLAMPED, CLAMP_VELOCITY) >= 1


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_target_is_rejected_and_brakes(bad: float) -> None:
    limiter, counters = make_limiter()
    previous = MotionState(np.array([0.3, 0.1, 0.04, 0.2]), np.array([0.5, 0.0, 0.0, 0.0]), 0)
    result = limiter.limit(previous, np.array([0.3, bad, 0.04, 0.2]), DT_NS)
    assert result.state.velocities[0] == pytest.approx(0.5 - 10.0 * DT)  # braking at a_max, not a step to 0
    assert REJECT_NON_FINITE in result.reasons
    assert counters.get(REJECTED, REJECT_NON_FINITE) == 1


def test_wrong_length_target_is_rejected() -> None:
    limiter, counters = make_limiter()
    result = limiter.limit(at_rest([0.0, 0.0, 0.04, 0.2]), np.zeros(3), DT_NS)
    assert result.reasons == frozenset({REJECT_NON_FINITE})
    assert counters.get(REJECTED, REJECT_NON_FINITE) == 1


def test_non_increasing_time_is_rejected() -> None:
    limiter, counters = make_limiter()
    result = limiter.limit(at_rest([0.0, 0.0, 0.04, 0.2], stamp_ns=DT_NS), np.array([0.01, 0, 0.04, 0.2]), DT_NS)
    assert result.reasons == frozenset({REJECT_TIME})
    assert counters.get(REJECTED, REJECT_TIME) == 1


def test_joints_outside_their_limits_are_named() -> None:
    limiter, _ = make_limiter()
    outside = limiter.outside_limits(np.array([2.5, 0.0, 0.04, 0.2]), 1e-4)
    assert len(outside) == 1 and outside[0].startswith("0: 2.500000 outside [-2.0, 2.0]")
    assert limiter.outside_limits(np.array([2.00005, 0.0, 0.04, 0.2]), 1e-4) == []


@settings(max_examples=400, deadline=None, derandomize=True)
@given(
    targets=hnp.arrays(
        np.float64,
        (30, 4),
        elements=st.floats(min_value=-1e6, max_value=1e6) | st.sampled_from([np.nan, np.inf, -np.inf]),
    ),
    dts_ms=st.lists(st.integers(min_value=1, max_value=200), min_size=30, max_size=30),
)
def test_any_target_sequence_stays_within_limits(targets: np.ndarray, dts_ms: list[int]) -> None:
    """Whatever the targets and the time between calls: per command, positions inside, steps within
    max_velocity (and max_jump) per period, step changes within max_acceleration per period squared, and the
    state can always brake inside the position limits."""
    limiter, _ = make_limiter()
    state = at_rest([0.0, 0.0, 0.04, 0.2])
    stamp = 0
    previous_step = np.zeros(4)
    t = limiter.period_s
    for target, dt_ms in zip(targets, dts_ms, strict=True):
        stamp += dt_ms * MS
        new = limiter.limit(state, target, stamp).state
        step = new.positions - state.positions
        assert np.isfinite(new.positions).all() and np.isfinite(new.velocities).all()
        assert (new.positions >= limiter.low - EPS).all() and (new.positions <= limiter.high + EPS).all()
        assert (np.abs(step) <= limiter.max_velocity * t + EPS).all()
        assert (np.abs(step) <= limiter.max_jump + EPS).all()
        assert (np.abs(step - previous_step) <= limiter.max_acceleration * t * t + EPS).all()
        assert (np.abs(new.velocities - state.velocities) <= limiter.max_acceleration * t + 1e-9).all()
        braking = new.velocities**2 / (2 * limiter.max_acceleration)
        assert (new.positions + np.where(new.velocities > 0, braking, 0) <= limiter.high + EPS).all()
        assert (new.positions - np.where(new.velocities < 0, braking, 0) >= limiter.low - EPS).all()
        previous_step = step
        state = new


def test_watchdog_reports_never_seen_and_too_old_inputs() -> None:
    watchdog = InputWatchdog(make_config())  # camera 0.2 s, joint state 0.1 s
    assert watchdog.stale(0) == ("camera:head", "camera:wrist", "joint_state")
    watchdog.update("joint_state", 0)
    watchdog.update("camera:head", 0)
    watchdog.update("camera:wrist", 0)
    assert watchdog.stale(100 * MS) == ()
    assert watchdog.stale(100 * MS + 1) == ("joint_state",)
    assert watchdog.stale(200 * MS + 1) == ("camera:head", "camera:wrist", "joint_state")
    watchdog.update("camera:head", 150 * MS)
    watchdog.update("camera:head", 10 * MS)  # an older stamp never rewinds the input
    assert watchdog.stale(300 * MS) == ("camera:wrist", "joint_state")
    with pytest.raises(KeyError):
        watchdog.update("camera:tail", 0)


def test_estop_latches_through_resume_until_reset() -> None:
    gate = SafetyGate(dry_run=False)
    gate.estop("operator")
    gate.estop("second press")
    gate.resume()
    assert gate.estopped and gate.estop_reason == "operator"
    gate.reset_estop()
    assert not gate.estopped
    gate.pause()
    assert gate.paused
    gate.resume()
    assert not gate.paused
