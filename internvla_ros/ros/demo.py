"""The closed-loop demo: sim_robot + policy_node as separate processes, watched and recorded from here.

The two nodes run exactly as on a robot (the node with the robot YAML as its params file), on a DDS
domain of their own kept on this machine; the task is sent on the node's `instruction` topic, as an
operator would. This process streams inputs and commands to an mcap rosbag2 (ros/demo_recorder.py),
shows live rates, optionally runs CPU-burning stress processes beside the cell, samples every
process's resident memory, and at the end writes summary.json (with the sim's verdict on the executed
motion) and a plot of commanded vs measured joint positions.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.executors import SingleThreadedExecutor
from rosbags.rosbag2 import StoragePlugin, Writer
from std_msgs.msg import String

from internvla_ros.msg import PolicyStatus
from internvla_ros.paths import config_path, default_model_dir
from internvla_ros.ros.conversions import NS_PER_S
from internvla_ros.ros.demo_processes import (
    largest_child,
    remote_summary,
    rss_mb,
    start_node,
    start_server,
    start_stress,
    stop_node,
    stop_stress,
)
from internvla_ros.ros.demo_recorder import INSTRUCTION_QOS, DemoRecorder, Recorded
from internvla_ros.ros.domain import claim_domain
from internvla_ros.ros.transport import use_frame_transport
from internvla_ros.runtime.config import RuntimeConfig

NAMESPACE = "/demo"
INSTRUCTIONS = {
    "dual_arm": "pick up the red block and place it in the blue bowl",
    "conveyor_sorting": "pick the parcels off the belt and sort them by colour",
}
STARTUP_TIMEOUT_S = 180.0
SERVER_STARTUP_S = 240.0  # with --remote, added for Ray and the server (55 s on two loaded cores)
MEMORY_SAMPLE_S = 300.0  # the "t_5min" sample, when the run is that long
FINAL_VERDICT_WAIT_S = 1.5  # the sim judges 0.25 s behind now and reports every second
STOP_TIMEOUT_S = 30.0  # SIGINT, then SIGKILL: a node still running after this has failed to stop
OUTPUTS = ("summary.json", "recording", "joints.png", "policy_node.log", "sim_robot.log", "inference_server.log")
SERVER_COMPONENT = "inference server"  # the node's diagnostics of its server, when it uses one


def _warn(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def prepare_out(out: Path, warn: Callable[[str], None] = _warn) -> None:
    """Creates out/, replacing what a previous demo wrote there (and only that)."""
    out.mkdir(parents=True, exist_ok=True)
    previous = [out / name for name in OUTPUTS if (out / name).exists()]
    if previous:
        warn(f"replacing the previous demo output in {out}: {', '.join(p.name for p in previous)}")
    for path in previous:
        shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()


def _int(values: dict[str, str], key: str, missing: int | None = -1) -> int | None:
    """A counter from the sim's diagnostics; -1 when no report arrived (which fails the run)."""
    value = values.get(key)
    return int(value) if value not in (None, "") else missing


def _float(values: dict[str, str], key: str) -> float | None:
    value = values.get(key)
    return float(value) if value not in (None, "") else None


def memory_summary(samples: dict[str, dict[str, float | None]]) -> tuple[dict[str, Any], dict[str, float | None]]:
    growth = {}
    for name, sample in samples.items():
        start, end = sample.get("t_5min"), sample.get("end")
        growth[name] = round(100.0 * (end - start) / start, 1) if start and end is not None else None
    return samples, growth


