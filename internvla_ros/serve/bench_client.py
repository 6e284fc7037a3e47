"""One simulated robot of ``internvla bench serve``: a process sending observations to the inference server.

Each observation is what a policy node with the robot config would send: every configured camera at
the simulated cell's size (head 480x640, wrists 240x320) with fresh random pixels per request, the
history frame the one sent ``frame_history_steps`` chunk steps earlier (as the node's frame history
picks it), joint positions drawn within the limits and normalised with the model's statistics, the
foresight recomputed at the config's foresight rate relative to its inference rate. Everything random
comes from a generator seeded per robot, so a run sends the same observations every time.

A robot sends back to back (the next request when the previous chunk arrives, as a node whose
inference takes longer than its period does) or at a fixed rate. It counts the chunks that arrive in
the measurement window (after the warm-up) and their round-trip latencies, through the same client
(``serve.client.RemoteInference``) the policy node uses.
"""

from __future__ import annotations

import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

NS_PER_S = 1_000_000_000
WRIST_SLOTS_FROM = 1  # slot 0 is the head camera, every other slot a wrist camera
STATS_FILE = "stats.json"  # model.checkpoint's name for it; that module would pull torch into every robot
ERROR_PAUSE_S = 0.1  # after a failed request, as a node holding for its server would


@dataclass(frozen=True)
class RobotPlan:
    index: int
    endpoint: str
    config: str  # robot config YAML
    model: str  # the checkpoint directory (its stats.json normalises the state)
    seed: int
    rate_hz: float  # 0: back to back
    warmup_s: float
    duration_s: float
    instruction: str = "sort the parcels"
    token: str | None = None
    request_timeout_s: float = 60.0
    startup_timeout_s: float = 120.0


@dataclass
class RobotReport:
    index: int
    chunks: int = 0  # replies that arrived within the window
    requests: int = 0  # every request sent, warm-up included
    latency_ms: list[float] = field(default_factory=list)  # round trip of each chunk counted
    errors: list[str] = field(default_factory=list)
    fatal: str = ""  # the robot could not run at all

    def percentile(self, q: float) -> float | None:
        return round(float(np.percentile(self.latency_ms, q)), 2) if self.latency_ms else None


class ObservationSource:
    """The robot's observations, one per call, from a seeded generator."""

    def __init__(self, config_path: Path, model: Path, seed: int, instruction: str) -> None:
        from internvla_ros.model.normalization import NormalizationStats
        from internvla_ros.runtime import ActionMapper, RuntimeConfig
        from internvla_ros.runtime.node_parameters import NOT_ROBOT_CONFIG
        from internvla_ros.runtime.observation import FrameHistory
        from internvla_ros.sim.render import HEAD_SIZE, WRIST_SIZE

        config = RuntimeConfig.from_yaml(config_path, ignore=NOT_ROBOT_CONFIG)
        self._mapper = ActionMapper(config, NormalizationStats.load(model / STATS_FILE, config.robot_type))
        self._rng = np.random.default_rng(seed)
        self._cameras = [(c.name, c.slot, HEAD_SIZE if c.slot < WRIST_SLOTS_FROM else WRIST_SIZE)
                         for c in config.cameras]
        history_ns = config.execution.frame_history_steps * config.rates.chunk_step_ns
        self._history = {name: FrameHistory(history_ns) for name, _, _ in self._cameras}
        self._history_ns = history_ns
        self._low = np.asarray([j.limits.min_position for j in config.joints])
        self._high = np.asarray([j.limits.max_position for j in config.joints])
        rates = config.rates
        self._foresight_every = max(1, round(rates.inference_rate_hz / rates.foresight_rate_hz)) \
            if rates.foresight_rate_hz > 0 else 0
        self._instruction = instruction
        self.robot_type = config.robot_type
        self._count = 0

    def next(self, now_ns: int) -> Any:
        from internvla_ros.runtime.observation import CameraFrames, Observation

        cameras = {}
        for name, slot, (height, width) in self._cameras:
            image = self._rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
            history = self._history[name]
            history.add(now_ns, image)
            older = history.before(now_ns - self._history_ns)
            assert older is not None
            cameras[name] = CameraFrames(slot, image, now_ns, older[1], older[0])
        state = self._mapper.model_state(self._rng.uniform(self._low, self._high))
        recompute = bool(self._foresight_every) and self._count % self._foresight_every == 0
        self._count += 1
        return Observation(stamp_ns=now_ns, request_ns=now_ns, cameras=cameras, state=state,
                           normalized_state=self._mapper.normalized_state(state), instruction=self._instruction,
                           recompute_foresight=recompute, decode_preview=False)


def run_robot(plan: RobotPlan, ready: Any, reports: Any) -> None:
    """The robot process: connect, wait for the others (``ready``, a Barrier), send, report to ``reports``."""
    report = RobotReport(plan.index)
    try:
        _drive(plan, ready, report)
    except Exception as err:  # reported to the bench, which says which robot failed and why
        report.fatal = f"{type(err).__name__}: {err}\n{traceback.format_exc(limit=3)}"
        ready.abort()
    reports.put(report)


def _drive(plan: RobotPlan, ready: Any, report: RobotReport) -> None:
    from internvla_ros.runtime.worker import InferenceError
    from internvla_ros.serve.client import RemoteInference

    source = ObservationSource(Path(plan.config), Path(plan.model), plan.seed, plan.instruction)
    client = RemoteInference(plan.endpoint, source.robot_type, token=plan.token)
    client.start(timeout_s=plan.startup_timeout_s)
    ready.wait(plan.startup_timeout_s)
    released = time.monotonic_ns()
    window_start = released + round(plan.warmup_s * NS_PER_S)
    window_end = window_start + round(plan.duration_s * NS_PER_S)
    period = round(NS_PER_S / plan.rate_hz) if plan.rate_hz > 0 else 0
    next_send = released
    try:
        while (now := time.monotonic_ns()) < window_end:
            if period and next_send > now:
                time.sleep((next_send - now) / NS_PER_S)
            observation = source.next(time.monotonic_ns())
            sent = time.monotonic_ns()
            next_send = max(next_send + period, sent) if period else sent
            report.requests += 1
            try:
                client.infer(observation, timeout_s=plan.request_timeout_s)
            except InferenceError as err:
                report.errors.append(str(err))
                time.sleep(ERROR_PAUSE_S)
                continue
            arrived = time.monotonic_ns()
            if window_start <= arrived < window_end:
                report.chunks += 1
                report.latency_ms.append((arrived - sent) / 1e6)
    finally:
        client.close()
