"""Compares the replay's commands with a golden bag: a previous replay, or the robot's own recording.

Each controller's commands become a commanded-position timeline: a forward command holds until the
next; trajectories go through the simulated joint_trajectory_controller (``internvla_ros.sim.trajectory``:
replacement from the desired state, cubic segments where velocities are given, the same rejections), so
the timeline is what the robot's controller would have executed. Both timelines are sampled on one grid
over the time both cover, and each joint gets a max and an RMS deviation. Message timing is compared by
nearest stamp, chunks by their observation stamp.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from internvla_ros.replay.errors import ReplayError
from internvla_ros.replay.messages import (
    ACTION_CHUNK,
    FLOAT64_MULTI_ARRAY,
    JOINT_TRAJECTORY,
    ChunkMessage,
)
from internvla_ros.replay.reader import BagReader
from internvla_ros.replay.topics import TopicMap
from internvla_ros.runtime.commands import ControlOutput
from internvla_ros.runtime.config import RuntimeConfig
from internvla_ros.runtime.status import StatusReport
from internvla_ros.runtime.timeutil import stamp_to_ns
from internvla_ros.sim.trajectory import JointTrajectoryExecutor, Trajectory, TrajectoryPoint, TrajectoryRejected

MS = 1_000_000
SAMPLE_PERIOD_NS = 10 * MS


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


@dataclass
class TrajectoryRecord:
    start_ns: int  # header stamp, or the log time when the stamp is 0 ("start when received")
    times_ns: np.ndarray  # (points,) time_from_start
    positions: np.ndarray  # (points, joints) in the controller's joint order
    velocities: np.ndarray | None = None  # (points, joints), None for positions-only points
    log_ns: int | None = None  # when the controller received it (the start when None)
    stamp_ns: int | None = None  # the header stamp as sent (0 = "start when received"); start_ns when None

    @property
    def received_ns(self) -> int:
        return self.start_ns if self.log_ns is None else self.log_ns

    def trajectory(self, joints: tuple[str, ...]) -> Trajectory:
        velocities = self.velocities
        points = tuple(TrajectoryPoint(self.positions[k], None if velocities is None else velocities[k],
                                       int(self.times_ns[k])) for k in range(self.times_ns.size))
        return Trajectory(joints, self.start_ns if self.stamp_ns is None else self.stamp_ns, points)


@dataclass
class CommandLog:
    """Every command of one run, per controller, in time order (kept in memory: commands are small)."""

    trajectories: dict[str, list[TrajectoryRecord]] = field(default_factory=dict)
    forward: dict[str, list[tuple[int, np.ndarray]]] = field(default_factory=dict)
    chunks: list[tuple[int, int]] = field(default_factory=list)  # (stamp, observation stamp)
    has_chunks: bool = False

    def message_stamps(self, controller: str) -> np.ndarray:
        if controller in self.trajectories:
            return np.asarray([r.start_ns for r in self.trajectories[controller]], dtype=np.int64)
        return np.asarray([s for s, _ in self.forward.get(controller, [])], dtype=np.int64)


class CommandRecorder:
    """A ReplaySink that keeps the replay's own commands for the comparison and the plots."""

    def __init__(self, config: RuntimeConfig) -> None:
        self.log = CommandLog(has_chunks=True)
        for controller in config.controllers:
            target = self.log.trajectories if controller.type == "joint_trajectory" else self.log.forward
            target[controller.name] = []

    def on_control(self, output: ControlOutput) -> None:
        for command in output.trajectories:
            self.log.trajectories[command.controller].append(TrajectoryRecord(
                command.stamp_ns, np.asarray([p.time_from_start_ns for p in command.points], dtype=np.int64),
                np.asarray([p.positions for p in command.points], dtype=np.float64),
                np.asarray([p.velocities for p in command.points], dtype=np.float64), output.stamp_ns))
        for command in output.forward:
            self.log.forward[command.controller].append((output.stamp_ns, np.asarray(command.values, np.float64)))

    def on_chunk(self, chunk: ChunkMessage) -> None:
        self.log.chunks.append((chunk.stamp_ns, chunk.obs_stamp_ns))

    def on_status(self, status: StatusReport) -> None:
        return


