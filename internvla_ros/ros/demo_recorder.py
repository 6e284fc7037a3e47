"""The demo's recorder: every message straight into the bag, and only bounded numbers kept in memory.

Messages are written to the mcap rosbag2 as they arrive (serialized bytes as received, at the
middleware's receive time); the writer flushes 1 MB chunks to disk. What the summary and the plot need
is kept in bounded form: counters, recent windows for percentiles, and plot series that halve their
resolution whenever they fill, so an hour-long run holds no more than a minute-long one.

Camera frames are received reliably (best effort loses large frames on a loaded machine) and recorded
as JPEG on a fixed 10 Hz schedule: a frame is taken when its stamp falls into a new 100 ms slot (the
nearest slot to its stamp), so a 30 Hz stream gives one frame per slot whatever its phase and jitter
(a minimum spacing of 100 ms between taken frames gave ~7 Hz); empty slots are counted as dropped.
"""

from __future__ import annotations

import struct
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from rclpy.serialization import deserialize_message, serialize_message
from rosbags.rosbag2 import Writer
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_msgs.msg import Float64MultiArray, String
from trajectory_msgs.msg import JointTrajectory

from internvla_ros.bags.types import typestore
from internvla_ros.msg import ActionChunk, PolicyStatus
from internvla_ros.ros.conversions import NS_PER_S, duration_to_ns, time_to_ns
from internvla_ros.ros.images import to_rgb
from internvla_ros.runtime.config import RuntimeConfig

RECORD_CAMERA_HZ = 10.0
JPEG_QUALITY = 85
PLOT_JOINTS = 3
PLOT_POINTS = 4000  # per series, whatever the duration
WINDOW = 20_000  # latencies kept for the percentiles
INSTRUCTION_QOS = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
# Reliable: sim_robot's cameras publish reliably.
CAMERA_QOS = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
# Every joint state (200 Hz) goes into the recording: a replay holds on a gap longer than the config's
# joint_state_max_age_s, so a busy recorder must read late rather than lose any (1 s of backlog).
JOINT_STATE_QOS = QoSProfile(depth=200, reliability=ReliabilityPolicy.RELIABLE)


class DecimatedSeries:
    """(t, value) samples, at most `cap`: when full, every other sample goes and the stride doubles."""

    def __init__(self, cap: int = PLOT_POINTS) -> None:
        self._cap, self._stride, self._count = cap, 1, 0
        self.points: list[tuple[int, float]] = []

    def append(self, t_ns: int, value: float) -> None:
        self._count += 1
        if (self._count - 1) % self._stride:
            return
        self.points.append((t_ns, value))
        if len(self.points) >= self._cap:
            self.points = self.points[::2]
            self._stride *= 2


@dataclass
class CameraSchedule:
    """Picks one frame per slot of the record period; counts the slots no frame fell into."""

    period_ns: int
    last_slot: int | None = None
    recorded: int = 0
    dropped: int = 0

    def take(self, stamp_ns: int) -> bool:
        slot = round(stamp_ns / self.period_ns)
        if self.last_slot is not None and slot <= self.last_slot:
            return False
        if self.last_slot is not None:
            self.dropped += slot - self.last_slot - 1
        self.last_slot = slot
        self.recorded += 1
        return True


