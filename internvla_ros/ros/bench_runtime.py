"""Control-loop jitter while the model infers continuously, in the policy node's own process layout.

The same pieces as policy_node: PolicyRuntime, RuntimeDriver (control thread sleeping on an rclpy
clock, inference thread), the inference worker process running the default model, command messages
built and published over rclpy, and inputs fed from the main thread at camera and joint-state rates.
Only the sensor sources are synthetic. The inference rate is set above what the model can do, so
inference runs back to back for the whole measurement.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import rclpy
from rclpy.clock import Clock, ClockType
from rclpy.node import Node
from std_msgs.msg import Float64MultiArray
from trajectory_msgs.msg import JointTrajectory

from internvla_ros.model.normalization import NormalizationStats
from internvla_ros.paths import config_path, default_model_dir
from internvla_ros.ros.conversions import RclpyClock
from internvla_ros.ros.messages import forward_msg, trajectory_msg
from internvla_ros.ros.transport import use_frame_transport
from internvla_ros.runtime import ActionMapper, ControlOutput, PolicyRuntime, RuntimeConfig
from internvla_ros.runtime.driver import DEFAULT_CONTROL_PRIORITY, RuntimeDriver
from internvla_ros.runtime.policy_registry import NEURAL_POLICY
from internvla_ros.runtime.worker import InferenceWorker

CONTROL_RATE_HZ = 50.0
SATURATING_INFERENCE_HZ = 20.0  # far above what the model reaches here: inference never pauses
JOINT_STATE_HZ = 100.0
CAMERA_HZ = 30.0
CAMERA_SHAPE = (480, 640, 3)
BENCH_INSTRUCTION = "pick up the red block and place it in the blue bowl"


def _feed_inputs(runtime: PolicyRuntime, config: RuntimeConfig, clock: RclpyClock, stop: threading.Event) -> None:
    """Joint states and camera frames at their rates, from the calling thread (the node's executor thread)."""
    rng = np.random.default_rng(0)
    frames = {c.name: rng.integers(0, 256, CAMERA_SHAPE, dtype=np.uint8) for c in config.cameras}
    positions = [0.5 * (j.limits.min_position + j.limits.max_position) for j in config.joints]
    names = list(config.joint_names)
    next_joint = next_camera = clock.now_ns()
    while not stop.is_set():
        now = clock.now_ns()
        if now >= next_joint:
            runtime.update_joint_state(now, names, positions)
            next_joint += int(1e9 / JOINT_STATE_HZ)
        if now >= next_camera:
            for name, frame in frames.items():
                runtime.update_camera(name, now, frame.copy())  # a fresh array per message, as received
            next_camera += int(1e9 / CAMERA_HZ)
        stop.wait(max(0.0, (min(next_joint, next_camera) - clock.now_ns()) / 1e9))


def run_benchmark(duration_s: float, model: Path | None = None, cell: str = "dual_arm", threads: int = 1,
                  control_priority: int = DEFAULT_CONTROL_PRIORITY,
                  progress: Callable[[str], Any] = print) -> dict[str, Any]:
    overrides = {"rates.control_rate_hz": CONTROL_RATE_HZ, "rates.inference_rate_hz": SATURATING_INFERENCE_HZ,
                 "rates.foresight_rate_hz": SATURATING_INFERENCE_HZ, "safety.dry_run": False}
    config = RuntimeConfig.from_yaml(config_path(f"{cell}.yaml"), overrides=overrides)
    model = model or default_model_dir()
    runtime = PolicyRuntime(config, ActionMapper(config, NormalizationStats.load(model / "stats.json",
                                                                                 config.robot_type)))
    runtime.set_instruction(BENCH_INSTRUCTION)
    worker = InferenceWorker(NEURAL_POLICY, {"model": str(model),
                                                     "cameras": {c.name: c.slot for c in config.cameras}},
                             threads=threads)
    progress(f"starting the inference worker ({model}, {threads} thread(s))")
    info = worker.start()
    context = rclpy.context.Context()
    ticks: list[int] = []
    problems: list[str] = []
    clock = RclpyClock(Clock(clock_type=ClockType.STEADY_TIME))
    try:
        use_frame_transport()
        rclpy.init(context=context)
        node = Node("bench_runtime", context=context)
        publishers = {
            c.name: node.create_publisher(JointTrajectory, f"{c.name}/joint_trajectory", 10)
            if c.type == "joint_trajectory" else node.create_publisher(Float64MultiArray, f"{c.name}/commands", 10)
            for c in config.controllers
        }

        def publish(output: ControlOutput) -> None:
            for command in output.trajectories:
                publishers[command.controller].publish(trajectory_msg(command))
            for command in output.forward:
                publishers[command.controller].publish(forward_msg(command))

        driver = RuntimeDriver(runtime, worker, clock, publish, on_tick=ticks.append,
                               on_problem=lambda key, text: problems.append(text) if key == "priority" else None,
                               control_priority=control_priority)
        stop = threading.Event()
        progress(f"measuring {duration_s:.0f} s of control at {CONTROL_RATE_HZ:.0f} Hz with continuous inference")
        driver.start()
        timer = threading.Timer(duration_s, stop.set)
        timer.start()
        try:
            _feed_inputs(runtime, config, clock, stop)
        finally:
            driver.stop()
            timer.cancel()
            node.destroy_node()
    finally:
        worker.close()
        context.try_shutdown()
    status = runtime.status(clock.now_ns())
    periods_ms = np.diff(np.asarray(ticks, dtype=np.int64)) / 1e6
    jitter = np.abs(periods_ms - 1e3 / CONTROL_RATE_HZ)
    return {
        "control_rate_hz": round(float(1e3 / periods_ms.mean()), 3) if periods_ms.size else 0.0,
        "configured_control_rate_hz": CONTROL_RATE_HZ,
        "ticks": len(ticks),
        "jitter_p50_ms": round(float(np.percentile(jitter, 50)), 4),
        "jitter_p99_ms": round(float(np.percentile(jitter, 99)), 4),
        "jitter_max_ms": round(float(jitter.max()), 4),
        "missed_control_ticks": status.missed_control_ticks,
        "chunks": status.chunks_accepted,
        "inference_overruns": status.overruns,
        "inference_latency_mean_ms": round(status.inference_latency_mean_ns / 1e6, 2),
        "inference_rate_hz": round(status.inference_rate_hz, 3),
        "inference_threads": threads,
        "control_priority": control_priority if not problems else 0,
        "chunks_dropped": dict(status.dropped_chunks),
        "chunks_rejected": dict(status.rejected_chunks),
        "inference_failures": status.inference_failures,
        "last_error": status.last_error,
        "duration_s": duration_s,
        "worker": info,
        "layout": "control thread (rclpy steady clock) + inference thread + worker process, inputs from main thread",
    }


def write_json(result: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
