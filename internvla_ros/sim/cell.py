"""The joints of a simulated cell, driven through the same controller interfaces as the real robot.

Joint-trajectory controllers follow sim/trajectory.py, and sim/judge.py judges what every controller
executes; forward-command controllers take a new target at once (Jazzy's forward_command_controller
drops a command holding a non-finite value). Measured joints track the desired ones with a first-order
lag capped at the joint's velocity limit, so a plot of commanded vs measured shows a realistic, small
tracking delay. A joint whose state field is `velocity` (a conveyor belt) is commanded in speed: its
position is the integrated belt travel.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from internvla_ros.runtime.config import RuntimeConfig
from internvla_ros.sim.arrivals import ArrivalStats
from internvla_ros.sim.judge import ForwardCommandJudge, JudgeSettings, MotionStats, TrajectoryJudge, ViolationLog
from internvla_ros.sim.trajectory import DEFAULT_HISTORY_NS, JointTrajectoryExecutor, Trajectory, TrajectoryRejected

TRACKING_TIME_CONSTANT_S = 0.02


@dataclass(frozen=True)
class JointState:
    names: tuple[str, ...]
    positions: np.ndarray
    velocities: np.ndarray


def home_positions(config: RuntimeConfig) -> np.ndarray:
    """The pose every episode starts from (config order): arm joints mid-range, grippers open, belts at rest
    (a belt's entry is its speed). The cell starts here, and `eval` and `record` bring it back between episodes."""
    low = np.array([joint.limits.min_position for joint in config.joints])
    high = np.array([joint.limits.max_position for joint in config.joints])
    home = np.clip(0.5 * (low + high), low, high)
    for gripper in config.grippers:
        home[config.joint_index[gripper.joint]] = gripper.open_position
    home[[joint.state_field == "velocity" for joint in config.joints]] = 0.0
    return home


class SimulatedCell:
    """Desired and measured joint states of one cell, what its controllers accepted or refused, and the
    judge's verdict on the executed motion (sim/judge.py)."""

    def __init__(self, config: RuntimeConfig, judge: JudgeSettings | None = None) -> None:
        self.config = config
        self.names = config.joint_names
        self.judge_settings = judge or JudgeSettings()
        limits = [joint.limits for joint in config.joints]
        self._min = np.array([lim.min_position for lim in limits])
        self._max = np.array([lim.max_position for lim in limits])
        self._max_velocity = np.array([lim.max_velocity for lim in limits])
        self._speed_joint = np.array([joint.state_field == "velocity" for joint in config.joints])
        start = home_positions(config)
        self._desired = start.copy()
        self._measured = np.where(self._speed_joint, 0.0, start)  # belt travel starts at 0
        self._velocity = np.zeros_like(start)
        self.violations = ViolationLog()
        self.motion = MotionStats()  # the arms' smoothness over every trajectory controller (reset per episode)
        self.arrivals = ArrivalStats(round(self.judge_settings.late_threshold_s * 1e9))
        self._executors: dict[str, tuple[JointTrajectoryExecutor, np.ndarray]] = {}
        self._trajectory_judges: dict[str, TrajectoryJudge] = {}
        self._forward: dict[str, tuple[ForwardCommandJudge, np.ndarray]] = {}
        control_period_s = 1.0 / config.rates.control_rate_hz
        for controller in config.controllers:
            index = np.array([config.joint_index[name] for name in controller.joints])
            joint_limits = [limits[i] for i in index]
            if controller.type == "joint_trajectory":
                # Trajectories stay sampleable well past the judge's delay.
                history_ns = max(DEFAULT_HISTORY_NS, round(4e9 * self.judge_settings.delay_s))
                executor = JointTrajectoryExecutor(controller.joints, start[index], history_ns=history_ns)
                self._executors[controller.name] = (executor, index)
                self._trajectory_judges[controller.name] = TrajectoryJudge(
                    controller.name, executor, joint_limits, self.judge_settings, self.violations, self.motion)
            else:
                self._forward[controller.name] = (ForwardCommandJudge(
                    controller.name, controller.joints, joint_limits, start[index], control_period_s,
                    self.violations), index)
        self.accepted: Counter[str] = Counter()
        self.commands_lost = 0  # forward commands lost between publisher and this reader (sequence gaps)
        self._sequence: dict[str, int] = {}  # newest publication sequence number per forward controller
        self.rejected: Counter[str] = Counter()

    @property
    def trajectory_controllers(self) -> tuple[str, ...]:
        return tuple(self._executors)

    @property
    def forward_controllers(self) -> tuple[str, ...]:
        return tuple(self._forward)

    @property
    def limit_violations(self) -> int:
        return self.violations.limit_violations

    @property
    def acceleration_violations(self) -> int:
        return self.violations.acceleration_violations

    def drain_violations(self) -> list[str]:
        """Messages of the excursions found since the last call, each naming its controller and joint."""
        return self.violations.drain()

    def submit_trajectory(self, controller: str, trajectory: Trajectory, arrival_ns: int) -> str | None:
        """None when accepted, else the controller's reason for refusing it. arrival_ns is when the
        message reached the controller (the middleware's receive time): it becomes active then."""
        executor, _ = self._executors[controller]
        if trajectory.end_ns is not None:
            self.arrivals.record(trajectory.stamp_ns, trajectory.end_ns, arrival_ns)
        try:
            active = executor.submit(trajectory, arrival_ns)
        except TrajectoryRejected as err:
            self.rejected[controller] += 1
            return str(err)
        self._trajectory_judges[controller].note_submission(active.activation_ns)
        self.accepted[controller] += 1
        return None

    def submit_forward_command(self, controller: str, values: np.ndarray, arrival_ns: int = 0,
                               sequence: int | None = None) -> str | None:
        """None when accepted, else why the forward controller dropped it. ``sequence``: the publisher's
        sequence number, when the middleware gives one; a gap means commands lost on the way (a starved sim
        reader), which are counted, and the step across the gap is not judged."""
        judge, index = self._forward[controller]
        previous = self._sequence.get(controller)
        if sequence is not None:
            self._sequence[controller] = sequence
        lost = 0 if previous is None or sequence is None else sequence - previous - 1
        values = np.asarray(values, dtype=np.float64)
        if values.shape != index.shape:
            self.rejected[controller] += 1
            return f"{values.size} values for the {index.size} joints of {controller}"
        if not np.all(np.isfinite(values)):
            self.rejected[controller] += 1
            return "a non-finite value: the command is dropped"
        if lost > 0:
            self.commands_lost += lost
            judge.skip(values, arrival_ns)
        else:
            judge.judge(values, arrival_ns)
        self._desired[index] = values
        self.accepted[controller] += 1
        return None

    def diagnostics(self) -> dict[str, int | float | None]:
        """The judge's counters and the controllers' accepted/rejected counts, as /diagnostics values."""
        values: dict[str, int | float | None] = {
            "limit_violations": self.limit_violations,
            "acceleration_violations": self.acceleration_violations,
            "commands_lost": self.commands_lost,
            **self.arrival_summary(),
        }
        for controller in (*self.trajectory_controllers, *self.forward_controllers):
            values[f"{controller}.accepted"] = self.accepted[controller]
            values[f"{controller}.rejected"] = self.rejected[controller]
        return values

    def arrival_summary(self) -> dict[str, int | float | None]:
        """How late stamped trajectories reached the controllers since the cell started (sim/arrivals.py), and
        how many were handled after the judge had passed their arrival (it judged again from there)."""
        return {**self.arrivals.values(),
                "judge_late_submissions": sum(j.late_submissions for j in self._trajectory_judges.values())}

    def step(self, now_ns: int, dt_s: float) -> None:
        """Samples the controllers at now_ns and moves the measured joints by dt_s."""
        for executor, index in self._executors.values():
            self._desired[index] = executor.sample(now_ns)[0]
        for judge in self._trajectory_judges.values():
            judge.advance(now_ns)
        # A step longer than the time constant (a starved sim) lands on the desired position, never past it.
        target_velocity = np.where(self._speed_joint, self._desired,
                                   (self._desired - self._measured) / max(TRACKING_TIME_CONSTANT_S, dt_s))
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
