"""joint_trajectory_controller semantics of the simulated cell."""

from __future__ import annotations

import numpy as np
import pytest

from internvla_ros.sim.trajectory import JointTrajectoryExecutor, Trajectory, TrajectoryPoint, TrajectoryRejected

JOINTS = ("j1", "j2")
MS = 1_000_000
NOW = 10_000 * MS


def point(positions, t_ms, velocities=None) -> TrajectoryPoint:
    return TrajectoryPoint(np.asarray(positions, float), None if velocities is None else np.asarray(velocities, float),
                           t_ms * MS)


def executor() -> JointTrajectoryExecutor:
    return JointTrajectoryExecutor(JOINTS, np.zeros(2))


@pytest.mark.parametrize(("trajectory", "reason"), [
    (Trajectory(JOINTS, 0, ()), "empty trajectory"),
    (Trajectory(("j1", "j3"), 0, (point([1, 2], 100),)), "not controlled"),
    (Trajectory(("j1",), 0, (point([1], 100),)), "missing"),
    (Trajectory(("j1", "j1"), 0, (point([1, 2], 100),)), "duplicate"),
    (Trajectory(JOINTS, 0, (point([1, 2], 100), point([1, 2], 100))), "strictly increase"),
    (Trajectory(JOINTS, 0, (point([1, 2], 100, [0.1, 0.0]),)), "non-zero velocity"),
    (Trajectory(JOINTS, NOW - 500 * MS, (point([1, 2], 100),)), "in the past"),
    (Trajectory(JOINTS, 0, (point([1, 2, 3], 100),)), "3 positions for 2 joints"),
    (Trajectory(JOINTS, 0, (point([1, float("nan")], 100),)), "non-finite"),
])
def test_rejects_what_the_controller_rejects(trajectory: Trajectory, reason: str) -> None:
    ex = executor()
    with pytest.raises(TrajectoryRejected, match=reason):
        ex.submit(trajectory, NOW)
    np.testing.assert_array_equal(ex.sample(NOW + 200 * MS)[0], [0.0, 0.0])  # nothing moved


def test_zero_stamp_starts_now_and_interpolates_from_the_desired_state() -> None:
    ex = executor()
    ex.submit(Trajectory(("j2", "j1"), 0, (point([2.0, 1.0], 100), point([4.0, 3.0], 200))), NOW)
    np.testing.assert_allclose(ex.sample(NOW + 50 * MS)[0], [0.5, 1.0])  # half way to the first point, reordered
    np.testing.assert_allclose(ex.sample(NOW + 150 * MS)[0], [2.0, 3.0])
    positions, velocities = ex.sample(NOW + 900 * MS)
    np.testing.assert_allclose(positions, [3.0, 4.0])
    np.testing.assert_array_equal(velocities, [0.0, 0.0])


def test_new_trajectory_replaces_the_running_one_without_a_jump() -> None:
    ex = executor()
    ex.submit(Trajectory(JOINTS, 0, (point([1.0, 1.0], 1000),)), NOW)
    at_switch = ex.sample(NOW + 400 * MS)[0]
    ex.submit(Trajectory(JOINTS, 0, (point([-1.0, 0.0], 1000),)), NOW + 400 * MS)
    np.testing.assert_allclose(ex.sample(NOW + 400 * MS)[0], at_switch)
    np.testing.assert_allclose(ex.sample(NOW + 1400 * MS)[0], [-1.0, 0.0])


def test_points_with_velocities_follow_a_cubic_with_those_velocities() -> None:
    ex = executor()
    ex.submit(Trajectory(JOINTS, 0, (point([1.0, 0.0], 100, [2.0, 0.0]), point([1.5, 0.0], 300, [0.0, 0.0]))), NOW)
    _, velocity = ex.sample(NOW + 100 * MS + 1)
    assert velocity[0] == pytest.approx(2.0, abs=1e-3)
    assert ex.sample(NOW + 200 * MS)[0][0] == pytest.approx(1.0 + 0.5 * 0.5 + 2.0 * 0.2 / 8, abs=1e-9)


def test_future_stamp_moves_from_the_arrival_towards_the_first_point() -> None:
    """JTC interpolates from the state it had when the trajectory arrived to the first point's time."""
    ex = executor()
    ex.submit(Trajectory(JOINTS, NOW + 500 * MS, (point([1.0, 1.0], 100),)), NOW)
    np.testing.assert_allclose(ex.sample(NOW + 300 * MS)[0], [0.5, 0.5])  # half way from NOW to NOW + 600 ms
    np.testing.assert_allclose(ex.sample(NOW + 700 * MS)[0], [1.0, 1.0])


def test_a_trajectory_stamped_in_the_past_starts_where_its_own_points_are() -> None:
    """Arriving 150 ms after its stamp, the trajectory runs from its points at that time: the state it
    replaced is not used any more (so a late, stale trajectory makes the desired position jump)."""
    ex = executor()
    ex.submit(Trajectory(JOINTS, NOW - 150 * MS, (point([0.0, 0.0], 0), point([2.0, 4.0], 200))), NOW)
    np.testing.assert_allclose(ex.sample(NOW)[0], [1.5, 3.0])


def test_arrival_after_the_end_is_rejected_and_one_just_before_is_accepted() -> None:
    ex = executor()
    late = Trajectory(JOINTS, NOW - 300 * MS, (point([1.0, 1.0], 100), point([1.0, 1.0], 250)))
    with pytest.raises(TrajectoryRejected, match=r"arrived 50\.0 ms after"):
        ex.submit(late, NOW)
    ex.submit(Trajectory(JOINTS, NOW - 300 * MS, (point([1.0, 1.0], 100), point([1.0, 1.0], 300))), NOW)


def test_history_gives_what_ran_at_an_earlier_instant() -> None:
    """The judge samples behind now: each instant gets the trajectory that was active then."""
    ex = executor()
    ex.submit(Trajectory(JOINTS, 0, (point([1.0, 1.0], 1000),)), NOW)
    ex.submit(Trajectory(JOINTS, 0, (point([0.0, 0.0], 1000),)), NOW + 500 * MS)
    np.testing.assert_allclose(ex.sample(NOW + 250 * MS)[0], [0.25, 0.25])  # the first, before the switch
    np.testing.assert_allclose(ex.sample(NOW + 1000 * MS)[0], [0.25, 0.25])  # the second: 0.5 -> 0 over 1 s
