"""The commands of one run (a replay's, or a golden bag's) and the positions they command over time.

Each controller's commands become a commanded-position timeline: a forward command holds until the
next; trajectories go through the simulated joint_trajectory_controller (``internvla_ros.sim.trajectory``:
replacement from the desired state, cubic segments where velocities are given, the same rejections), so
the timeline is what the robot's controller would have executed. ``compare`` and the replay's plots
sample two runs on one grid.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from internvla_ros.replay.errors import ReplayError
from internvla_ros.replay.messages import ACTION_CHUNK, FLOAT64_MULTI_ARRAY, JOINT_TRAJECTORY, ChunkMessage
from internvla_ros.replay.reader import BagReader
from internvla_ros.replay.topics import TopicMap
from internvla_ros.runtime.commands import ControlOutput
from internvla_ros.runtime.config import RuntimeConfig
from internvla_ros.runtime.status import StatusReport
from internvla_ros.runtime.timeutil import stamp_to_ns
from internvla_ros.sim.trajectory import JointTrajectoryExecutor, Trajectory, TrajectoryPoint, TrajectoryRejected

MS = 1_000_000
SAMPLE_PERIOD_NS = 10 * MS


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
