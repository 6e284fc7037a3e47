"""A deterministic rosbag2 of the simulated cell, as a robot would have recorded it, without ROS.

The cell (``internvla_ros.sim``) is driven by scripted commands on its controllers' topics (a slow sine on
each trajectory controller, square waves on the forward controllers); the recording holds /joint_states,
every configured camera (raw Image; optionally one camera as CompressedImage on ``<topic>/compressed``),
the command topics and, when given, the instruction (std_msgs/String) with its changes. Everything is
stamped in bag time from a fixed epoch, so a bag is the same bytes every time. Images are rendered at the
cell's size and scaled down to keep test bags small.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.rosbag2.enums import CompressionFormat, CompressionMode
from rosbags.typesys import Stores, get_typestore

from internvla_ros.paths import share_dir
from internvla_ros.replay.topics import TopicMap
from internvla_ros.runtime.config import NS_PER_S, RuntimeConfig
from internvla_ros.sim.cell import SimulatedCell
from internvla_ros.sim.render import CellRenderer
from internvla_ros.sim.trajectory import Trajectory, TrajectoryPoint

CONVEYOR_CONFIG = share_dir() / "config" / "conveyor_sorting.yaml"
DUAL_ARM_CONFIG = share_dir() / "config" / "dual_arm.yaml"
EPOCH_NS = 1_700_000_000 * NS_PER_S
MS = 1_000_000
STEP_NS = 10 * MS  # joint_states and forward commands at 100 Hz
TRAJECTORY_EVERY = 20  # steps: a trajectory every 0.2 s
TRAJECTORY_POINTS_NS = (0, 200 * MS, 400 * MS)
SINE_AMPLITUDE = 0.15
SINE_PERIOD_S = 2.0
GRIPPER_PERIOD_S = 1.5
JPEG_QUALITY = 90


@dataclass(frozen=True)
class BagSpec:
    duration_s: float = 3.0
    storage: str = "mcap"  # or "sqlite3"
    version: int = 9
    camera_rate_hz: float = 15.0
    image_scale: float = 0.25
    compressed_camera: str | None = None  # this camera is recorded as CompressedImage (jpeg)
    joint_gap_s: tuple[float, float] | None = None  # no joint_states in [start, end)
    resize_camera_at_s: tuple[str, float] | None = None  # from then on this camera's images are half the size
    namespace: str = "/"
    commands: bool = True
    corrupt_camera: str | None = None  # this camera's Image messages claim a wrong row step
    compression: str | None = None  # rosbag2 zstd compression: "file" or "message"
    instructions: tuple[tuple[float, str], ...] = ()  # (bag time s, text) on <namespace>/instruction
    mirror_namespaces: tuple[str, ...] = ()  # joint_states and cameras recorded again under each of these


def _sine_targets(base: np.ndarray, t_s: float) -> np.ndarray:
    phase = np.arange(base.size)
    return base + SINE_AMPLITUDE * np.sin(2 * np.pi * t_s / SINE_PERIOD_S + phase)


def write_sim_bag(path: Path, config_path: Path = CONVEYOR_CONFIG, spec: BagSpec | None = None) -> Path:
    """Records ``spec.duration_s`` of the simulated cell of ``config_path`` into a new bag at ``path``."""
    spec = spec or BagSpec()
    config = RuntimeConfig.from_yaml(config_path)
    topics = TopicMap.from_config(config, spec.namespace)
    mirrors = [TopicMap.from_config(config, namespace) for namespace in spec.mirror_namespaces]
    store = get_typestore(Stores.ROS2_JAZZY)
    types = store.types
    cell = SimulatedCell(config)
    renderer = CellRenderer(config)
    plugin = StoragePlugin.MCAP if spec.storage == "mcap" else StoragePlugin.SQLITE3
    Time, Header = types["builtin_interfaces/msg/Time"], types["std_msgs/msg/Header"]

    def header(ns: int, frame: str = "") -> object:
        return Header(stamp=Time(sec=ns // NS_PER_S, nanosec=ns % NS_PER_S), frame_id=frame)

    writer = Writer(path, version=spec.version, storage_plugin=plugin)
    if spec.compression:
        writer.set_compression(CompressionMode[spec.compression.upper()], CompressionFormat.ZSTD)
    with writer:
        conn = {}

        def add(topic: str, msgtype: str) -> None:
            conn[topic] = (writer.add_connection(topic, msgtype, typestore=store), msgtype)

        def write(topic: str, ns: int, message: object) -> None:
            connection, msgtype = conn[topic]
            data = store.serialize_cdr(message, msgtype)
            writer.write(connection, ns, data)
            for copy in mirrored.get(topic, ()):  # the same inputs under another namespace
                writer.write(conn[copy][0], ns, data)

        mirrored: dict[str, list[str]] = {}
        for mirror in mirrors:
            pairs = [(topics.joint_states, mirror.joint_states)]
            pairs += [(topics.cameras[c], mirror.cameras[c]) for c in topics.cameras]
            pairs += [(topics.compressed(c), mirror.compressed(c)) for c in topics.cameras]
            for primary, copy in pairs:
                mirrored.setdefault(primary, []).append(copy)
        for topic_map in (topics, *mirrors):
            add(topic_map.joint_states, "sensor_msgs/msg/JointState")
            for camera, topic in topic_map.cameras.items():
                if camera == spec.compressed_camera:
                    add(topic_map.compressed(camera), "sensor_msgs/msg/CompressedImage")
                else:
                    add(topic, "sensor_msgs/msg/Image")
        if spec.instructions:
            add(topics.instruction, "std_msgs/msg/String")
        if spec.commands:
            for topic in topics.trajectories.values():
                add(topic, "trajectory_msgs/msg/JointTrajectory")
            for topic in topics.forward.values():
                add(topic, "std_msgs/msg/Float64MultiArray")

        base = {name: cell.desired()[[config.joint_index[j] for j in c.joints]]
                for c in config.controllers for name in [c.name]}
        camera_ns = round(NS_PER_S / spec.camera_rate_hz)
        next_camera = 0
        steps = round(spec.duration_s * NS_PER_S / STEP_NS)
        pending_instructions = sorted(spec.instructions)
        for k in range(steps + 1):
            rel = k * STEP_NS
            now = EPOCH_NS + rel
            t_s = rel / NS_PER_S
            while pending_instructions and pending_instructions[0][0] <= t_s:  # at its own time, in order
                at_s, text = pending_instructions.pop(0)
                write(topics.instruction, EPOCH_NS + round(at_s * NS_PER_S), types["std_msgs/msg/String"](data=text))
            _command(config, cell, topics, base, k, now, t_s, write if spec.commands else None, types, header)
            cell.step(now, STEP_NS / NS_PER_S)
            gap = spec.joint_gap_s
            if not (gap and gap[0] <= t_s < gap[1]):
                state = cell.joint_state()
                write(topics.joint_states, now, types["sensor_msgs/msg/JointState"](
                    header=header(now), name=list(state.names), position=state.positions.copy(),
                    velocity=state.velocities.copy(), effort=np.zeros(0)))
            if rel >= next_camera:
                next_camera += camera_ns
                state = cell.joint_state()
                scene = renderer.scene(state)
                for camera in config.cameras:
                    scale = spec.image_scale
                    resize = spec.resize_camera_at_s
                    if resize and resize[0] == camera.name and t_s >= resize[1]:
                        scale /= 2
                    pixels = renderer.render(camera.name, state, scene)
                    pixels = cv2.resize(pixels, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
                    frame = f"{camera.name}_camera_optical_frame"
                    if camera.name == spec.compressed_camera:
                        ok, data = cv2.imencode(".jpg", pixels[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
                        assert ok
                        message = types["sensor_msgs/msg/CompressedImage"](
                            header=header(now, frame), format="jpeg", data=data.ravel())
                        write(topics.compressed(camera.name), now, message)
                    else:
                        height, width = pixels.shape[:2]
                        step = width * 3 + int(camera.name == spec.corrupt_camera)
                        message = types["sensor_msgs/msg/Image"](
                            header=header(now, frame), height=height, width=width, encoding="rgb8",
                            is_bigendian=0, step=step, data=np.ascontiguousarray(pixels).ravel())
                        write(topics.cameras[camera.name], now, message)
    return path


def _command(config: RuntimeConfig, cell: SimulatedCell, topics: TopicMap, base: dict[str, np.ndarray], k: int,
             now: int, t_s: float, write: object, types: dict, header: object) -> None:
    """The scripted operator: what the recorded robot was commanded, also applied to the cell."""
    for controller in config.controllers:
        if controller.type == "joint_trajectory" and k % TRAJECTORY_EVERY == 0:
            points = [TrajectoryPoint(_sine_targets(base[controller.name], t_s + dt / NS_PER_S), None, dt)
                      for dt in TRAJECTORY_POINTS_NS]
            cell.submit_trajectory(controller.name, Trajectory(controller.joints, now, tuple(points)), now)
            if write is not None:
                msg_points = [types["trajectory_msgs/msg/JointTrajectoryPoint"](
                    positions=p.positions, velocities=np.zeros(0), accelerations=np.zeros(0), effort=np.zeros(0),
                    time_from_start=types["builtin_interfaces/msg/Duration"](
                        sec=p.time_from_start_ns // NS_PER_S, nanosec=p.time_from_start_ns % NS_PER_S))
                    for p in points]
                write(topics.trajectories[controller.name], now, types["trajectory_msgs/msg/JointTrajectory"](
                    header=header(now), joint_names=list(controller.joints), points=msg_points))
        elif controller.type == "forward_command":
            values = _forward_values(config, controller.joints, t_s)
            cell.submit_forward_command(controller.name, values)
            if write is not None:
                layout = types["std_msgs/msg/MultiArrayLayout"](dim=[], data_offset=0)
                write(topics.forward[controller.name], now,
                      types["std_msgs/msg/Float64MultiArray"](layout=layout, data=values))


def _forward_values(config: RuntimeConfig, joints: tuple[str, ...], t_s: float) -> np.ndarray:
    grippers = {g.joint: g for g in config.grippers}
    values = []
    for joint in joints:
        limits = config.joints[config.joint_index[joint]].limits
        if joint in grippers:
            closed = int(t_s / GRIPPER_PERIOD_S) % 2 == 1
            values.append(grippers[joint].closed_position if closed else grippers[joint].open_position)
        else:
            values.append(limits.min_position + 0.3 * (limits.max_position - limits.min_position))
    return np.asarray(values, dtype=np.float64)
