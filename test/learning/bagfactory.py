"""Small rosbag2 recordings whose every value says when it was sent, to check resampling exactly.

Joint 0's position is the send time (seconds from the bag start), each camera image encodes its message
index in two colour channels (16-level steps, robust to video coding), a trajectory controller follows
``ramp(t)`` exactly (two-point linear trajectories back to back), forward commands carry their send time
(or a gripper that toggles), and a leader arm (teleoperation) publishes ``ramp(t)`` as joint states.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rosbags.rosbag2 import Writer
from rosbags.typesys import Stores, get_typestore

from internvla_ros.replay.topics import TopicMap
from internvla_ros.runtime.config import NS_PER_S, RuntimeConfig

EPOCH_NS = 1_700_000_000 * NS_PER_S
MS = 1_000_000
ARM_YAML = """/**/policy_node:
  ros__parameters:
    robot_type: test_arm6
    cameras:
      names: [front]
      front: {topic: cameras/front/image_raw, slot: 0}
    joints:
      names: [j1, j2, j3, j4, j5, j6]
      limits:
        j1: {min_position: -3.0, max_position: 3.0, max_velocity: 2.0, max_acceleration: 10.0}
        j2: {min_position: -3.0, max_position: 3.0, max_velocity: 2.0, max_acceleration: 10.0}
        j3: {min_position: -3.0, max_position: 3.0, max_velocity: 2.0, max_acceleration: 10.0}
        j4: {min_position: -3.0, max_position: 3.0, max_velocity: 2.0, max_acceleration: 10.0}
        j5: {min_position: -3.0, max_position: 3.0, max_velocity: 2.0, max_acceleration: 10.0}
        j6: {min_position: -3.0, max_position: 3.0, max_velocity: 2.0, max_acceleration: 10.0}
    controllers:
      names: [arm_controller]
      arm_controller: {type: joint_trajectory, joints: [j1, j2, j3, j4, j5, j6]}
    action:
      absolute_mask: [false, false, false, false, false, false]
    rates: {inference_rate_hz: 2.0, control_rate_hz: 50.0, chunk_step_hz: 30.0}
    execution: {mode: delay_compensated}
    safety: {max_jump: 0.1, camera_max_age_s: 0.2, joint_state_max_age_s: 0.05, dry_run: true}
