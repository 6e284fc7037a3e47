"""From an agent's targets to controller commands, and a whole sorting episode without ROS.

`CommandStreamer` is what expert_node runs every control tick: an arm move becomes one stamped
joint trajectory, and the gripper and belt targets pass the runtime's MotionLimiter (one constant
acceleration per control period) before they go to their forward controllers. `run_offline` closes
the same loop on a SimulatedCell and a SortingTask directly, in simulated time, so the expert's
success can be measured over many episodes in seconds (the ROS tests run the same agents over the
middleware). Outside sim/: the sim judges the runtime and must not import it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from internvla_ros.runtime.config import NS_PER_S, RuntimeConfig
from internvla_ros.runtime.safety import EventCounters, MotionLimiter, MotionState
from internvla_ros.sim.cell import SimulatedCell
from internvla_ros.sim.episode import snapshot_of, step_task
from internvla_ros.sim.expert import TRAJECTORY_LEAD_S, ExpertCommand
from internvla_ros.sim.task import EpisodeSpec, SortingTask, TaskConfig
from internvla_ros.sim.trajectory import Trajectory, TrajectoryPoint

STEP_HZ = 200.0
SNAPSHOT_HZ = 50.0


class Agent(Protocol):
    def act(self, now_s: float, snapshot: dict[str, Any] | None, positions: np.ndarray) -> ExpertCommand: ...


class CommandStreamer:
    """Turns an agent's command into the messages of one control tick (without ROS types)."""

    def __init__(self, config: RuntimeConfig, start: MotionState | None = None) -> None:
        """``start``: the last commands sent by whoever commanded the forward controllers before (their
        positions and velocities, config order), so that these continue within the limits; default: the
        first tick's measured joints at rest, the belt stopped."""
        self.config = config
        self._limiter = MotionLimiter(config, EventCounters())
        self._state: MotionState | None = start
        self.arm = next(c for c in config.controllers if c.type == "joint_trajectory")
        self.forward = [c for c in config.controllers if c.type == "forward_command"]
        self._gripper = config.joint_index[config.grippers[0].joint]
        self._belt = next(i for i, j in enumerate(config.joints) if j.state_field == "velocity")

    @property
    def state(self) -> MotionState | None:
        """The last command sent (config order), None before the first tick."""
        return self._state

    def tick(self, now_ns: int, command: ExpertCommand, measured: np.ndarray
             ) -> tuple[Trajectory | None, dict[str, np.ndarray]]:
        if self._state is None:
            start = np.asarray(measured, dtype=np.float64).copy()
            start[self._belt] = 0.0  # the belt's command is its speed, from rest
            self._state = self._limiter.initial_state(start, now_ns - self.config.rates.control_period_ns)
        target = self._state.positions.copy()
        target[self._gripper], target[self._belt] = command.gripper, command.belt
        self._state = self._limiter.limit(self._state, target, now_ns).state
        forward = {c.name: self._state.positions[[self.config.joint_index[j] for j in c.joints]].copy()
                   for c in self.forward}
        trajectory = None
        if command.move is not None:
            stamp = now_ns + round(TRAJECTORY_LEAD_S * NS_PER_S)
            points = tuple(TrajectoryPoint(p, v, round(t * NS_PER_S)) for t, p, v in
                           zip(command.move.times_s, command.move.positions, command.move.velocities, strict=True))
            trajectory = Trajectory(self.arm.joints, stamp, points)
        return trajectory, forward


def run_offline(config: RuntimeConfig, task_config: TaskConfig, spec: EpisodeSpec,
                agent_factory: Callable[[], Agent], start_ns: int = NS_PER_S,
                cell: SimulatedCell | None = None) -> tuple[dict[str, Any], SimulatedCell]:
    """One episode in simulated time; returns the task summary and the cell (its judge's verdict)."""
    cell = cell or SimulatedCell(config)
    agent, streamer = agent_factory(), CommandStreamer(config)
    task = SortingTask(task_config, spec, start_ns / NS_PER_S, cell.position_of(
        next(j.name for j in config.joints if j.state_field == "velocity")))
    step_ns, control_ns = round(NS_PER_S / STEP_HZ), config.rates.control_period_ns
    snapshot_ns = round(NS_PER_S / SNAPSHOT_HZ)
    now, snapshot, next_control = start_ns, None, start_ns
    while not task.done:
        now += step_ns
        cell.step(now, step_ns / NS_PER_S)
        step_task(task, cell, now)
        if now % snapshot_ns < step_ns:
            snapshot = snapshot_of(task, cell, now)
        while next_control <= now:
            command = agent.act(next_control / NS_PER_S, snapshot, cell.joint_state().positions)
            trajectory, forward = streamer.tick(next_control, command, cell.joint_state().positions)
            if trajectory is not None:
                reason = cell.submit_trajectory(streamer.arm.name, trajectory, next_control)
                if reason:
                    raise RuntimeError(f"the arm controller refused a move: {reason}")
            for name, values in forward.items():
                cell.submit_forward_command(name, values, next_control)
            next_control += control_ns
    for _ in range(round(0.5 * STEP_HZ)):  # let the judge (0.25 s behind) see the end of the motion
        now += step_ns
        cell.step(now, step_ns / NS_PER_S)
    return task.summary(), cell
