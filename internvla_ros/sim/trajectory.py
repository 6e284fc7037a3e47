"""joint_trajectory_controller semantics (ros2_controllers, Jazzy defaults), without ROS types.

What a real controller does with a JointTrajectory, so the simulated cell accepts and rejects exactly
what the robot would:
- a new trajectory replaces the running one; interpolation starts from the current desired state
  (`interpolate_from_desired_state: true`);
- `stamp == 0` means "start now"; `time_from_start` is relative to the start and strictly increases;
- every point names all the controller's joints (`allow_partial_joints_goal: false`);
- a trajectory whose last point is already in the past is rejected;
- a last point with non-zero velocity is rejected (`allow_nonzero_velocity_at_trajectory_end: false`);
- points with velocities are joined by cubic Hermite segments, positions-only points linearly.
Time is integer nanoseconds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from internvla_ros.runtime.plan import hermite


class TrajectoryRejected(Exception):
    """The controller would refuse this trajectory; the message says why, as the controller logs it."""


@dataclass(frozen=True)
class TrajectoryPoint:
    positions: np.ndarray
    velocities: np.ndarray | None
    time_from_start_ns: int


@dataclass(frozen=True)
class Trajectory:
    joint_names: tuple[str, ...]
    stamp_ns: int  # 0 = start when first sampled
    points: tuple[TrajectoryPoint, ...]


class JointTrajectoryExecutor:
    """One joint_trajectory_controller: validates, replaces and samples trajectories."""

    def __init__(self, joints: Sequence[str], initial_positions: np.ndarray,
                 allow_nonzero_velocity_at_trajectory_end: bool = False) -> None:
        self.joints = tuple(joints)
        self._allow_nonzero_end_velocity = allow_nonzero_velocity_at_trajectory_end
        self._hold = np.asarray(initial_positions, dtype=np.float64).copy()
        self._trajectory: Trajectory | None = None
        self._start_ns = 0
        self._start_positions = self._hold.copy()
        self._start_velocities = np.zeros_like(self._hold)

    def submit(self, trajectory: Trajectory, now_ns: int) -> None:
        """Validates and (on success) replaces the running trajectory; raises TrajectoryRejected."""
        ordered = self._validate(trajectory, now_ns)
        positions, velocities = self.sample(now_ns)
        self._trajectory = ordered
        self._start_ns = ordered.stamp_ns if ordered.stamp_ns > 0 else now_ns
        self._start_positions = positions
        self._start_velocities = velocities

    def _validate(self, trajectory: Trajectory, now_ns: int) -> Trajectory:
        names = list(trajectory.joint_names)
        if not trajectory.points:
            raise TrajectoryRejected("empty trajectory: no points (the controller discards it)")
        if len(set(names)) != len(names):
            raise TrajectoryRejected(f"duplicate joint names in {names}")
        unknown = sorted(set(names) - set(self.joints))
        if unknown:
            raise TrajectoryRejected(f"joints {unknown} are not controlled by this controller {list(self.joints)}")
        missing = sorted(set(self.joints) - set(names))
        if missing:
            raise TrajectoryRejected(f"joints {missing} are missing (allow_partial_joints_goal is false)")
        order = [names.index(joint) for joint in self.joints]
        previous = -1
        points = []
        for i, point in enumerate(trajectory.points):
            if len(point.positions) != len(names):
                raise TrajectoryRejected(f"point {i} has {len(point.positions)} positions for {len(names)} joints")
            if point.velocities is not None and len(point.velocities) not in (0, len(names)):
                raise TrajectoryRejected(
                    f"point {i} has {len(point.velocities)} velocities for {len(names)} joints")
            if point.time_from_start_ns <= previous:
                raise TrajectoryRejected(f"time_from_start of point {i} does not strictly increase")
            previous = point.time_from_start_ns
            positions = np.asarray(point.positions, dtype=np.float64)[order]
            velocities = None
            if point.velocities is not None and len(point.velocities):
                velocities = np.asarray(point.velocities, dtype=np.float64)[order]
            if not np.all(np.isfinite(positions)) or (velocities is not None and not np.all(np.isfinite(velocities))):
                raise TrajectoryRejected(f"point {i} holds a non-finite value")
            points.append(TrajectoryPoint(positions, velocities, point.time_from_start_ns))
        last = points[-1]
        if (not self._allow_nonzero_end_velocity and last.velocities is not None
                and np.any(last.velocities != 0.0)):
            raise TrajectoryRejected("the last point has a non-zero velocity "
                                     "(allow_nonzero_velocity_at_trajectory_end is false)")
        if trajectory.stamp_ns > 0 and trajectory.stamp_ns + last.time_from_start_ns < now_ns:
            raise TrajectoryRejected("the trajectory ends in the past (header.stamp + last time_from_start < now)")
        return Trajectory(self.joints, trajectory.stamp_ns, tuple(points))

    def accepted_points(self) -> tuple[TrajectoryPoint, ...]:
        """The running trajectory's points in the controller's joint order (empty before the first)."""
        return self._trajectory.points if self._trajectory is not None else ()

    def sample(self, now_ns: int) -> tuple[np.ndarray, np.ndarray]:
        """Desired positions and velocities at now_ns (the last point is held after the end)."""
        if self._trajectory is None:
            return self._hold.copy(), np.zeros_like(self._hold)
        t_ns = now_ns - self._start_ns
        if t_ns < 0:  # a future start: hold where the previous motion was when this one was accepted
            return self._start_positions.copy(), np.zeros_like(self._hold)
        previous_time, previous_pos, previous_vel = 0, self._start_positions, self._start_velocities
        for point in self._trajectory.points:
            if t_ns < point.time_from_start_ns:
                duration_s = (point.time_from_start_ns - previous_time) * 1e-9
                elapsed_s = (t_ns - previous_time) * 1e-9
                if point.velocities is None:
                    fraction = elapsed_s / duration_s
                    velocity = (point.positions - previous_pos) / duration_s
                    return previous_pos + fraction * (point.positions - previous_pos), velocity
                return hermite(previous_pos, previous_vel, point.positions, point.velocities, duration_s,
                                elapsed_s)
            previous_time, previous_pos = point.time_from_start_ns, point.positions
            previous_vel = point.velocities if point.velocities is not None else np.zeros_like(self._hold)
        return self._trajectory.points[-1].positions.copy(), np.zeros_like(self._hold)