"""


def ramp(t_s: float, dim: int) -> np.ndarray:
    """What the trajectory controller and the leader arm follow: linear in time, one offset per joint."""
    return 0.1 * np.arange(dim) + 0.1 * t_s


def image_index(rgb: np.ndarray) -> int:
    """The message index an image encodes (the inverse of :func:`_image`)."""
    red, green = (round((float(np.median(rgb[..., c])) - 8) / 16) for c in (0, 1))
    return green * 16 + red


def _image(index: int, height: int, width: int) -> np.ndarray:
    image = np.zeros((height, width, 3), np.uint8)
    image[..., 0] = (index % 16) * 16 + 8
    image[..., 1] = (index // 16) * 16 + 8
    image[: height // 2, :, 2] = 200  # some structure
    return image


@dataclass(frozen=True)
class Spec:
    duration_s: float = 2.0
    joint_period_ms: int = 10
    joint_offset_ms: int = 3
    camera_period_ms: int = 50
    camera_offset_ms: int = 7
    image_size: tuple[int, int] = (48, 64)
    joint_gap_s: tuple[float, float] | None = None  # no joint_states in [start, end)
    instructions: tuple[tuple[float, str], ...] = ((0.0, "sort the parcels"),)
    teleop_topic: str | None = None  # a leader arm's JointState topic instead of controller commands
    commands: bool = True
    trajectory_period_ms: int = 200


def joint_times(spec: Spec) -> list[int]:
    """Send times (ns from the bag start) of every joint_states message."""
    times = range(spec.joint_offset_ms * MS, round(spec.duration_s * NS_PER_S), spec.joint_period_ms * MS)
    gap = spec.joint_gap_s
    return [t for t in times if not (gap and gap[0] * NS_PER_S <= t < gap[1] * NS_PER_S)]


def camera_times(spec: Spec) -> list[int]:
    return list(range(spec.camera_offset_ms * MS, round(spec.duration_s * NS_PER_S), spec.camera_period_ms * MS))


def write_bag(path: Path, config_path: Path, spec: Spec) -> Path:
    config = RuntimeConfig.from_yaml(config_path)
    topics = TopicMap.from_config(config)
    store = get_typestore(Stores.ROS2_JAZZY)
    types = store.types
    Time, Header, Duration = (types[f"builtin_interfaces/msg/{n}"] if n != "Header" else types["std_msgs/msg/Header"]
                              for n in ("Time", "Header", "Duration"))
    events: list[tuple[int, str, str, object]] = []  # (time, topic, type, message)

    def stamp(ns: int) -> object:
        return Time(sec=(EPOCH_NS + ns) // NS_PER_S, nanosec=(EPOCH_NS + ns) % NS_PER_S)

    def joint_state(ns: int, values: np.ndarray) -> object:
        return types["sensor_msgs/msg/JointState"](header=Header(stamp=stamp(ns), frame_id=""),
                                                   name=list(config.joint_names), position=values,
                                                   velocity=values.copy(), effort=np.zeros(0))

    for at_s, text in spec.instructions:
        events.append((round(at_s * NS_PER_S), topics.instruction, "std_msgs/msg/String",
                       types["std_msgs/msg/String"](data=text)))
    for t in joint_times(spec):
        values = np.full(config.dim, 0.01)
        values[0] = t / NS_PER_S
        events.append((t, topics.joint_states, "sensor_msgs/msg/JointState", joint_state(t, values)))
    height, width = spec.image_size
    for index, t in enumerate(camera_times(spec)):
        for camera, topic in topics.cameras.items():
            pixels = _image(index, height, width)
            message = types["sensor_msgs/msg/Image"](header=Header(stamp=stamp(t), frame_id=camera), height=height,
                                                     width=width, encoding="rgb8", is_bigendian=0, step=width * 3,
                                                     data=pixels.ravel())
            events.append((t, topic, "sensor_msgs/msg/Image", message))
    end = round(spec.duration_s * NS_PER_S)
    if spec.teleop_topic:
        for t in range(0, end, 10 * MS):
            events.append((t, spec.teleop_topic, "sensor_msgs/msg/JointState",
                           joint_state(t, ramp(t / NS_PER_S, config.dim))))
    elif spec.commands:
        period = spec.trajectory_period_ms * MS
        for controller in config.controllers:
            columns = [config.joint_index[j] for j in controller.joints]
            if controller.type == "joint_trajectory":
                for t in range(0, end, period):
                    points = [types["trajectory_msgs/msg/JointTrajectoryPoint"](
                        positions=ramp((t + dt) / NS_PER_S, config.dim)[columns], velocities=np.zeros(0),
                        accelerations=np.zeros(0), effort=np.zeros(0),
                        time_from_start=Duration(sec=0, nanosec=dt)) for dt in (0, period)]
                    message = types["trajectory_msgs/msg/JointTrajectory"](
                        header=Header(stamp=stamp(t), frame_id=""), joint_names=list(controller.joints), points=points)
                    events.append((t, topics.trajectories[controller.name], "trajectory_msgs/msg/JointTrajectory",
                                   message))
            else:
                for t in range(0, end, 10 * MS):
                    values = np.full(len(columns), t / NS_PER_S)
                    layout = types["std_msgs/msg/MultiArrayLayout"](dim=[], data_offset=0)
                    events.append((t, topics.forward[controller.name], "std_msgs/msg/Float64MultiArray",
                                   types["std_msgs/msg/Float64MultiArray"](layout=layout, data=values)))
    events.sort(key=lambda e: e[0])
    with Writer(path, version=9) as writer:
        connections: dict[str, object] = {}
        for t, topic, msgtype, message in events:
            if topic not in connections:
                connections[topic] = writer.add_connection(topic, msgtype, typestore=store)
            writer.write(connections[topic], EPOCH_NS + t, store.serialize_cdr(message, msgtype))
    return path
