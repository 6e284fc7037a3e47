"""The runtime's plain outputs as ROS messages (and nothing else: no logic lives here)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from sensor_msgs.msg import Image
from std_msgs.msg import Float64MultiArray, MultiArrayDimension
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from internvla_ros.msg import ActionChunk, PolicyStatus
from internvla_ros.ros.conversions import ns_to_duration, ns_to_time
from internvla_ros.runtime.commands import ForwardCommand, JointTrajectoryCommand
from internvla_ros.runtime.health import ComponentHealth
from internvla_ros.runtime.status import RuntimeState, StatusReport

STATUS_STATES = {
    RuntimeState.IDLE: PolicyStatus.STATE_INACTIVE,
    RuntimeState.RUNNING: PolicyStatus.STATE_RUNNING,
    RuntimeState.PAUSED: PolicyStatus.STATE_PAUSED,
    RuntimeState.HOLDING: PolicyStatus.STATE_HOLDING,
    RuntimeState.STOPPING: PolicyStatus.STATE_HOLDING,
    RuntimeState.ESTOPPED: PolicyStatus.STATE_ESTOPPED,
}


def trajectory_msg(command: JointTrajectoryCommand) -> JointTrajectory:
    """Stamped with the runtime's time of the first point: the controller starts it then."""
    msg = JointTrajectory()
    msg.header.stamp = ns_to_time(command.stamp_ns)
    msg.joint_names = list(command.joint_names)
    msg.points = [
        JointTrajectoryPoint(positions=list(p.positions), velocities=list(p.velocities),
                             time_from_start=ns_to_duration(p.time_from_start_ns))
        for p in command.points
    ]
    return msg


def forward_msg(command: ForwardCommand) -> Float64MultiArray:
    msg = Float64MultiArray()
    msg.layout.dim = [MultiArrayDimension(label="joints", size=len(command.values), stride=len(command.values))]
    msg.data = list(command.values)
    return msg


def action_chunk_msg(chunk_id: int, stamp_ns: int, obs_stamp_ns: int, step_ns: int, start_index: int,
                     joint_names: Sequence[str], positions: np.ndarray) -> ActionChunk:
    msg = ActionChunk()
    msg.header.stamp = ns_to_time(stamp_ns)
    msg.chunk_id = chunk_id
    msg.observation_stamp = ns_to_time(obs_stamp_ns)
    msg.control_period = ns_to_duration(step_ns)
    msg.horizon = int(positions.shape[0])
    msg.start_index = max(0, start_index)
    msg.joint_names = list(joint_names)
    msg.positions = np.asarray(positions, dtype=np.float64).ravel().tolist()
    msg.inference_latency = ns_to_duration(max(0, stamp_ns - obs_stamp_ns))
    return msg


def status_msg(report: StatusReport, lifecycle_active: bool) -> PolicyStatus:
    """The report as a message; a node that is not active reports STATE_INACTIVE whatever the runtime says."""
    fields = {name: getattr(report, name) for name in PolicyStatus.get_fields_and_field_types()
              if name not in ("header", "state")}
    msg = PolicyStatus(**fields)
    msg.header.stamp = ns_to_time(report.stamp_ns)
    msg.state = STATUS_STATES[report.state] if lifecycle_active else PolicyStatus.STATE_INACTIVE
    return msg


def diagnostics_msg(stamp_ns: int, node_name: str, components: Sequence[ComponentHealth]) -> DiagnosticArray:
    """One DiagnosticStatus per component, named "<node>: <component>", with its level and reason."""
    array = DiagnosticArray(status=[
        DiagnosticStatus(level=bytes([int(c.level)]), name=f"{node_name}: {c.name}", hardware_id=node_name,
                         message=c.message, values=[KeyValue(key=k, value=v) for k, v in c.values])
        for c in components])
    array.header.stamp = ns_to_time(stamp_ns)
    return array


def rgb_image_msg(pixels: np.ndarray, stamp_ns: int, frame_id: str) -> Image:
    msg = Image()
    msg.header.stamp = ns_to_time(stamp_ns)
    msg.header.frame_id = frame_id
    msg.height, msg.width = int(pixels.shape[0]), int(pixels.shape[1])
    msg.encoding = "rgb8"
    msg.step = msg.width * 3
    msg.data = np.ascontiguousarray(pixels, dtype=np.uint8).tobytes()
    return msg
