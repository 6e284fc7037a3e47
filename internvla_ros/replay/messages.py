"""The node's output messages as rosbags typestore dataclasses (no rclpy), and the types they need.

The package's own ActionChunk and PolicyStatus are registered from their .msg files (found in the
checkout or in the installed share/ directory), so the output bag embeds their definitions and any
tool can decode them without this package.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from rosbags.typesys.store import Typestore

from internvla_ros.bags.types import ACTION_CHUNK, POLICY_STATUS, msg_dir, typestore
from internvla_ros.replay.errors import ReplayError
from internvla_ros.runtime.commands import ForwardCommand, JointTrajectoryCommand
from internvla_ros.runtime.config import NS_PER_S
from internvla_ros.runtime.status import RuntimeState, StatusReport

JOINT_TRAJECTORY = "trajectory_msgs/msg/JointTrajectory"
FLOAT64_MULTI_ARRAY = "std_msgs/msg/Float64MultiArray"
JOINT_STATE = "sensor_msgs/msg/JointState"
IMAGE = "sensor_msgs/msg/Image"
COMPRESSED_IMAGE = "sensor_msgs/msg/CompressedImage"
STRING = "std_msgs/msg/String"
STATUS_STATE_NAMES = {
    RuntimeState.IDLE: "STATE_INACTIVE",
    RuntimeState.RUNNING: "STATE_RUNNING",
    RuntimeState.PAUSED: "STATE_PAUSED",
    RuntimeState.HOLDING: "STATE_HOLDING",
    RuntimeState.STOPPING: "STATE_HOLDING",
    RuntimeState.ESTOPPED: "STATE_ESTOPPED",
}


def make_typestore() -> Typestore:
    """Jazzy's standard types plus the package's own messages (see internvla_ros.bags.types)."""
    try:
        return typestore()
    except OSError as err:
        msg = f"cannot read the package's message definitions in {msg_dir()}: {err}"
        raise ReplayError(msg) from err




@dataclass(frozen=True)
class ChunkMessage:
    """What the node publishes on ~/action_chunk for an accepted chunk."""

    chunk_id: int
    stamp_ns: int  # when the chunk became available (bag time)
    obs_stamp_ns: int
    step_ns: int
    start_index: int
    joint_names: tuple[str, ...]
    positions: np.ndarray  # (horizon, joints)


class MessageFactory:
    """Builds the typestore dataclasses of the node's outputs; ``serialize`` gives CDR bytes."""

    def __init__(self, store: Typestore) -> None:
        self.store = store
        types = store.types
        self._time = types["builtin_interfaces/msg/Time"]
        self._duration = types["builtin_interfaces/msg/Duration"]
        self._header = types["std_msgs/msg/Header"]
        self._trajectory = types[JOINT_TRAJECTORY]
        self._point = types["trajectory_msgs/msg/JointTrajectoryPoint"]
        self._array = types[FLOAT64_MULTI_ARRAY]
        self._layout = types["std_msgs/msg/MultiArrayLayout"]
        self._dimension = types["std_msgs/msg/MultiArrayDimension"]
        self._chunk = types[ACTION_CHUNK]
        self._status = types[POLICY_STATUS]
        self._states = {state: getattr(self._status, name) for state, name in STATUS_STATE_NAMES.items()}

    def serialize(self, message: Any, msgtype: str) -> bytes:
        return bytes(self.store.serialize_cdr(message, msgtype))

    def _stamp(self, ns: int) -> Any:
        return self._time(sec=ns // NS_PER_S, nanosec=ns % NS_PER_S)

    def _span(self, ns: int) -> Any:
        return self._duration(sec=ns // NS_PER_S, nanosec=ns % NS_PER_S)

    def _header_at(self, ns: int) -> Any:
        return self._header(stamp=self._stamp(ns), frame_id="")

    def trajectory(self, command: JointTrajectoryCommand) -> Any:
        empty = np.zeros(0, np.float64)
        points = [
            self._point(positions=np.asarray(p.positions, np.float64), velocities=np.asarray(p.velocities, np.float64),
                        accelerations=empty, effort=empty, time_from_start=self._span(p.time_from_start_ns))
            for p in command.points
        ]
        return self._trajectory(header=self._header_at(command.stamp_ns), joint_names=list(command.joint_names),
                                points=points)

    def forward(self, command: ForwardCommand) -> Any:
        size = len(command.values)
        layout = self._layout(dim=[self._dimension(label="joints", size=size, stride=size)], data_offset=0)
        return self._array(layout=layout, data=np.asarray(command.values, np.float64))

    def chunk(self, chunk: ChunkMessage) -> Any:
        return self._chunk(
            header=self._header_at(chunk.stamp_ns),
            chunk_id=chunk.chunk_id,
            observation_stamp=self._stamp(chunk.obs_stamp_ns),
            control_period=self._span(chunk.step_ns),
            horizon=int(chunk.positions.shape[0]),
            start_index=max(0, chunk.start_index),
            joint_names=list(chunk.joint_names),
            positions=np.asarray(chunk.positions, np.float64).ravel(),
            inference_latency=self._span(max(0, chunk.stamp_ns - chunk.obs_stamp_ns)),
        )

    def status(self, status: StatusReport) -> Any:
        return self._status(
            header=self._header_at(status.stamp_ns),
            state=self._states[status.state],
            dry_run=status.dry_run,
            instruction=status.instruction,
            inference_rate=status.inference_rate,
            control_rate=status.control_rate,
            foresight_rate=status.foresight_rate,
            inference_latency_p50=status.inference_latency_p50,
            inference_latency_p99=status.inference_latency_p99,
            max_input_age=status.max_input_age,
            chunks_computed=status.chunks_computed,
            commands_sent=status.commands_sent,
            inference_overruns=status.inference_overruns,
            chunks_dropped=status.chunks_dropped,
            stale_inputs=status.stale_inputs,
            invalid_inputs=status.invalid_inputs,
            commands_clamped=status.commands_clamped,
            commands_rejected=status.commands_rejected,
            inference_failures=status.inference_failures,
            control_ticks=status.control_ticks,
            future_stamps_rejected=status.future_stamps_rejected,
            inference_timeouts=status.inference_timeouts,
            worker_restarts=status.worker_restarts,
            last_error=status.last_error,
        )
