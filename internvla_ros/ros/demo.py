"""The closed-loop demo: sim_robot + policy_node as separate processes, watched and recorded from here.

The two nodes run exactly as on a robot (the node with the robot YAML as its params file), on a DDS
domain of their own kept on this machine. This process subscribes to what matters, shows live rates,
records inputs and commands to an mcap rosbag2 (serialized bytes as received; camera images as JPEG at
a reduced rate to keep the bag small), and at the end writes summary.json and a plot of commanded vs
measured joint positions.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data
from rclpy.serialization import deserialize_message, serialize_message
from rosbags.rosbag2 import StoragePlugin, Writer
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_msgs.msg import Float64MultiArray
from trajectory_msgs.msg import JointTrajectory

from internvla_ros.bags.types import typestore
from internvla_ros.msg import ActionChunk, PolicyStatus
from internvla_ros.paths import config_path, default_model_dir
from internvla_ros.ros.conversions import NS_PER_S, duration_to_ns, time_to_ns
from internvla_ros.ros.images import to_rgb
from internvla_ros.runtime.config import RuntimeConfig

NAMESPACE = "/demo"
INSTRUCTIONS = {
    "dual_arm": "pick up the red block and place it in the blue bowl",
    "conveyor_sorting": "pick the parcels off the belt and sort them by colour",
}
STARTUP_TIMEOUT_S = 180.0
RECORD_CAMERA_HZ = 10.0
JPEG_QUALITY = 85
PLOT_JOINTS = 3


@dataclass
class Recorded:
    """What the summary and the plot need, kept while recording."""

    chunks: list[tuple[int, int]] = field(default_factory=list)  # (ready stamp, observation stamp), ns
    # (stamp, controller, joint names, [(time from start, positions), ...]) per JointTrajectory sent
    trajectories: list[tuple[int, str, list[str], list[tuple[int, list[float]]]]] = field(default_factory=list)
    forward: list[tuple[int, str, list[float]]] = field(default_factory=list)
    states: list[tuple[int, list[str], list[float], list[float]]] = field(default_factory=list)
    status: PolicyStatus | None = None
    sim: dict[str, str] = field(default_factory=dict)


class DemoRecorder(Node):
    """Subscribes to the cell's topics, writes them to the bag, keeps numbers for the summary."""

    def __init__(self, config: RuntimeConfig, writer: Writer) -> None:
        super().__init__("demo_recorder", namespace=NAMESPACE)
        self.config = config
        self.recorded = Recorded()
        self._writer = writer
        self._store = typestore()
        self._connections: dict[str, Any] = {}
        self._last_camera_ns: dict[str, int] = {}
        self._recording = False
        ns = NAMESPACE
        self._raw(JointState, f"{ns}/joint_states", self._on_joint_state, qos_profile_sensor_data)
        for controller in config.controllers:
            if controller.type == "joint_trajectory":
                topic = f"{ns}/{controller.name}/joint_trajectory"
                self._raw(JointTrajectory, topic, lambda raw, t, c=controller.name: self._on_trajectory(c, raw, t))
            else:
                topic = f"{ns}/{controller.name}/commands"
                self._raw(Float64MultiArray, topic, lambda raw, t, c=controller.name: self._on_forward(c, raw, t))
        self._raw(ActionChunk, f"{ns}/policy_node/action_chunk", self._on_chunk)
        self._raw(PolicyStatus, f"{ns}/policy_node/status", self._on_status)
        self.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 10)
        for camera in config.cameras:
            self.create_subscription(Image, f"{ns}/{camera.topic}", lambda m, c=camera: self._on_image(c, m),
                                     qos_profile_sensor_data)

    def start_recording(self) -> None:
        self._recording = True

    def _raw(self, msg_type: type, topic: str, handler: Any, qos: Any = 100) -> None:
        msgtype = msg_type.__module__.split(".")[0] + "/msg/" + msg_type.__name__
        self._connections[topic] = self._writer.add_connection(topic, msgtype, typestore=self._store)

        def callback(raw: bytes) -> None:
            stamp = self.get_clock().now().nanoseconds
            if self._recording:
                self._writer.write(self._connections[topic], stamp, raw)
            handler(deserialize_message(raw, msg_type), stamp)

        self.create_subscription(msg_type, topic, callback, qos, raw=True)

    def _on_joint_state(self, msg: JointState, _: int) -> None:
        if self._recording:
            self.recorded.states.append((time_to_ns(msg.header.stamp), list(msg.name), list(msg.position),
                                         list(msg.velocity)))

    def _on_trajectory(self, controller: str, msg: JointTrajectory, _: int) -> None:
        if self._recording and msg.points:
            points = [(duration_to_ns(p.time_from_start), list(p.positions)) for p in msg.points]
            self.recorded.trajectories.append((time_to_ns(msg.header.stamp), controller, list(msg.joint_names), points))

    def _on_forward(self, controller: str, msg: Float64MultiArray, stamp: int) -> None:
        if self._recording:
            self.recorded.forward.append((stamp, controller, list(msg.data)))

    def _on_chunk(self, msg: ActionChunk, _: int) -> None:
        if self._recording:
            self.recorded.chunks.append((time_to_ns(msg.header.stamp), time_to_ns(msg.observation_stamp)))

    def _on_status(self, msg: PolicyStatus, _: int) -> None:
        self.recorded.status = msg

    def _on_diagnostics(self, msg: DiagnosticArray) -> None:
        for status in msg.status:
            if status.hardware_id == "sim_robot":
                self.recorded.sim = {kv.key: kv.value for kv in status.values}

    def _on_image(self, camera: Any, msg: Image) -> None:
        stamp = time_to_ns(msg.header.stamp)
        if not self._recording or stamp - self._last_camera_ns.get(camera.name, 0) < NS_PER_S / RECORD_CAMERA_HZ:
            return
        self._last_camera_ns[camera.name] = stamp
        ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(to_rgb(msg), cv2.COLOR_RGB2BGR),
                                [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        if not ok:
            return
        out = CompressedImage(header=msg.header, format="rgb8; jpeg compressed bgr8")
        out.data = jpeg.tobytes()
        topic = f"{NAMESPACE}/{camera.topic}/compressed"
        if topic not in self._connections:
            self._connections[topic] = self._writer.add_connection(
                topic, "sensor_msgs/msg/CompressedImage", typestore=self._store)
        self._writer.write(self._connections[topic], self.get_clock().now().nanoseconds, serialize_message(out))


def _start(module: str, args: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with log.open("wb") as handle:
        return subprocess.Popen([sys.executable, "-m", module, "--ros-args", *args], stdout=handle,
                                stderr=subprocess.STDOUT, env=env)


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def obs_to_command_latencies_ms(recorded: Recorded) -> np.ndarray:
    """For each chunk, the first trajectory command sent after it arrived, minus its observation stamp."""
    sent = np.array(sorted(stamp for stamp, *_ in recorded.trajectories), dtype=np.int64)
    latencies = []
    for ready, observed in recorded.chunks:
        index = np.searchsorted(sent, ready)
        if index < sent.size:
            latencies.append((sent[index] - observed) / 1e6)
    return np.asarray(latencies)


def summarise(recorded: Recorded, config: RuntimeConfig, duration_s: float) -> dict[str, Any]:
    status = recorded.status
    latencies = obs_to_command_latencies_ms(recorded)
    forward_stamps = sorted(stamp for stamp, controller, _ in recorded.forward
                            if controller == recorded.forward[0][1]) if recorded.forward else []
    measured_control = ((len(forward_stamps) - 1) * NS_PER_S / (forward_stamps[-1] - forward_stamps[0])
                        if len(forward_stamps) > 1 else 0.0)
    return {
        "cell": config.robot_type,
        "duration_s": duration_s,
        "commands_sent": int(status.commands_sent) if status else 0,
        "control_rate_hz": round(float(status.control_rate), 3) if status else 0.0,
        "control_rate_hz_received": round(measured_control, 3),
        "configured_control_rate_hz": config.rates.control_rate_hz,
        "chunks": len(recorded.chunks),
        "inference_rate_hz": round(len(recorded.chunks) / duration_s, 3),
        "configured_inference_rate_hz": config.rates.inference_rate_hz,
        "inference_latency_ms_p50": round(float(status.inference_latency_p50) * 1e3, 2) if status else None,
        "inference_latency_ms_p99": round(float(status.inference_latency_p99) * 1e3, 2) if status else None,
        "obs_to_command_latency_ms_p50": round(float(np.percentile(latencies, 50)), 2) if latencies.size else None,
        "obs_to_command_latency_ms_p99": round(float(np.percentile(latencies, 99)), 2) if latencies.size else None,
        "limit_violations": int(recorded.sim.get("limit_violations", -1)),
        "rejected_by_controllers": sum(int(v) for k, v in recorded.sim.items() if k.endswith(".rejected")),
        "clamped": int(status.commands_clamped) if status else 0,
        "stale_events": int(status.stale_inputs) if status else 0,
        "inference_overruns": int(status.inference_overruns) if status else 0,
        "chunks_dropped": int(status.chunks_dropped) if status else 0,
        "final_state": int(status.state) if status else None,
        "last_error": status.last_error if status else "no status received",
    }


def executed_trajectory(recorded: Recorded, joint: str, t0: int) -> list[tuple[int, float]]:
    """The commanded path of a trajectory joint: each trajectory's points until the next one replaces it."""
    sent = sorted((stamp, names, points) for stamp, _, names, points in recorded.trajectories if joint in names)
    path = []
    for index, (stamp, names, points) in enumerate(sent):
        until = sent[index + 1][0] if index + 1 < len(sent) else None
        column = names.index(joint)
        for offset, positions in points:
            if until is not None and stamp + offset >= until:
                break
            path.append((stamp + offset - t0, positions[column]))
    return path


def plot_joints(recorded: Recorded, config: RuntimeConfig, path: Path) -> None:
    """Commanded (trajectory starts and forward commands) vs measured positions of a few joints."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arm = next(c for c in config.controllers if c.type == "joint_trajectory")
    gripper = next((c for c in config.controllers if c.type == "forward_command"), None)
    joints = list(arm.joints[:PLOT_JOINTS]) + ([gripper.joints[0]] if gripper else [])
    t0 = recorded.states[0][0] if recorded.states else 0
    controller_joints = {c.name: list(c.joints) for c in config.controllers}
    figure, axes = plt.subplots(len(joints), 1, figsize=(10, 2.2 * len(joints)), sharex=True)
    for axis, joint in zip(np.atleast_1d(axes), joints, strict=True):
        measured = [(s - t0, p[n.index(joint)]) for s, n, p, _ in recorded.states if joint in n]
        if measured:
            axis.plot(*zip(*[(t / 1e9, v) for t, v in measured], strict=True), label="measured", linewidth=1.2)
        commanded = executed_trajectory(recorded, joint, t0)
        commanded += [(s - t0, values[controller_joints[c].index(joint)]) for s, c, values in recorded.forward
                      if joint in controller_joints[c]]
        if commanded:
            commanded.sort()
            axis.plot(*zip(*[(t / 1e9, v) for t, v in commanded], strict=True), label="commanded",
                      linewidth=1.0, alpha=0.8)
        limits = config.joints[config.joint_index[joint]].limits
        axis.axhline(limits.min_position, color="red", linewidth=0.6, linestyle=":")
        axis.axhline(limits.max_position, color="red", linewidth=0.6, linestyle=":")
        axis.set_ylabel(joint, fontsize=8)
        axis.legend(loc="upper right", fontsize=7)
    np.atleast_1d(axes)[-1].set_xlabel("time [s]")
    figure.suptitle("commanded vs measured joint positions (limits dotted)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def run_demo(cell: str, duration_s: float, out: Path, model: Path | None = None, domain_id: int | None = None,
             show: Any = print) -> dict[str, Any]:
    """Runs the demo and returns the summary (also written to out/summary.json)."""
    config_file = config_path(f"{cell}.yaml")
    config = RuntimeConfig.from_yaml(config_file)
    model = model or default_model_dir()
    if not (model / "model.safetensors").is_file():
        raise FileNotFoundError(f"no model at {model}: run `make setup` (it writes models/default)")
    out.mkdir(parents=True, exist_ok=True)
    recording = out / "recording"
    if recording.exists():
        raise FileExistsError(f"{recording} exists: choose another --out or remove it")
    domain = domain_id if domain_id is not None else random.SystemRandom().randint(1, 100)
    env = dict(os.environ, ROS_DOMAIN_ID=str(domain), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST")
    os.environ.update(ROS_DOMAIN_ID=env["ROS_DOMAIN_ID"], ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST")
    show(f"ROS_DOMAIN_ID={domain}: sim_robot + policy_node in {NAMESPACE}, model {model}, logs in {out}")
    common = ["-r", f"__ns:={NAMESPACE}"]
    processes: list[subprocess.Popen[bytes]] = []
    writer = Writer(recording, version=9, storage_plugin=StoragePlugin.MCAP)
    opened = False
    try:
        sim = _start("internvla_ros.ros.sim_robot", ["-p", f"config:={config_file}", *common],
                     out / "sim_robot.log", env)
        processes.append(sim)
        node = _start("internvla_ros.ros.policy_node",
                      ["--params-file", str(config_file), "-p", f"model_path:={model}", "-p", "autostart:=true",
                       "-p", "safety.dry_run:=false", "-p", f"instruction:={INSTRUCTIONS[cell]}", *common],
                      out / "policy_node.log", env)
        processes.append(node)
        rclpy.init()
        writer.open()
        opened = True
        recorder = DemoRecorder(config, writer)
        executor = SingleThreadedExecutor()
        executor.add_node(recorder)
        started = time.monotonic()
        while not (recorder.recorded.status and recorder.recorded.status.state == PolicyStatus.STATE_RUNNING):
            if node.poll() is not None or sim.poll() is not None or time.monotonic() - started > STARTUP_TIMEOUT_S:
                raise RuntimeError(f"the cell did not start; see {out}/policy_node.log and {out}/sim_robot.log")
            executor.spin_once(timeout_sec=0.1)
        show(f"running after {time.monotonic() - started:.1f} s (model load and warm-up); recording {duration_s} s")
        recorder.start_recording()
        begin = last_report = time.monotonic()
        while time.monotonic() - begin < duration_s:
            executor.spin_once(timeout_sec=0.05)
            if time.monotonic() - last_report >= 2.0 and recorder.recorded.status is not None:
                last_report = time.monotonic()
                s = recorder.recorded.status
                show(f"t={last_report - begin:5.1f}s control {s.control_rate:5.1f} Hz  "
                     f"inference {s.inference_rate:4.2f} Hz  latency p50 {s.inference_latency_p50 * 1e3:6.1f} ms  "
                     f"chunks {s.chunks_computed}  commands {s.commands_sent}  clamped {s.commands_clamped}  "
                     f"stale {s.stale_inputs}")
        executor.shutdown()
    finally:
        for process in reversed(processes):  # the node first: it commands a hold while the sim still listens
            _stop(process)
        if opened:
            writer.close()
        rclpy.try_shutdown()
    summary = summarise(recorder.recorded, config, duration_s)
    summary["cell"] = cell
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot_joints(recorder.recorded, config, out / "joints.png")
    return summary
