"""The commanded motion of every joint, tick by tick: following a target, or stopping under control.

Joints on joint_trajectory controllers move along the trajectory last sent (the controller executes it), so
their commanded state is that path sampled at the tick. Joints on forward controllers get one command per
tick: the motion limiter's next state towards the target, or the next sample of their stop profile. Steps are
counted per command, so a late tick never makes a forward command step further than an on-time one.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from internvla_ros.runtime.config import RuntimeConfig, trajectory_joint_names
from internvla_ros.runtime.safety import LimitedCommand, MotionLimiter, MotionState
from internvla_ros.runtime.stop import StopProfile
from internvla_ros.runtime.trajectory import TimedPath, TrajectoryBuilder


class MotionControl:
    """Owns the commanded state, the path sent to the trajectory controllers and the forward joints' stop."""

    def __init__(self, config: RuntimeConfig, limiter: MotionLimiter) -> None:
        self._limiter = limiter
        self._period_ns = config.rates.control_period_ns
        trajectory_joints = trajectory_joint_names(config.controllers)
        self.trajectory_columns = np.asarray(
            sorted(config.joint_index[j] for j in trajectory_joints), dtype=np.int64)
        self._forward = np.asarray([name not in trajectory_joints for name in config.joint_names])
        # A speed (velocity-state) joint stops at speed 0 (clipped into its range); the others brake in place.
        stop_targets = np.full(len(config.joints), np.nan)
        for index, joint in enumerate(config.joints):
            if joint.state_field == "velocity":
                stop_targets[index] = min(max(0.0, joint.limits.min_position), joint.limits.max_position)
        self.builder = TrajectoryBuilder(limiter, stop_targets, self._period_ns, config.safety.trajectory_lead_ns,
                                         self.trajectory_columns)
        self.state: MotionState | None = None
        self.path: TimedPath | None = None
        self._stop: StopProfile | None = None
        self._stop_commands = 0

    @property
    def stopping(self) -> bool:
        return self._stop is not None

    @property
    def sent_since_start(self) -> bool:
        """Whether a trajectory went out since the last (re)start: before one, the commanded state is only the
        measurement the (re)start took."""
        return self.path is not None

    def start(self, positions: np.ndarray, stamp_ns: int) -> None:
        """At rest at ``positions``; the trajectory controllers hold there until the first trajectory."""
        self.state = self._limiter.initial_state(positions, stamp_ns)
        self.path = None
        self._stop = None

    def restart_trajectory_joints(self, measured: np.ndarray) -> None:
        """The trajectory joints at rest where they were measured (the controller holds them there until the next
        trajectory); the forward joints keep their commanded motion, which their controllers have."""
        assert self.state is not None
        columns = self.trajectory_columns
        positions, velocities = self.state.positions.copy(), self.state.velocities.copy()
        positions[columns], velocities[columns] = measured[columns], 0.0
        self.state = MotionState(positions, velocities, self.state.stamp_ns)
        self.path = None

    def _merge(self, forward: MotionState, stamp_ns: int) -> MotionState:
        """Forward joints as given; trajectory joints where the sent path has them at ``stamp_ns``."""
        assert self.state is not None
        positions, velocities = forward.positions.copy(), forward.velocities.copy()
        columns = self.trajectory_columns
        if self.path is not None:
            path_positions, path_velocities = self.path.sample(stamp_ns)
            positions[columns], velocities[columns] = path_positions[columns], path_velocities[columns]
        else:  # holding where the robot started, at rest
            positions[columns], velocities[columns] = self.state.positions[columns], 0.0
        return MotionState(positions, velocities, stamp_ns)

    def commanded_at(self, stamp_ns: int) -> np.ndarray:
        """The commanded positions at ``stamp_ns``: the trajectory joints on the sent path, the others as now."""
        assert self.state is not None
        return self._merge(self.state, stamp_ns).positions

    def follow(self, target: np.ndarray, stamp_ns: int) -> LimitedCommand:
        """One tick towards ``target``; ends a stop in progress (the motion resumes from where it is)."""
        assert self.state is not None
        self._stop = None
        limited = self._limiter.limit(self.state, target, stamp_ns)
        self.state = self._merge(limited.state, stamp_ns)
        return LimitedCommand(self.state, limited.reasons)

    def begin_stop(self, stamp_ns: int) -> TimedPath | None:
        """Starts the controlled stop; returns the trajectory to send when trajectory joints are moving."""
        assert self.state is not None
        self._stop = self.builder.stop_profile(self.state, stamp_ns)
        self._stop_commands = 0
        if not self.trajectory_columns.size or self.path is None or stamp_ns >= self.path.end_ns:
            return None  # the trajectory joints are already at rest: nothing to send
        self.path = self.builder.stop(self.path, self.state, stamp_ns)
        return self.path

    def stop_tick(self, stamp_ns: int) -> MotionState:
        """The next command of the stop in progress (forward joints: one profile period per command)."""
        assert self.state is not None
        if self._stop is None:  # restarted while holding: hold where it is
            self._stop = self.builder.stop_profile(self.state, stamp_ns)
            self._stop_commands = 0
        self._stop_commands += 1
        positions, velocities = self._stop.sample(self._stop.start_ns + self._stop_commands * self._period_ns)
        forward = MotionState(positions, velocities, stamp_ns)
        self.state = self._merge(forward, stamp_ns)
        return self.state

    def at_rest(self, stamp_ns: int) -> bool:
        """Whether every joint's commanded motion has come to rest (a stop finished, or nothing moving)."""
        if self.state is None:
            return True
        forward_done = (self._stop is not None
                        and self._stop.start_ns + self._stop_commands * self._period_ns >= self._stop.rest_ns)
        forward_still = not np.any(self.state.velocities[self._forward])
        path_done = self.path is None or stamp_ns >= self.path.end_ns
        return (forward_done or forward_still) and path_done

    def plan(self, stamp_ns: int, end_ns: int, target: Callable[[int], np.ndarray]) -> TimedPath | None:
        """A new trajectory for the trajectory joints (None when there are none)."""
        assert self.state is not None
        if not self.trajectory_columns.size:
            return None
        self.path = self.builder.plan(self.path, self.state, stamp_ns, end_ns, target)
        return self.path

    def shift(self, offset_ns: int) -> None:
        """Moves every stored time by ``offset_ns`` (the clock jumped)."""
        if self.state is not None:
            self.state = MotionState(self.state.positions, self.state.velocities, self.state.stamp_ns + offset_ns)
        if self.path is not None:
            self.path = self.path.shifted(offset_ns)
        if self._stop is not None:
            stop = self._stop
            self._stop = StopProfile(stop.start_ns + offset_ns, stop.positions, stop.velocities, stop.phases)
