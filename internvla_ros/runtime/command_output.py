"""One tick's commands from the commanded motion: a value per forward controller every tick, and a new
trajectory per joint_trajectory controller only when a path (a new plan or a stop) is to be sent, once."""

from __future__ import annotations

import numpy as np

from internvla_ros.runtime.commands import ControlOutput, ForwardCommand, JointTrajectoryCommand, TrajectoryPoint
from internvla_ros.runtime.config import RuntimeConfig
from internvla_ros.runtime.control import MotionControl
from internvla_ros.runtime.safety import MotionState
from internvla_ros.runtime.status import RuntimeState
from internvla_ros.runtime.trajectory import TimedPath


class CommandOutput:
    """Splits the commanded motion (config joint order) into the configured controllers' commands."""

    def __init__(self, config: RuntimeConfig, control: MotionControl) -> None:
        self._control = control
        self._joint_names = config.joint_names
        self._controllers = config.controllers
        self._columns = [[config.joint_index[j] for j in c.joints] for c in config.controllers]
        self._send_path = False  # the control's path (a new plan or a stop) goes out with the next tick

    def send_path(self) -> None:
        self._send_path = True

    def discard_path(self) -> None:
        self._send_path = False

    def output(self, now_ns: int, state: RuntimeState, clamped: frozenset[str], dry_run: bool) -> ControlOutput:
        """The tick at ``now_ns``, with the path to send from now on when there is one. In dry run nothing is
        commanded, while the command that would have been sent is still reported."""
        motion = self._control.state
        assert motion is not None
        path = self._control.path if self._send_path else None
        if path is not None:
            self._send_path = False
        return ControlOutput(
            stamp_ns=now_ns,
            state=state.value,
            joint_names=self._joint_names,
            positions=tuple(float(x) for x in motion.positions),
            velocities=tuple(float(x) for x in motion.velocities),
            forward=() if dry_run else self._forward_commands(now_ns, motion),
            trajectories=() if dry_run or path is None else self._trajectories(now_ns, path),
            clamped=clamped,
            dry_run=dry_run,
        )

    def _trajectories(self, now_ns: int, path: TimedPath) -> tuple[JointTrajectoryCommand, ...]:
        """The path's knots from ``now_ns`` on, for every joint_trajectory controller."""
        keep = path.stamps_ns >= now_ns
        positions: np.ndarray = path.positions[keep]
        velocities: np.ndarray = path.velocities[keep]
        times = [int(t - now_ns) for t in path.stamps_ns[keep]]
        commands = []
        for controller, columns in zip(self._controllers, self._columns, strict=True):
            if controller.type != "joint_trajectory":
                continue
            points = tuple(
                TrajectoryPoint(
                    positions=tuple(float(x) for x in positions[k, columns]),
                    velocities=tuple(float(x) for x in velocities[k, columns]),
                    time_from_start_ns=times[k],
                )
                for k in range(len(times))
            )
            commands.append(JointTrajectoryCommand(controller.name, controller.joints, now_ns, points))
        return tuple(commands)

    def _forward_commands(self, now_ns: int, motion: MotionState) -> tuple[ForwardCommand, ...]:
        return tuple(
            ForwardCommand(
                controller=controller.name,
                joint_names=controller.joints,
                values=tuple(float(x) for x in motion.positions[columns]),
                stamp_ns=now_ns,
            )
            for controller, columns in zip(self._controllers, self._columns, strict=True)
            if controller.type == "forward_command"
        )