def summarise(recorded: Recorded, config: RuntimeConfig, duration_s: float) -> dict[str, Any]:
    status, sim = recorded.status, recorded.sim
    latencies = np.asarray(recorded.latencies_ms)
    span = recorded.forward_span_ns
    measured_control = ((recorded.forward_count - 1) * NS_PER_S / (span[1] - span[0])
                        if span and span[1] > span[0] else 0.0)
    return {
        "cell": config.robot_type,
        "duration_s": duration_s,
        "commands_sent": int(status.commands_sent) if status else 0,
        "control_rate_hz": round(float(status.control_rate), 3) if status else 0.0,
        "control_rate_hz_received": round(measured_control, 3),
        "configured_control_rate_hz": config.rates.control_rate_hz,
        "chunks": recorded.chunks,
        "inference_rate_hz": round(recorded.chunks / duration_s, 3),
        "configured_inference_rate_hz": config.rates.inference_rate_hz,
        "inference_latency_ms_p50": round(float(status.inference_latency_p50) * 1e3, 2) if status else None,
        "inference_latency_ms_p99": round(float(status.inference_latency_p99) * 1e3, 2) if status else None,
        "obs_to_command_latency_ms_p50": round(float(np.percentile(latencies, 50)), 2) if latencies.size else None,
        "obs_to_command_latency_ms_p99": round(float(np.percentile(latencies, 99)), 2) if latencies.size else None,
        "limit_violations": _int(sim, "limit_violations"),
        "acceleration_violations": _int(sim, "acceleration_violations"),
        "trajectory_arrival_delay_ms_p50": _float(sim, "trajectory_arrival_delay_ms_p50"),
        "trajectory_arrival_delay_ms_p99": _float(sim, "trajectory_arrival_delay_ms_p99"),
        "trajectory_arrival_delay_ms_max": _float(sim, "trajectory_arrival_delay_ms_max"),
        "late_trajectories": _int(sim, "late_trajectories"),
        "trajectories_after_end": _int(sim, "trajectories_after_end"),
        "judge_late_submissions": _int(sim, "judge_late_submissions"),  # arrived after the judge had passed
        "commands_lost": _int(sim, "commands_lost"),  # forward commands the sim's reader lost (not judged)
        "rejected_by_controllers": sum(int(v) for k, v in sim.items() if k.endswith(".rejected")),
        "clamped": int(status.commands_clamped) if status else 0,
        "stale_events": int(status.stale_inputs) if status else 0,
        "inference_overruns": int(status.inference_overruns) if status else 0,
        "chunks_dropped": int(status.chunks_dropped) if status else 0,
        "instructions_recorded": recorded.instructions,
        "recorded_frames": {name: s.recorded for name, s in recorded.cameras.items()},
        "recording_dropped_frames": sum(s.dropped for s in recorded.cameras.values()),
        "final_state": int(status.state) if status else None,
        "last_error": status.last_error if status else "no status received",
    }


