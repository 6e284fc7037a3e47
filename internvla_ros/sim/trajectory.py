"""joint_trajectory_controller semantics (ros2_controllers, Jazzy defaults), without ROS types.

Written from the controller's documented behaviour, independently of the policy runtime, so that the
simulated cell judges the runtime's commands instead of repeating its assumptions:
- a trajectory becomes active when it arrives and replaces the running one; it starts from the
  desired state at that instant (`interpolate_from_desired_state: true`);
- `stamp == 0` means "start when it arrives"; `time_from_start` is relative to the start and strictly
  increases. Before the first point the controller interpolates from the state it started from (at the
  arrival time) to the first point; once the first point's time has passed, that state is not used any
  more (a trajectory stamped in the past starts where its own points are at that time);
- every point names all the controller's joints (`allow_partial_joints_goal: false`);
- a trajectory whose last point is already in the past when it arrives is rejected;
- a last point with non-zero velocity is rejected (`allow_nonzero_velocity_at_trajectory_end: false`);
- a segment whose two ends carry velocities is a cubic Hermite, otherwise a straight line; after the
  last point the controller holds it at zero velocity.
Time is integer nanoseconds.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

DEFAULT_HISTORY_NS = 2_000_000_000  # how far back trajectories stay sampleable (the judge lags 0.25 s)


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
    stamp_ns: int  # 0 = start when it arrives
    points: tuple[TrajectoryPoint, ...]

    @property
    def end_ns(self) -> int | None:
        """Absolute time of the last point, or None for a trajectory that starts when it arrives."""
        return self.stamp_ns + self.points[-1].time_from_start_ns if self.stamp_ns > 0 and self.points else None


def interpolate(t0_ns: int, p0: np.ndarray, v0: np.ndarray | None, t1_ns: int, p1: np.ndarray,
                v1: np.ndarray | None, t_ns: int) -> tuple[np.ndarray, np.ndarray]:
    """Position and velocity at t_ns on the segment between two states: cubic when both ends carry a
    velocity (the polynomial p0 + v0 t + c2 t^2 + c3 t^3 matching both ends), else linear."""
    duration = (t1_ns - t0_ns) * 1e-9
    t = min(max((t_ns - t0_ns) * 1e-9, 0.0), duration)
    if duration <= 0.0:
        return p1.copy(), np.zeros_like(p1)
    if v0 is None or v1 is None:
        slope = (p1 - p0) / duration
        return p0 + slope * t, slope
    c2 = (3.0 * (p1 - p0) - (2.0 * v0 + v1) * duration) / duration**2
    c3 = (2.0 * (p0 - p1) + (v0 + v1) * duration) / duration**3
    return p0 + t * (v0 + t * (c2 + t * c3)), v0 + t * (2.0 * c2 + 3.0 * t * c3)


@dataclass(frozen=True)
class ActiveTrajectory:
    """An accepted trajectory with the instant it became active and the desired state it started from."""

    trajectory: Trajectory
    activation_ns: int
    start_positions: np.ndarray
    start_velocities: np.ndarray
    _times: list[int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_times", self.point_times_ns)

    @property
    def point_times_ns(self) -> list[int]:
        """Absolute time of each point."""
        start = self.trajectory.stamp_ns if self.trajectory.stamp_ns > 0 else self.activation_ns
        return [start + p.time_from_start_ns for p in self.trajectory.points]

    def sample(self, t_ns: int) -> tuple[np.ndarray, np.ndarray]:
        points, times = self.trajectory.points, self._times
        first = points[0]
        if t_ns < times[0]:
            return interpolate(self.activation_ns, self.start_positions, self.start_velocities, times[0],
                               first.positions, first.velocities, t_ns)
        i = bisect.bisect_right(times, t_ns) - 1
        if i >= len(points) - 1:
            return points[-1].positions.copy(), np.zeros_like(points[-1].positions)
        a, b = points[i], points[i + 1]
        return interpolate(times[i], a.positions, a.velocities, times[i + 1], b.positions, b.velocities, t_ns)


class JointTrajectoryExecutor:
    """One joint_trajectory_controller: validates trajectories and keeps the recent ones with their
    activation times, so the desired state can be sampled at any instant of the last `history_ns`
    (not only "now"): arrival order and arrival time decide what ran when."""

    def __init__(self, joints: Sequence[str], initial_positions: np.ndarray,
                 allow_nonzero_velocity_at_trajectory_end: bool = False,
                 history_ns: int = DEFAULT_HISTORY_NS) -> None:
        self.joints = tuple(joints)
        self._allow_nonzero_end_velocity = allow_nonzero_velocity_at_trajectory_end
        self._hold = np.asarray(initial_positions, dtype=np.float64).copy()
        self._history_ns = history_ns
        self._active: list[ActiveTrajectory] = []  # in activation order
        self._activations: list[int] = []

    def submit(self, trajectory: Trajectory, arrival_ns: int) -> ActiveTrajectory:
        """Validates and (on success) activates the trajectory at its arrival; raises TrajectoryRejected."""
        ordered = self._validate(trajectory, arrival_ns)
        activation = max(arrival_ns, self._activations[-1]) if self._activations else arrival_ns
        positions, velocities = self.sample(activation)
        active = ActiveTrajectory(ordered, activation, positions, velocities)
        self._active.append(active)
        self._activations.append(activation)
        # Forget what ended long ago: keep the one that was running `history_ns` before this activation.
        keep_from = max(bisect.bisect_right(self._activations, activation - self._history_ns) - 1, 0)
        del self._active[:keep_from], self._activations[:keep_from]
        return active

    @property
    def last_activation_ns(self) -> int | None:
        return self._activations[-1] if self._activations else None

    def _validate(self, trajectory: Trajectory, arrival_ns: int) -> Trajectory:
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
        if trajectory.end_ns is not None and trajectory.end_ns < arrival_ns:
            raise TrajectoryRejected(
                f"the trajectory ends in the past: it arrived {(arrival_ns - trajectory.end_ns) / 1e6:.1f} ms "
                "after header.stamp + its last time_from_start")
        return Trajectory(self.joints, trajectory.stamp_ns, tuple(points))

    def sample(self, t_ns: int) -> tuple[np.ndarray, np.ndarray]:
        """Desired positions and velocities at t_ns, from the trajectory that was active then."""
        i = bisect.bisect_right(self._activations, t_ns) - 1
        if i < 0:
            if self._active:  # before everything kept: the oldest kept trajectory's starting state
                return self._active[0].start_positions.copy(), self._active[0].start_velocities.copy()
            return self._hold.copy(), np.zeros_like(self._hold)
        return self._active[i].sample(t_ns)
