"""Compares the replay's commands with a golden bag: a previous replay, or the robot's own recording.

Both runs' commanded-position timelines (``command_log``: what each controller would have executed) are
sampled on one grid over the time both cover, and each joint gets a max and an RMS deviation. Message
timing is compared by nearest stamp, chunks by their observation stamp.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from internvla_ros.replay.command_log import MS, CommandLog, grid_between, sample, span
from internvla_ros.replay.errors import ReplayError
from internvla_ros.runtime.config import RuntimeConfig


@dataclass(frozen=True)
class Tolerance:
    """Allowed deviations; joint units (rad, m, m/s) for positions."""

    position_max_abs: float = 0.01
    position_rms: float = 0.005
    joints: Mapping[str, tuple[float, float]] = field(default_factory=dict)  # joint -> (max_abs, rms)
    timing_max_ms: float = 1.0
    max_missing_chunks: int = 0
    max_extra_chunks: int = 0

    def for_joint(self, joint: str) -> tuple[float, float]:
        return self.joints.get(joint, (self.position_max_abs, self.position_rms))

    @classmethod
    def from_yaml(cls, path: Path) -> Tolerance:
        """``position: {max_abs, rms, joints: {name: {max_abs, rms}}}, timing: {max_ms}, chunks: {max_missing,
        max_extra}``; every key optional, unknown keys are errors."""
        try:
            document = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as err:
            msg = f"{path}: cannot read the tolerance file: {err}"
            raise ReplayError(msg) from err
        default = cls()
        reader = _Keys(document, str(path))
        position = reader.section("position", ("max_abs", "rms", "joints"))
        max_abs = position.number("max_abs", default.position_max_abs)
        rms = position.number("rms", default.position_rms)
        joints = {}
        for joint, limits in position.mapping("joints").items():
            entry = _Keys(limits, f"{path}: position.joints.{joint}", ("max_abs", "rms"))
            joints[str(joint)] = (entry.number("max_abs", max_abs), entry.number("rms", rms))
        timing = reader.section("timing", ("max_ms",))
        chunks = reader.section("chunks", ("max_missing", "max_extra"))
        reader.only(("position", "timing", "chunks"))
        return cls(max_abs, rms, joints, timing.number("max_ms", default.timing_max_ms),
                   int(chunks.number("max_missing", default.max_missing_chunks)),
                   int(chunks.number("max_extra", default.max_extra_chunks)))


class _Keys:
    def __init__(self, document: Any, where: str, allowed: tuple[str, ...] | None = None) -> None:
        if not isinstance(document, Mapping):
            msg = f"{where}: expected a mapping, got {type(document).__name__}"
            raise ReplayError(msg)
        self.document, self.where = document, where
        if allowed is not None:
            self.only(allowed)

    def only(self, allowed: tuple[str, ...]) -> None:
        unknown = sorted(set(map(str, self.document)) - set(allowed))
        if unknown:
            msg = f"{self.where}: unknown keys {unknown}; allowed {list(allowed)}"
            raise ReplayError(msg)

    def section(self, key: str, allowed: tuple[str, ...]) -> _Keys:
        return _Keys(self.document.get(key) or {}, f"{self.where}: {key}", allowed)

    def mapping(self, key: str) -> Mapping[str, Any]:
        value = self.document.get(key) or {}
        if not isinstance(value, Mapping):
            msg = f"{self.where}.{key}: expected a mapping of joint names"
            raise ReplayError(msg)
        return value

    def number(self, key: str, default: float) -> float:
        value = self.document.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            msg = f"{self.where}.{key}: expected a non-negative number, got {value!r}"
            raise ReplayError(msg)
        return float(value)



@dataclass(frozen=True)
class JointDeviation:
    joint: str
    controller: str
    max_abs: float
    rms: float
    samples: int
    allowed: tuple[float, float]

    @property
    def ok(self) -> bool:
        return self.samples > 0 and self.max_abs <= self.allowed[0] and self.rms <= self.allowed[1]


@dataclass(frozen=True)
class TimingDeviation:
    controller: str
    replay_messages: int
    golden_messages: int
    max_abs_ms: float
    mean_abs_ms: float


@dataclass
class Comparison:
    joints: list[JointDeviation]
    timing: list[TimingDeviation]
    missing_controllers: list[str]
    chunks_compared: bool
    matched_chunks: int
    missing_chunks: list[int]  # golden observation stamps with no replay chunk
    extra_chunks: list[int]  # replay observation stamps with no golden chunk
    chunk_timing_max_ms: float
    tolerance: Tolerance
    grid_ns: np.ndarray
    replay_samples: dict[str, np.ndarray]  # controller -> (grid, joints)
    golden_samples: dict[str, np.ndarray]
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def compare(replay: CommandLog, golden: CommandLog, config: RuntimeConfig, tolerance: Tolerance) -> Comparison:
    """Per-joint position deviations, per-controller timing and chunk matching, judged by ``tolerance``."""
    spans = [s for s in (span(replay), span(golden)) if s is not None]
    first = max(s[0] for s in spans) if len(spans) == 2 else 0
    last = min(s[1] for s in spans) if len(spans) == 2 else -1
    grid = grid_between(first, last) if last >= first else np.zeros(0, np.int64)
    joints, timing, missing, problems = [], [], [], []
    replay_samples, golden_samples = {}, {}
    for controller in config.controllers:
        name = controller.name
        if name not in golden.trajectories and name not in golden.forward:
            missing.append(name)
            problems.append(f"{name}: no commands in the golden bag")
            continue
        ours_line, theirs_line = sample(replay, name, grid, controller.joints), sample(golden, name, grid,
                                                                                       controller.joints)
        ours, theirs = ours_line.positions, theirs_line.positions
        replay_samples[name], golden_samples[name] = ours, theirs
        if ours_line.rejected:
            problems.append(f"{name}: the controller would reject {ours_line.rejected} of the replay's trajectories")
        both = ~(np.isnan(ours).any(axis=1) | np.isnan(theirs).any(axis=1))
        for j, joint in enumerate(controller.joints):
            diff = ours[both, j] - theirs[both, j]
            deviation = JointDeviation(joint, name, float(np.max(np.abs(diff))) if diff.size else float("nan"),
                                       float(np.sqrt(np.mean(diff**2))) if diff.size else float("nan"),
                                       int(diff.size), tolerance.for_joint(joint))
            joints.append(deviation)
            if not deviation.ok:
                problems.append(f"{joint}: max {deviation.max_abs:.6g} (allowed {deviation.allowed[0]:g}), "
                                f"rms {deviation.rms:.6g} (allowed {deviation.allowed[1]:g}) over "
                                f"{deviation.samples} samples")
        entry = _timing(name, replay.message_stamps(name), golden.message_stamps(name))
        timing.append(entry)
        if entry.replay_messages != entry.golden_messages:
            problems.append(f"{name}: {entry.replay_messages} commands in the replay, "
                            f"{entry.golden_messages} in the golden bag")
        if entry.max_abs_ms > tolerance.timing_max_ms:
            problems.append(f"{name}: command timing off by up to {entry.max_abs_ms:.3f} ms "
                            f"(allowed {tolerance.timing_max_ms:g} ms)")
    matched, missing_chunks, extra_chunks, chunk_ms = 0, [], [], 0.0
    if golden.has_chunks:
        ours_by_obs = {obs: stamp for stamp, obs in replay.chunks}
        theirs_by_obs = {obs: stamp for stamp, obs in golden.chunks}
        missing_chunks = sorted(set(theirs_by_obs) - set(ours_by_obs))
        extra_chunks = sorted(set(ours_by_obs) - set(theirs_by_obs))
        common = sorted(set(ours_by_obs) & set(theirs_by_obs))
        matched = len(common)
        if common:
            chunk_ms = max(abs(ours_by_obs[o] - theirs_by_obs[o]) for o in common) / MS
        if len(missing_chunks) > tolerance.max_missing_chunks:
            problems.append(f"chunks: {len(missing_chunks)} golden chunks missing from the replay "
                            f"(allowed {tolerance.max_missing_chunks})")
        if len(extra_chunks) > tolerance.max_extra_chunks:
            problems.append(f"chunks: {len(extra_chunks)} replay chunks not in the golden bag "
                            f"(allowed {tolerance.max_extra_chunks})")
        if chunk_ms > tolerance.timing_max_ms:
            problems.append(f"chunks: arrival off by up to {chunk_ms:.3f} ms (allowed {tolerance.timing_max_ms:g} ms)")
    if grid.size == 0:
        problems.append("the replay and the golden bag have no commands over a common time span")
    return Comparison(joints, timing, missing, golden.has_chunks, matched, missing_chunks, extra_chunks, chunk_ms,
                      tolerance, grid, replay_samples, golden_samples, problems)


def _timing(controller: str, ours: np.ndarray, theirs: np.ndarray) -> TimingDeviation:
    if ours.size == 0 or theirs.size == 0:
        return TimingDeviation(controller, int(ours.size), int(theirs.size), float("inf"), float("inf"))
    theirs = np.sort(theirs)
    index = np.clip(np.searchsorted(theirs, ours), 1, theirs.size - 1) if theirs.size > 1 else np.zeros_like(ours)
    nearest = np.minimum(np.abs(ours - theirs[index]), np.abs(ours - theirs[np.maximum(index - 1, 0)]))
    return TimingDeviation(controller, int(ours.size), int(theirs.size), float(nearest.max() / MS),
                           float(nearest.mean() / MS))
