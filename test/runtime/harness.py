"""A small robot, its statistics and a simulated clock loop shared by the runtime tests.

The loop advances integer-nanosecond time in fixed increments, feeds joint states and camera frames,
runs a policy with an artificial latency (the chunk is handed back ``latency_ns`` after its request) and
ticks the runtime, so every test is deterministic and takes no wall-clock time.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from internvla_ros.model.normalization import NormalizationStats
from internvla_ros.runtime.commands import ControlOutput
from internvla_ros.runtime.config import NS_PER_S, RuntimeConfig
from internvla_ros.runtime.mapping import ActionMapper
from internvla_ros.runtime.observation import Observation
from internvla_ros.runtime.scheduler import ChunkResult, PolicyRuntime

MS = 1_000_000
ROBOT_TYPE = "test_arm"
JOINTS = ("shoulder", "elbow", "gripper", "belt")
CAMERAS = ("head", "wrist")
ACTION_DIM = 32
CHUNK = 50
INSTRUCTION = "track the parcel"

# Three joints on two controller kinds: an arm on a joint_trajectory controller, a gripper and a
# velocity-commanded belt on forward_command controllers.
BASE_PARAMETERS: dict[str, Any] = {
    "robot_type": ROBOT_TYPE,
    "cameras.names": list(CAMERAS),
    "cameras.head.topic": "cameras/head/image_raw",
    "cameras.head.slot": 0,
    "cameras.wrist.topic": "cameras/wrist/image_raw",
    "cameras.wrist.slot": 1,
    "joints.names": list(JOINTS),
    "joints.limits.shoulder.min_position": -2.0,
    "joints.limits.shoulder.max_position": 2.0,
    "joints.limits.shoulder.max_velocity": 1.0,
    "joints.limits.shoulder.max_acceleration": 10.0,
    "joints.limits.elbow.min_position": -1.5,
    "joints.limits.elbow.max_position": 1.5,
    "joints.limits.elbow.max_velocity": 1.5,
    "joints.limits.elbow.max_acceleration": 15.0,
    "joints.limits.gripper.min_position": 0.0,
    "joints.limits.gripper.max_position": 0.08,
    "joints.limits.gripper.max_velocity": 0.5,
    "joints.limits.gripper.max_acceleration": 20.0,
    "joints.limits.gripper.max_jump": 0.02,
    "joints.limits.belt.min_position": 0.0,
    "joints.limits.belt.max_position": 0.5,
    "joints.limits.belt.max_velocity": 1.0,
    "joints.limits.belt.max_acceleration": 20.0,
    "joints.limits.belt.state_field": "velocity",
    "controllers.names": ["arm_controller", "gripper_controller", "belt_controller"],
    "controllers.arm_controller.type": "joint_trajectory",
    "controllers.arm_controller.joints": ["shoulder", "elbow"],
    "controllers.gripper_controller.type": "forward_command",
    "controllers.gripper_controller.joints": ["gripper"],
    "controllers.belt_controller.type": "forward_command",
    "controllers.belt_controller.joints": ["belt"],
    "action.absolute_mask": [False, False, True, True],
    "grippers.names": ["gripper"],
    "grippers.gripper.mode": "threshold",
    "grippers.gripper.threshold": 0.5,
    "grippers.gripper.open_position": 0.08,
    "grippers.gripper.closed_position": 0.0,
    "rates.inference_rate_hz": 5.0,
    "rates.control_rate_hz": 50.0,
    "rates.chunk_step_hz": 30.0,
    "execution.mode": "delay_compensated",
    "execution.blend_steps": 5,
    "execution.reference_steps": 30,
    "safety.max_jump": 0.1,
    "safety.camera_max_age_s": 0.2,
    "safety.joint_state_max_age_s": 0.1,
    "safety.dry_run": False,
}


def parameters(**overrides: Any) -> dict[str, Any]:
    """BASE_PARAMETERS with dotted overrides (``rates__control_rate_hz=100.0``); None removes a key."""
    params = dict(BASE_PARAMETERS)
    for key, value in overrides.items():
        dotted = key.replace("__", ".")
        if value is None:
            params.pop(dotted, None)
        else:
            params[dotted] = value
    return params


def make_config(**overrides: Any) -> RuntimeConfig:
    return RuntimeConfig.from_parameters(parameters(**overrides))


def write_stats(path: Path, dim: int = len(JOINTS), mean: float = 0.0, std: float = 1.0) -> Path:
    """A stats.json in the released layout for ROBOT_TYPE."""
    block = {"mean": [mean] * dim, "std": [std] * dim, "min": [-3.0] * dim, "max": [3.0] * dim}
    path.write_text(json.dumps({ROBOT_TYPE: {"observation.state": block, "action": block}}))
    return path


def make_runtime(tmp_path: Path, **overrides: Any) -> PolicyRuntime:
    config = make_config(**overrides)
    stats = NormalizationStats.load(write_stats(tmp_path / "stats.json"), ROBOT_TYPE)
    runtime = PolicyRuntime(config, ActionMapper(config, stats))
    runtime.set_instruction(INSTRUCTION)
    return runtime


def padded(actions: np.ndarray) -> np.ndarray:
    """(T, D) robot-space actions -> (T, ACTION_DIM) zero-padded, as the model outputs them."""
    out = np.zeros((actions.shape[0], ACTION_DIM))
    out[:, : actions.shape[1]] = actions
    return out


PolicyFn = Callable[[Observation], np.ndarray]


@dataclass
class SimRobot:
    """Joints that reach each command exactly; the belt reports its speed as velocity."""

    positions: np.ndarray
    state_fields: tuple[str, ...]

    def joint_state(self) -> tuple[list[str], list[float], list[float]]:
        pairs = list(zip(self.positions, self.state_fields, strict=True))
        positions = [0.0 if f == "velocity" else float(p) for p, f in pairs]
        velocities = [float(p) if f == "velocity" else 0.0 for p, f in pairs]
        return list(JOINTS), positions, velocities


@dataclass
class SimResult:
    outputs: list[ControlOutput] = field(default_factory=list)
    chunk_results: list[ChunkResult] = field(default_factory=list)
    observations: list[Observation] = field(default_factory=list)


@dataclass
class SimLoop:
    """Drives a runtime under a simulated clock. Rates in ns; a feed period of 0 stops that input."""

    runtime: PolicyRuntime
    policy: PolicyFn
    latency_ns: int | Callable[[int], int] = 100 * MS
    step_ns: int = MS
    joint_period_ns: int = 10 * MS
    camera_period_ns: int = 33 * MS
    scene: Callable[[int], Any] = lambda t: np.zeros(1)
    now_ns: int = 0
    robot: SimRobot | None = None
    pending: list[tuple[int, np.ndarray, int]] = field(default_factory=list)
    camera_outage: Mapping[str, tuple[int, int]] = field(default_factory=dict)
    joint_outage: tuple[int, int] | None = None

    step_jitter_ns: int = 0  # each step lasts step_ns + uniform[0, step_jitter_ns) (seeded)
    seed: int = 0

    def __post_init__(self) -> None:
        config = self.runtime.config
        if self.robot is None:
            self.robot = SimRobot(np.zeros(config.dim), tuple(j.state_field for j in config.joints))
        self._rng = np.random.default_rng(self.seed)
        self._next_joint_ns = self.now_ns
        self._next_camera_ns = self.now_ns

    def feed(self) -> None:
        t = self.now_ns
        if self.joint_period_ns and t >= self._next_joint_ns:
            self._next_joint_ns += self.joint_period_ns * ((t - self._next_joint_ns) // self.joint_period_ns + 1)
            out = self.joint_outage
            if not (out and out[0] <= t < out[1]):
                self.runtime.update_joint_state(t, *self.robot.joint_state())
        if self.camera_period_ns and t >= self._next_camera_ns:
            self._next_camera_ns += self.camera_period_ns * ((t - self._next_camera_ns) // self.camera_period_ns + 1)
            for camera in CAMERAS:
                outage = self.camera_outage.get(camera)
                if not (outage and outage[0] <= t < outage[1]):
                    self.runtime.update_camera(camera, t, self.scene(t))

    def start(self) -> None:
        self.feed()
        self.runtime.start(self.now_ns)

    def run_until(self, end_ns: int, result: SimResult | None = None) -> SimResult:
        result = result or SimResult()
        while self.now_ns <= end_ns:
            self.feed()
            t = self.now_ns
            for item in [p for p in self.pending if p[0] <= t]:
                self.pending.remove(item)
                result.chunk_results.append(self.runtime.submit_chunk(item[1], item[2], t))
            observation = self.runtime.poll_observation(t)
            if observation is not None:
                result.observations.append(observation)
                latency = self.latency_ns(t) if callable(self.latency_ns) else self.latency_ns
                self.pending.append((t + latency, self.policy(observation), observation.stamp_ns))
            output = self.runtime.tick(t)
            if output is not None:
                result.outputs.append(output)
                self.robot.positions = np.asarray(output.positions)
            jitter = int(self._rng.integers(0, self.step_jitter_ns)) if self.step_jitter_ns else 0
            self.now_ns += self.step_ns + jitter
        return result


def seconds(ns: int) -> float:
    return ns / NS_PER_S
