"""The joints of a simulated cell, driven through the same controller interfaces as the real robot.

Joint-trajectory controllers follow sim/trajectory.py; forward-command controllers take a new target
at once (Jazzy's forward_command_controller drops a command holding a non-finite value). Measured
joints track the desired ones with a first-order lag capped at the joint's velocity limit, so a plot
of commanded vs measured shows a realistic, small tracking delay. A joint whose state field is
`velocity` (a conveyor belt) is commanded in speed: its position is the integrated belt travel.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from internvla_ros.runtime.config import RuntimeConfig
from internvla_ros.sim.trajectory import JointTrajectoryExecutor, Trajectory, TrajectoryRejected

TRACKING_TIME_CONSTANT_S = 0.02
LIMIT_TOLERANCE = 1e-6  # commands may sit on a limit; float noise above it is not a violation


@dataclass(frozen=True)
class JointState:
    names: tuple[str, ...]
    positions: np.ndarray
    velocities: np.ndarray


class SimulatedCell:
    """Desired and measured joint states of one cell, and what its controllers accepted or refused."""

    def __init__(self, config: RuntimeConfig) -> None:
        self.config = config
        self.names = config.joint_names
        limits = [joint.limits for joint in config.joints]
        self._min = np.array([lim.min_position for lim in limits])
        self._max = np.array([lim.max_position for lim in limits])
        self._max_velocity = np.array([lim.max_velocity for lim in limits])
        self._speed_joint = np.array([joint.state_field == "velocity" for joint in config.joints])
        # Start at rest: arm joints mid-range, grippers and belt speeds at their lower limit.
        start = np.clip(0.5 * (self._min + self._max), self._min, self._max)
        for gripper in config.grippers:
            start[config.joint_index[gripper.joint]] = gripper.open_position
        start[self._speed_joint] = 0.0
        self._desired = start.copy()
        self._measured = np.where(self._speed_joint, 0.0, start)  # belt travel starts at 0
        self._velocity = np.zeros_like(start)
        self._executors: dict[str, tuple[JointTrajectoryExecutor, np.ndarray]] = {}
        self._forward: dict[str, np.ndarray] = {}
        for controller in config.controllers:
            index = np.array([config.joint_index[name] for name in controller.joints])
            if controller.type == "joint_trajectory":
                self._executors[controller.name] = (JointTrajectoryExecutor(controller.joints, start[index]), index)
            else:
                self._forward[controller.name] = index
        self.accepted: Counter[str] = Counter()
        self.rejected: Counter[str] = Counter()
        self.limit_violations = 0
        self.violation_log: list[str] = []  # drained and logged by the node
        self._executed_out = np.zeros(len(self.names), dtype=bool)  # count each excursion once, not per step

    @property
    def trajectory_controllers(self) -> tuple[str, ...]:
        return tuple(self._executors)

    @property
    def forward_controllers(self) -> tuple[str, ...]:
        return tuple(self._forward)

    def _count_violations(self, index: np.ndarray, positions: np.ndarray, velocities: np.ndarray | None) -> None:
        over = (positions < self._min[index] - LIMIT_TOLERANCE) | (positions > self._max[index] + LIMIT_TOLERANCE)
        for k in np.flatnonzero(over):
            self._violation(f"{self.names[index[k]]} position {positions[k]:.6f} outside "
                            f"[{self._min[index[k]]}, {self._max[index[k]]}]")
        if velocities is not None:
            for k in np.flatnonzero(np.abs(velocities) > self._max_velocity[index] * 1.001):
                self._violation(f"{self.names[index[k]]} velocity {velocities[k]:.6f} above "
                                f"{self._max_velocity[index[k]]}")

    def _check_executed(self, index: np.ndarray, positions: np.ndarray, velocities: np.ndarray) -> None:
        """The controller's interpolated setpoint, not just the points it was sent, must stay in the limits."""
        over = ((positions < self._min[index] - LIMIT_TOLERANCE) | (positions > self._max[index] + LIMIT_TOLERANCE)
                | (np.abs(velocities) > self._max_velocity[index] * 1.001))
        for k in np.flatnonzero(over & ~self._executed_out[index]):
            self._violation(f"{self.names[index[k]]} executed setpoint {positions[k]:.6f} at {velocities[k]:.6f}/s "
                            "leaves the joint limits between trajectory points")
        self._executed_out[index] = over

    def _violation(self, message: str) -> None:
        self.limit_violations += 1
        self.violation_log.append(message)

    def submit_trajectory(self, controller: str, trajectory: Trajectory, now_ns: int) -> str | None:
        """None when accepted, else the controller's reason for refusing it."""
        executor, index = self._executors[controller]
        try:
            executor.submit(trajectory, now_ns)
        except TrajectoryRejected as err:
            self.rejected[controller] += 1
            return str(err)
        for point in executor.accepted_points():
            self._count_violations(index, point.positions, point.velocities)
        self.accepted[controller] += 1
        return None

    def submit_forward_command(self, controller: str, values: np.ndarray) -> str | None:
        """None when accepted, else why the forward controller dropped it."""
        index = self._forward[controller]
        values = np.asarray(values, dtype=np.float64)
        if values.shape != index.shape:
            self.rejected[controller] += 1
            return f"{values.size} values for the {index.size} joints of {controller}"
        if not np.all(np.isfinite(values)):
            self.rejected[controller] += 1
            return "a non-finite value: the command is dropped"
        self._count_violations(index, values, None)
        self._desired[index] = values
        self.accepted[controller] += 1
        return None

    def step(self, now_ns: int, dt_s: float) -> None:
        """Samples the controllers at now_ns and moves the measured joints by dt_s."""
        for executor, index in self._executors.values():
            positions, velocities = executor.sample(now_ns)
            self._desired[index] = positions
            self._check_executed(index, positions, velocities)
        target_velocity = np.where(self._speed_joint, self._desired,
                                   (self._desired - self._measured) / TRACKING_TIME_CONSTANT_S)
        target_velocity = np.clip(target_velocity, -self._max_velocity, self._max_velocity)
        # Belt speed follows its command with the same lag; arm joints move at the capped velocity.
        alpha = min(1.0, dt_s / TRACKING_TIME_CONSTANT_S)
        self._velocity = np.where(self._speed_joint, self._velocity + alpha * (target_velocity - self._velocity),
                                  target_velocity)
        self._measured = self._measured + self._velocity * dt_s

    def joint_state(self) -> JointState:
        return JointState(self.names, self._measured.copy(), self._velocity.copy())

    def desired(self) -> np.ndarray:
        return self._desired.copy()

    def position_of(self, joint: str) -> float:
        return float(self._measured[self.config.joint_index[joint]])

    def speed_of(self, joint: str) -> float:
        return float(self._velocity[self.config.joint_index[joint]])