def load_golden(path: Path, config: RuntimeConfig, topics: TopicMap, reader_factory: Any) -> CommandLog:
    """The command topics of a golden bag, in the config's joint order per controller."""
    reader: BagReader = reader_factory(path)
    with reader:
        assert reader.info is not None
        present = reader.info.topics
        wanted = {t: (c, JOINT_TRAJECTORY) for c, t in topics.trajectories.items()}
        wanted |= {t: (c, FLOAT64_MULTI_ARRAY) for c, t in topics.forward.items()}
        found = [t for t in wanted if t in present]
        if not found:
            msg = (f"{path}: none of the command topics the config produces is in the golden bag; expected "
                   f"{sorted(wanted)}; the bag has {reader.info.describe_topics()}")
            raise ReplayError(msg)
        for topic in found:
            if present[topic].msgtype != wanted[topic][1]:
                msg = f"{path}: {topic} has type {present[topic].msgtype}, expected {wanted[topic][1]}"
                raise ReplayError(msg)
        chunk_topic = topics.action_chunk if topics.action_chunk in present else None
        if chunk_topic and present[chunk_topic].msgtype != ACTION_CHUNK:
            chunk_topic = None
        log = CommandLog(has_chunks=chunk_topic is not None)
        joints = {c.name: c.joints for c in config.controllers}
        for topic in found:
            controller, msgtype = wanted[topic]
            (log.trajectories if msgtype == JOINT_TRAJECTORY else log.forward)[controller] = []
        for topic, stamp, message in reader.messages([*found, *([chunk_topic] if chunk_topic else [])]):
            if topic == chunk_topic:
                log.chunks.append((stamp_to_ns(message.header.stamp) or stamp, stamp_to_ns(message.observation_stamp)))
                continue
            controller, msgtype = wanted[topic]
            if msgtype == JOINT_TRAJECTORY:
                record = _trajectory_record(message, stamp, joints[controller])
                if record is not None:
                    log.trajectories[controller].append(record)
            elif len(message.data) == len(joints[controller]):
                log.forward[controller].append((stamp, np.asarray(message.data, np.float64)))
        return log


def _trajectory_record(message: Any, log_ns: int, joints: tuple[str, ...]) -> TrajectoryRecord | None:
    names = list(message.joint_names)
    if not message.points or sorted(names) != sorted(joints):
        return None
    order = [names.index(j) for j in joints]
    positions = np.asarray([np.asarray(p.positions, np.float64)[order] for p in message.points])
    times = np.asarray([stamp_to_ns(p.time_from_start) for p in message.points], dtype=np.int64)
    velocities = None
    if all(len(p.velocities) == len(names) for p in message.points):
        velocities = np.asarray([np.asarray(p.velocities, np.float64)[order] for p in message.points])
    stamp = stamp_to_ns(message.header.stamp)
    return TrajectoryRecord(stamp or log_ns, times, positions, velocities, log_ns, stamp)


@dataclass(frozen=True)
class Timeline:
    positions: np.ndarray  # (len(grid), joints); NaN before the first command
    rejected: int = 0  # trajectories the controller would have refused


def sample(log: CommandLog, controller: str, grid_ns: np.ndarray, joints: tuple[str, ...]) -> Timeline:
    """The commanded positions at each grid time, as the controller would have executed them."""
    out = np.full((grid_ns.size, len(joints)), np.nan)
    if controller in log.trajectories:
        records = sorted(log.trajectories[controller], key=lambda r: r.received_ns)
        if not records:
            return Timeline(out)
        executor = JointTrajectoryExecutor(joints, records[0].positions[0])
        next_record, rejected, running = 0, 0, False
        for i, t in enumerate(grid_ns):
            while next_record < len(records) and records[next_record].received_ns <= t:
                record = records[next_record]
                next_record += 1
                try:
                    executor.submit(record.trajectory(joints), record.received_ns)
                    running = True
                except TrajectoryRejected:
                    rejected += 1
            if running:
                out[i] = executor.sample(int(t))[0]
        rejected += sum(1 for r in records[next_record:] if _rejects(r, joints))
        return Timeline(out, rejected)
    else:
        commands = log.forward.get(controller, [])
        stamps = [s for s, _ in commands]
        for i, t in enumerate(grid_ns):
            k = bisect.bisect_right(stamps, int(t)) - 1
            if k >= 0:
                out[i] = commands[k][1]
    return Timeline(out)


def _rejects(record: TrajectoryRecord, joints: tuple[str, ...]) -> bool:
    """Whether a trajectory after the compared span would be refused (checked on a fresh controller)."""
    try:
        JointTrajectoryExecutor(joints, record.positions[0]).submit(record.trajectory(joints), record.received_ns)
    except TrajectoryRejected:
        return True
    return False


def span(log: CommandLog) -> tuple[int, int] | None:
    stamps = [s for c in [*log.trajectories, *log.forward] for s in log.message_stamps(c).tolist()]
    return (min(stamps), max(stamps)) if stamps else None


def grid_between(first_ns: int, last_ns: int) -> np.ndarray:
    return np.arange(first_ns, last_ns + 1, SAMPLE_PERIOD_NS, dtype=np.int64)


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
