"""Where a frame's action comes from: the commands as the controllers executed them, or a leader arm.

Controllers (the config's): a joint_trajectory controller's action is its desired position, rebuilt
with the controller's own semantics (each trajectory active from its arrival, replacing the running
one; :mod:`internvla_ros.sim.trajectory`); a forward_command controller's is its last command, which
it holds. Teleoperation (``--action-topic``): a leader arm's ``JointState`` (by joint name) or a
``Float64MultiArray`` (config order). Only messages that arrived at or before the frame's time are
used, and each source reports why it has no value (missing or too old).
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from internvla_ros.replay.messages import FLOAT64_MULTI_ARRAY, JOINT_STATE, JOINT_TRAJECTORY
from internvla_ros.replay.topics import TopicMap
from internvla_ros.runtime.config import NS_PER_S, RuntimeConfig
from internvla_ros.runtime.errors import MappingError
from internvla_ros.runtime.mapping import ActionMapper
from internvla_ros.sim.trajectory import JointTrajectoryExecutor, Trajectory, TrajectoryPoint, TrajectoryRejected


def _ns(stamp: Any) -> int:
    return int(stamp.sec) * NS_PER_S + int(stamp.nanosec)


class ActionSource(Protocol):
    topics: dict[str, str]  # topic -> the message type it must carry
    rejected: int  # messages the controller (or the mapping) refused

    def apply(self, topic: str, stamp_ns: int, message: Any, joints_now: np.ndarray | None) -> None: ...

    def value_at(self, t_ns: int) -> tuple[np.ndarray | None, str]:
        """Joint-unit action in config order at ``t_ns``, or None and the reason."""
        ...


class ControllerActions:
    """The config's controllers, executed from the recorded command topics."""

    def __init__(self, config: RuntimeConfig, topics: TopicMap, max_age_ns: int | None) -> None:
        self.config = config
        self.max_age_ns = max_age_ns
        self.rejected = 0
        self._by_topic = {topics.trajectories[c.name]: c for c in config.controllers if c.type == "joint_trajectory"}
        self._by_topic |= {topics.forward[c.name]: c for c in config.controllers if c.type == "forward_command"}
        self.topics = {t: JOINT_TRAJECTORY if c.type == "joint_trajectory" else FLOAT64_MULTI_ARRAY
                       for t, c in self._by_topic.items()}
        self._executors: dict[str, JointTrajectoryExecutor] = {}
        self._forward: dict[str, tuple[int, np.ndarray]] = {}
        self._columns = {c.name: [config.joint_index[j] for j in c.joints] for c in config.controllers}

    def apply(self, topic: str, stamp_ns: int, message: Any, joints_now: np.ndarray | None) -> None:
        controller = self._by_topic[topic]
        if controller.type == "forward_command":
            values = np.asarray(message.data, dtype=np.float64)
            if values.shape != (len(controller.joints),) or not np.isfinite(values).all():
                self.rejected += 1
                return
            self._forward[controller.name] = (stamp_ns, values)
            return
        points = tuple(TrajectoryPoint(np.asarray(p.positions, np.float64),
                                       np.asarray(p.velocities, np.float64) if len(p.velocities) else None,
                                       _ns(p.time_from_start)) for p in message.points)
        trajectory = Trajectory(tuple(message.joint_names), _ns(message.header.stamp), points)
        executor = self._executors.get(controller.name)
        if executor is None:
            start = joints_now[self._columns[controller.name]] if joints_now is not None else None
            if start is None and points:
                start = points[0].positions
            executor = JointTrajectoryExecutor(controller.joints, np.asarray(start, np.float64))
            self._executors[controller.name] = executor
        try:
            executor.submit(trajectory, stamp_ns)
        except TrajectoryRejected:
            self.rejected += 1

    def value_at(self, t_ns: int) -> tuple[np.ndarray | None, str]:
        action = np.zeros(self.config.dim)
        for controller in self.config.controllers:
            columns = self._columns[controller.name]
            if controller.type == "joint_trajectory":
                executor = self._executors.get(controller.name)
                if executor is None or executor.last_activation_ns is None:
                    return None, f"no_command:{controller.name}"
                action[columns] = executor.sample(t_ns)[0]
            else:
                last = self._forward.get(controller.name)
                if last is None:
                    return None, f"no_command:{controller.name}"
                if self.max_age_ns is not None and t_ns - last[0] > self.max_age_ns:
                    return None, f"stale_command:{controller.name}"
                action[columns] = last[1]
        return action, ""


class TeleopActions:
    """A leader arm's joint states (or a Float64MultiArray in config order) on one topic."""

    def __init__(self, config: RuntimeConfig, topic: str, msgtype: str, mapper: ActionMapper, max_age_ns: int) -> None:
        if msgtype not in (JOINT_STATE, FLOAT64_MULTI_ARRAY):
            msg = f"--action-topic {topic} carries {msgtype}; expected {JOINT_STATE} or {FLOAT64_MULTI_ARRAY}"
            raise ValueError(msg)
        self.config = config
        self.topic = topic
        self.topics = {topic: msgtype}
        self.mapper = mapper
        self.max_age_ns = max_age_ns
        self.rejected = 0
        self._last: tuple[int, np.ndarray] | None = None

    def apply(self, topic: str, stamp_ns: int, message: Any, joints_now: np.ndarray | None) -> None:
        try:
            if self.topics[topic] == JOINT_STATE:
                values = self.mapper.joint_values(message.name, message.position, message.velocity)
            else:
                values = np.asarray(message.data, dtype=np.float64)
                if values.shape != (self.config.dim,) or not np.isfinite(values).all():
                    raise MappingError(f"{topic}: {values.shape} values, expected {self.config.dim}")
        except MappingError:
            self.rejected += 1
            return
        self._last = (stamp_ns, values)

    def value_at(self, t_ns: int) -> tuple[np.ndarray | None, str]:
        if self._last is None:
            return None, "no_command:action_topic"
        if t_ns - self._last[0] > self.max_age_ns:
            return None, "stale_command:action_topic"
        return self._last[1].copy(), ""