@dataclass
class Recorded:
    """What the summary and the plot need, in bounded form."""

    config: RuntimeConfig
    plot_joints: list[str]
    chunks: int = 0
    latencies_ms: deque[float] = field(default_factory=lambda: deque(maxlen=WINDOW))
    forward_count: int = 0
    forward_span_ns: tuple[int, int] | None = None
    instructions: int = 0
    status: PolicyStatus | None = None
    sim: dict[str, str] = field(default_factory=dict)
    sim_received_ns: int = 0
    t0_ns: int | None = None
    measured: dict[str, DecimatedSeries] = field(default_factory=dict)
    commanded: dict[str, DecimatedSeries] = field(default_factory=dict)
    cameras: dict[str, CameraSchedule] = field(default_factory=dict)
    _pending_chunks: deque[tuple[int, int]] = field(default_factory=lambda: deque(maxlen=64))
    _recent_commands: deque[int] = field(default_factory=lambda: deque(maxlen=256))
    _last_trajectory: dict[str, tuple[int, list[str], list[tuple[int, list[float]]]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.measured = {joint: DecimatedSeries() for joint in self.plot_joints}
        self.commanded = {joint: DecimatedSeries() for joint in self.plot_joints}
        period = round(NS_PER_S / RECORD_CAMERA_HZ)
        self.cameras = {camera.name: CameraSchedule(period) for camera in self.config.cameras}

    def add_chunk(self, ready_ns: int, observed_ns: int) -> None:
        """obs -> command latency: the first trajectory sent at or after the chunk was ready."""
        self.chunks += 1
        sent = [stamp for stamp in self._recent_commands if stamp >= ready_ns]
        if sent:
            self.latencies_ms.append((min(sent) - observed_ns) / 1e6)
        else:
            self._pending_chunks.append((ready_ns, observed_ns))

    def add_trajectory(self, controller: str, stamp_ns: int, names: list[str],
                       points: list[tuple[int, list[float]]]) -> None:
        self._recent_commands.append(stamp_ns)
        while self._pending_chunks and self._pending_chunks[0][0] <= stamp_ns:
            _, observed = self._pending_chunks.popleft()
            self.latencies_ms.append((stamp_ns - observed) / 1e6)
        previous = self._last_trajectory.get(controller)
        if previous is not None:
            self._plot_trajectory(*previous, until_ns=stamp_ns)
        self._last_trajectory[controller] = (stamp_ns, names, points)

    def _plot_trajectory(self, stamp_ns: int, names: list[str], points: list[tuple[int, list[float]]],
                         until_ns: int | None) -> None:
        """The commanded path: a trajectory's points until the next one replaces it."""
        for joint in (j for j in self.plot_joints if j in names):
            column = names.index(joint)
            for offset, positions in points:
                if until_ns is not None and stamp_ns + offset >= until_ns:
                    break
                self.commanded[joint].append(stamp_ns + offset, positions[column])

    def add_forward(self, controller: str, stamp_ns: int, values: list[float], first_controller: str) -> None:
        if controller == first_controller:
            self.forward_count += 1
            first = self.forward_span_ns[0] if self.forward_span_ns else stamp_ns
            self.forward_span_ns = (first, stamp_ns)
        joints = next(c.joints for c in self.config.controllers if c.name == controller)
        for joint in (j for j in self.plot_joints if j in joints):
            self.commanded[joint].append(stamp_ns, values[joints.index(joint)])

    def add_state(self, stamp_ns: int, names: list[str], positions: list[float]) -> None:
        self.t0_ns = stamp_ns if self.t0_ns is None else self.t0_ns
        for joint in (j for j in self.plot_joints if j in names):
            self.measured[joint].append(stamp_ns, positions[names.index(joint)])

    def finish(self) -> None:
        for stamp, names, points in self._last_trajectory.values():
            self._plot_trajectory(stamp, names, points, until_ns=None)
        self._last_trajectory.clear()


def plot_joints(config: RuntimeConfig) -> list[str]:
    """The first joints of the first trajectory controller and the first forward-commanded joint."""
    arm = next(c for c in config.controllers if c.type == "joint_trajectory")
    forward = next((c for c in config.controllers if c.type == "forward_command"), None)
    return list(arm.joints[:PLOT_JOINTS]) + ([forward.joints[0]] if forward else [])


def _image_stamp_ns(raw: bytes) -> int:
    """header.stamp of a CDR-serialized Image (after the 4-byte encapsulation header), without
    deserializing the pixels of frames the schedule will not take."""
    little = raw[1] == 1
    sec, nanosec = struct.unpack("<iI" if little else ">iI", raw[4:12])
    return sec * NS_PER_S + nanosec


class DemoRecorder(Node):
    """Subscribes to the cell's topics, streams them to the bag, keeps the numbers for the summary."""

    def __init__(self, config: RuntimeConfig, writer: Writer, namespace: str) -> None:
        super().__init__("demo_recorder", namespace=namespace)
        self.recorded = Recorded(config, plot_joints(config))
        self._writer = writer
        self._store = typestore()
        self._connections: dict[str, Any] = {}
        self._recording = self._cameras = False
        ns = namespace
        forward = [c.name for c in config.controllers if c.type == "forward_command"]
        self._raw(JointState, f"{ns}/joint_states", self._on_joint_state, JOINT_STATE_QOS)
        for controller in config.controllers:
            if controller.type == "joint_trajectory":
                self._raw(JointTrajectory, f"{ns}/{controller.name}/joint_trajectory",
                          lambda msg, t, c=controller.name: self._on_trajectory(c, msg, t))
            else:
                self._raw(Float64MultiArray, f"{ns}/{controller.name}/commands",
                          lambda msg, t, c=controller.name: self.recorded.add_forward(c, t, list(msg.data), forward[0]))
        self._raw(ActionChunk, f"{ns}/policy_node/action_chunk", lambda msg, _: self.recorded.add_chunk(
            time_to_ns(msg.header.stamp), time_to_ns(msg.observation_stamp)))
        self._raw(PolicyStatus, f"{ns}/policy_node/status", self._on_status)
        self._raw(String, f"{ns}/instruction", self._on_instruction, INSTRUCTION_QOS, always=True)
        self.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 10)
        for camera in config.cameras:
            topic = f"{ns}/{camera.topic}/compressed"
            self._connections[topic] = writer.add_connection(topic, "sensor_msgs/msg/CompressedImage",
                                                             typestore=self._store)
            self.create_subscription(Image, f"{ns}/{camera.topic}",
                                     lambda raw, info, c=camera.name, t=topic: self._on_image(c, t, raw, info),
                                     CAMERA_QOS, raw=True)

    def start_recording(self) -> None:
        self._recording = self._cameras = True

    def stop_cameras(self) -> None:
        """The run is over: frames after it would only count as dropped while the nodes shut down."""
        self._cameras = False

    def _raw(self, msg_type: type, topic: str, handler: Callable[[Any, int], None], qos: Any = 100,
             always: bool = False) -> None:
        msgtype = msg_type.__module__.split(".")[0] + "/msg/" + msg_type.__name__
        self._connections[topic] = self._writer.add_connection(topic, msgtype, typestore=self._store)

        def callback(raw: bytes, info: dict[str, Any]) -> None:
            stamp = int(info.get("received_timestamp") or 0) or self.get_clock().now().nanoseconds
            if self._recording or always:
                self._writer.write(self._connections[topic], stamp, raw)
            handler(deserialize_message(raw, msg_type), stamp)

        self.create_subscription(msg_type, topic, callback, qos, raw=True)

    def _on_joint_state(self, msg: JointState, _: int) -> None:
        if self._recording:
            self.recorded.add_state(time_to_ns(msg.header.stamp), list(msg.name), list(msg.position))

    def _on_trajectory(self, controller: str, msg: JointTrajectory, received_ns: int) -> None:
        if self._recording and msg.points:
            stamp = time_to_ns(msg.header.stamp) or received_ns
            points = [(duration_to_ns(p.time_from_start), list(p.positions)) for p in msg.points]
            self.recorded.add_trajectory(controller, stamp, list(msg.joint_names), points)

    def _on_status(self, msg: PolicyStatus, _: int) -> None:
        self.recorded.status = msg

    def _on_instruction(self, msg: String, _: int) -> None:
        self.recorded.instructions += 1
        self.get_logger().info(f"instruction: '{msg.data}'")

    def _on_diagnostics(self, msg: DiagnosticArray) -> None:
        for status in msg.status:
            if status.hardware_id == "sim_robot":
                self.recorded.sim = {kv.key: kv.value for kv in status.values}
                self.recorded.sim_received_ns = self.get_clock().now().nanoseconds

    def _on_image(self, camera: str, topic: str, raw: bytes, info: dict[str, Any]) -> None:
        if not self._cameras or not self.recorded.cameras[camera].take(_image_stamp_ns(raw)):
            return
        msg: Image = deserialize_message(raw, Image)
        ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(to_rgb(msg), cv2.COLOR_RGB2BGR),
                                [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        if not ok:  # taken but not recorded: a dropped frame
            self.recorded.cameras[camera].recorded -= 1
            self.recorded.cameras[camera].dropped += 1
            return
        out = CompressedImage(header=msg.header, format="rgb8; jpeg compressed bgr8")
        out.data = np.asarray(jpeg).tobytes()
        stamp = int(info.get("received_timestamp") or 0) or self.get_clock().now().nanoseconds
        self._writer.write(self._connections[topic], stamp, serialize_message(out))