def plot_joints(recorded: Recorded, config: RuntimeConfig, path: Path) -> None:
    """Commanded (the executed trajectory path, forward commands) vs measured positions of a few joints."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    joints = recorded.plot_joints
    t0 = recorded.t0_ns or 0
    figure, axes = plt.subplots(len(joints), 1, figsize=(10, 2.2 * len(joints)), sharex=True)
    for axis, joint in zip(np.atleast_1d(axes), joints, strict=True):
        for label, series, width in (("measured", recorded.measured[joint], 1.2),
                                     ("commanded", recorded.commanded[joint], 1.0)):
            points = sorted(series.points)
            if points:
                axis.plot([(t - t0) / 1e9 for t, _ in points], [v for _, v in points], label=label, linewidth=width)
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


def _memory(pids: dict[str, Callable[[], int | None]]) -> dict[str, float | None]:
    return {name: (rss_mb(pid) if (pid := get()) is not None else None) for name, get in pids.items()}


def run_demo(cell: str, duration_s: float, out: Path, model: Path | None = None, domain_id: int | None = None,
             stress: int = 0, show: Callable[[str], None] = print, remote: bool = False) -> dict[str, Any]:
    """Runs the demo and returns the summary (also written to out/summary.json). ``remote``: the policy is
    served by `internvla serve`, started here, and the node is its client (summary: ``remote``)."""
    config_file = config_path(f"{cell}.yaml")
    config = RuntimeConfig.from_yaml(config_file)
    model = model or default_model_dir()
    if not (model / "model.safetensors").is_file():
        raise FileNotFoundError(f"no model at {model}: run `make setup` (it writes models/default)")
    prepare_out(out)
    claim = claim_domain(domain_id)
    env = claim.apply()
    show(f"ROS_DOMAIN_ID={claim.domain}: sim_robot + policy_node in {NAMESPACE}, model {model}, logs in {out}")
    common = ["-r", f"__ns:={NAMESPACE}"]
    writer = Writer(out / "recording", version=9, storage_plugin=StoragePlugin.MCAP)
    server = start_server(model.resolve(), out / "inference_server.log") if remote else None
    if server is not None:
        show(f"inference server: internvla serve on {server.url} (log: {out}/inference_server.log)")
    stressors = start_stress(stress)
    if stress:
        show(f"stress: {stress} CPU-burning processes (busy loops) run beside the cell for the whole run")
    sim = start_node("internvla_ros.ros.sim_robot", ["-p", f"config:={config_file}", *common],
                     out / "sim_robot.log", env)
    node = start_node("internvla_ros.ros.policy_node",
                      ["--params-file", str(config_file), "-p", f"model_path:={model}", "-p", "autostart:=true",
                       "-p", "safety.dry_run:=false", *common,
                       *(["-p", f"inference_endpoint:={server.url}"] if server else [])], out / "policy_node.log", env)
    processes = {"policy_node": node, "sim_robot": sim}
    pids: dict[str, Callable[[], int | None]] = {
        "policy_node": lambda: node.pid, "inference_worker": lambda: largest_child(node.pid),
        "sim_robot": lambda: sim.pid, "demo": os.getpid}
    memory: dict[str, dict[str, float | None]] = {name: {"t_5min": None, "end": None} for name in pids}
    crashed: list[str] = []
    exit_codes: dict[str, int] = {}
    opened = False
    client: dict[str, str] = {}  # the node's view of its inference server (diagnostics values)
    remote_report: dict[str, Any] = {}
    try:
        use_frame_transport()
        rclpy.init()
        writer.open()
        opened = True
        recorder = DemoRecorder(config, writer, NAMESPACE)
        executor = SingleThreadedExecutor()
        executor.add_node(recorder)
        recorder.create_subscription(DiagnosticArray, "/diagnostics", lambda msg: client.update(
            {kv.key: kv.value for status in msg.status if status.name.endswith(f": {SERVER_COMPONENT}")
             for kv in status.values}), 10)
        instruction = recorder.create_publisher(String, f"{NAMESPACE}/instruction", INSTRUCTION_QOS)
        instruction.publish(String(data=INSTRUCTIONS[cell]))
        started = time.monotonic()
        startup_s = STARTUP_TIMEOUT_S + (SERVER_STARTUP_S if server else 0.0)
        starting = [node, sim] + ([server.process] if server and server.process else [])
        while not (recorder.recorded.status and recorder.recorded.status.state == PolicyStatus.STATE_RUNNING):
            if any(p.poll() is not None for p in starting) or time.monotonic() - started > startup_s:
                raise RuntimeError(f"the cell did not start; see the logs in {out}")
            executor.spin_once(timeout_sec=0.1)
        show(f"running after {time.monotonic() - started:.1f} s (model load and warm-up); recording {duration_s} s")
        recorder.start_recording()
        begin = last_report = time.monotonic()
        while time.monotonic() - begin < duration_s:
            executor.spin_once(timeout_sec=0.05)
            crashed = [name for name, process in processes.items() if process.poll() is not None]
            if crashed:
                show(f"{', '.join(crashed)} exited during the run; see its log in {out}")
                break
            if memory["demo"]["t_5min"] is None and time.monotonic() - begin >= MEMORY_SAMPLE_S:
                for name, value in _memory(pids).items():
                    memory[name]["t_5min"] = value
            if time.monotonic() - last_report >= 2.0 and recorder.recorded.status is not None:
                last_report = time.monotonic()
                s = recorder.recorded.status
                show(f"t={last_report - begin:5.1f}s control {s.control_rate:5.1f} Hz  "
                     f"inference {s.inference_rate:4.2f} Hz  latency p50 {s.inference_latency_p50 * 1e3:6.1f} ms  "
                     f"chunks {s.chunks_computed}  commands {s.commands_sent}  clamped {s.commands_clamped}  "
                     f"stale {s.stale_inputs}")
        recorder.stop_cameras()
        for name, value in _memory(pids).items():
            memory[name]["end"] = value
        if server is not None:
            remote_report = remote_summary(server, client)
        # The node first: it commands a hold while the sim still listens; then the sim's final verdict.
        exit_codes["policy_node"] = stop_node(node, STOP_TIMEOUT_S)
        stopped = time.monotonic()
        while time.monotonic() - stopped < FINAL_VERDICT_WAIT_S + 3.0:
            executor.spin_once(timeout_sec=0.05)
            if recorder.get_clock().now().nanoseconds - recorder.recorded.sim_received_ns < 0.1 * NS_PER_S \
                    and time.monotonic() - stopped >= FINAL_VERDICT_WAIT_S:
                break
        executor.shutdown()
    finally:
        for name, process in processes.items():
            exit_codes.setdefault(name, stop_node(process, STOP_TIMEOUT_S))
        if server is not None:
            exit_codes["inference_server"] = server.stop(STOP_TIMEOUT_S)
        stop_stress(stressors)
        if opened:
            writer.close()
        rclpy.try_shutdown()
        claim.release()
    recorder.recorded.finish()
    summary = summarise(recorder.recorded, config, duration_s)
    samples, growth = memory_summary(memory)
    if server is not None:
        summary["remote"] = remote_report
    summary.update(cell=cell, stress_processes=stress, memory_mb=samples, memory_growth_pct=growth,
                   exit_codes=exit_codes,
                   crashed=sorted(set(crashed) | {name for name, code in exit_codes.items() if code != 0}))
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot_joints(recorder.recorded, config, out / "joints.png")
    return summary


def demo_failed(summary: dict[str, Any]) -> bool:
    """Any violation (or no verdict from the sim) or a crashed process fails the demo."""
    return summary["limit_violations"] != 0 or summary["acceleration_violations"] != 0 or bool(summary["crashed"])
