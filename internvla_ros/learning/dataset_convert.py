"""rosbag2 recordings -> a LeRobotDataset v3.0, resampled at a fixed rate without looking ahead.

Each bag is streamed in log-time order (the time the recorder received a message). Frames are
sampled on a grid at ``fps`` from the bag's first message; a frame at time T takes, per topic, the
latest message received at or before T, and only if it is at most that topic's maximum age old
(joint states and cameras: the config's ``safety`` ages, as the node itself would refuse them). A frame
without fresh data is dropped and counted by reason, and ends the episode: an episode is a run of
consecutive frames with one task, so its timestamps are exactly ``frame_index / fps``. A new bag or a
new instruction starts a new episode.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from internvla_ros.learning.dataset_actions import ActionSource, ControllerActions, TeleopActions
from internvla_ros.learning.dataset_layout import (
    CONVERSION_PATH,
    DATA_FILES_SIZE_IN_MB,
    VIDEO_FILES_SIZE_IN_MB,
    DatasetError,
    DatasetSchema,
    FileLimits,
    write_json,
)
from internvla_ros.learning.dataset_video import CODECS
from internvla_ros.learning.dataset_writer import DatasetWriter
from internvla_ros.replay.errors import ReplayError
from internvla_ros.replay.messages import STRING, make_typestore
from internvla_ros.replay.pipeline import check_instruction, choose_namespace, load_config, select_inputs
from internvla_ros.replay.reader import BagReader
from internvla_ros.replay.topics import TopicMap, resolve
from internvla_ros.runtime.config import NS_PER_S, RuntimeConfig
from internvla_ros.runtime.errors import MappingError
from internvla_ros.runtime.images import ImageError, decode_rgb
from internvla_ros.runtime.mapping import ActionMapper


@dataclass(frozen=True)
class ConversionOptions:
    fps: float | None = None  # default: the config's chunk_step_hz (one frame per model action step)
    action_topic: str | None = None  # teleoperation: the leader arm's topic instead of the controllers'
    namespace: str | None = None  # default: the one namespace holding every input (as `internvla replay`)
    remaps: tuple[str, ...] = ()  # FROM:=TO topic remaps, as `internvla replay --remap`
    instruction: str | None = None  # replaces the bag's instruction topic
    max_state_age_s: float | None = None  # default: safety.joint_state_max_age_s
    max_camera_age_s: float | None = None  # default: safety.camera_max_age_s
    max_action_age_s: float | None = None  # default: forward commands held (as the controller); teleop: state age
    codec: str = "h264"
    force: bool = False
    data_file_size_mb: float = DATA_FILES_SIZE_IN_MB  # a data file this full ends at the next episode
    video_file_size_mb: float = VIDEO_FILES_SIZE_IN_MB  # likewise each camera's video file


@dataclass
class ConversionReport:
    frames: int = 0
    episodes: int = 0
    bags: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    invalid: Counter[str] = field(default_factory=Counter)
    bag_seconds: float = 0.0
    wall_s: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def frames_per_s(self) -> float:
        return self.frames / self.wall_s if self.wall_s > 0 else float("inf")


@dataclass(frozen=True)
class _BagPlan:
    path: Path
    topics: TopicMap
    cameras: dict[str, str]  # camera -> the topic read (raw or /compressed)
    action: Callable[[], ActionSource]


def _plan(path: Path, config: RuntimeConfig, mapper: ActionMapper, options: ConversionOptions) -> _BagPlan:
    """Checks one bag holds everything the conversion needs (raises ReplayError with the reason)."""
    with BagReader(path, make_typestore()) as reader:
        bag = reader.info
    assert bag is not None
    namespace = options.namespace or choose_namespace(bag, config, options.remaps)
    topics = TopicMap.from_config(config, namespace, options.remaps)
    cameras = select_inputs(bag, topics)
    check_instruction(bag, topics, options.instruction or "", [])
    if topics.instruction in bag.topics and bag.topics[topics.instruction].msgtype != STRING:
        msgtype = bag.topics[topics.instruction].msgtype
        raise ReplayError(f"{path}: {topics.instruction} carries {msgtype}, not {STRING}")
    state_age = round((options.max_state_age_s or config.safety.joint_state_max_age_s) * NS_PER_S)
    if options.action_topic:
        topic = resolve(options.action_topic, namespace)
        if topic not in bag.topics:
            raise ReplayError(f"{path}: --action-topic {topic} is not in the bag; it has {bag.describe_topics()}")
        msgtype = bag.topics[topic].msgtype
        age = round(options.max_action_age_s * NS_PER_S) if options.max_action_age_s else state_age
        try:
            TeleopActions(config, topic, msgtype, mapper, age)
        except ValueError as err:
            raise ReplayError(f"{path}: {err}") from err
        return _BagPlan(path, topics, cameras, lambda: TeleopActions(config, topic, msgtype, mapper, age))
    age_ns = round(options.max_action_age_s * NS_PER_S) if options.max_action_age_s else None
    source = ControllerActions(config, topics, age_ns)
    missing = sorted(t for t in source.topics if t not in bag.topics)
    if missing:
        raise ReplayError(f"{path}: the bag lacks the command topics {', '.join(missing)} of the config's controllers; "
                          "record them, or pass --action-topic for a teleoperated robot")
    for topic, msgtype in source.topics.items():
        if bag.topics[topic].msgtype != msgtype:
            raise ReplayError(f"{path}: {topic} carries {bag.topics[topic].msgtype}; the controller takes {msgtype}")
    return _BagPlan(path, topics, cameras, lambda: ControllerActions(config, topics, age_ns))


class _Sampler:
    """The latest message per input of one bag, and the frame (or the reason for none) at a time T."""

    def __init__(self, plan: _BagPlan, config: RuntimeConfig, mapper: ActionMapper, options: ConversionOptions,
                 report: ConversionReport) -> None:
        self.plan, self.config, self.mapper, self.report = plan, config, mapper, report
        self.action = plan.action()
        self.instruction = options.instruction or None
        self.state_age = round((options.max_state_age_s or config.safety.joint_state_max_age_s) * NS_PER_S)
        self.camera_age = round((options.max_camera_age_s or config.safety.camera_max_age_s) * NS_PER_S)
        self.state: tuple[int, np.ndarray] | None = None
        self.images: dict[str, tuple[int, Any]] = {}
        self.decoded: dict[str, tuple[int, np.ndarray]] = {}
        self._camera_of = {topic: camera for camera, topic in plan.cameras.items()}
        self._override = bool(options.instruction)

    @property
    def topics(self) -> list[str]:
        topics = [self.plan.topics.joint_states, *self.plan.cameras.values(), *self.action.topics]
        return topics if self._override else [*topics, self.plan.topics.instruction]

    def apply(self, topic: str, stamp: int, message: Any) -> None:
        if topic == self.plan.topics.joint_states:
            try:
                self.state = (stamp, self.mapper.joint_values(message.name, message.position, message.velocity))
            except MappingError:
                self.report.invalid["joint_states"] += 1
        elif topic in self._camera_of:
            self.images[self._camera_of[topic]] = (stamp, message)
        elif topic in self.action.topics:
            self.action.apply(topic, stamp, message, None if self.state is None else self.state[1])
        elif topic == self.plan.topics.instruction and message.data.strip():
            self.instruction = message.data

    def frame(self, t: int) -> tuple[tuple[str, np.ndarray, np.ndarray, dict[str, np.ndarray]] | None, str]:
        if self.instruction is None:
            return None, "no_instruction"
        if self.state is None or t - self.state[0] > self.state_age:
            return None, "stale_state" if self.state else "no_state"
        action, reason = self.action.value_at(t)
        if action is None:
            return None, reason
        images = {}
        for camera in self.plan.cameras:
            latest = self.images.get(camera)
            if latest is None or t - latest[0] > self.camera_age:
                return None, f"stale_camera:{camera}" if latest else f"no_camera:{camera}"
            cached = self.decoded.get(camera)
            if cached is None or cached[0] != latest[0]:
                try:
                    cached = (latest[0], decode_rgb(latest[1]))
                except ImageError:
                    self.report.invalid[f"camera:{camera}"] += 1
                    return None, f"bad_image:{camera}"
                self.decoded[camera] = cached
            images[camera] = cached[1]
        state = self.mapper.model_state(self.state[1])
        return (self.instruction, state, self.mapper.model_state(action), images), ""


def _convert_bag(plan: _BagPlan, sampler: _Sampler, writer: DatasetWriter, fps: float,
                 report: ConversionReport) -> None:
    task: str | None = None

    def emit(t: int) -> None:
        nonlocal task
        frame, reason = sampler.frame(t)
        if frame is None:
            report.dropped[reason] += 1
            writer.end_episode()
            task = None
            return
        text, state, action, images = frame
        if text != task:
            writer.begin_episode(text)
            task = text
        writer.add_frame(state, action, images)
        report.frames += 1

    with BagReader(plan.path, make_typestore()) as reader:
        start = end = None
        tick = 0
        for topic, stamp, message in reader.messages(sampler.topics):
            if start is None:
                start = stamp
            while (t := start + round(tick * NS_PER_S / fps)) < stamp:
                emit(t)
                tick += 1
            sampler.apply(topic, stamp, message)
            end = stamp
        while start is not None and end is not None and (t := start + round(tick * NS_PER_S / fps)) <= end:
            emit(t)
            tick += 1
    writer.end_episode()
    if start is not None and end is not None:
        report.bag_seconds += (end - start) / NS_PER_S
    report.invalid["rejected_commands"] += sampler.action.rejected


def convert_bags(bags: Sequence[Path], config_path: Path, out: Path, options: ConversionOptions,
                 announce: Callable[[str], None] | None = None) -> ConversionReport:
    """Converts ``bags`` (in order, one or more episodes each) into a dataset at ``out``."""
    started = time.monotonic()
    config = load_config(Path(config_path))
    mapper = ActionMapper(config, stats=None)  # type: ignore[arg-type]  # only the joint-space half is used
    fps = options.fps or config.rates.chunk_step_hz
    if not fps > 0:
        raise DatasetError(f"--fps {fps}: must be positive")
    if options.codec not in CODECS:
        raise DatasetError(f"--codec {options.codec}: choose one of {', '.join(CODECS)}")
    limits = FileLimits(options.data_file_size_mb, options.video_file_size_mb)
    plans = [_plan(Path(bag), config, mapper, options) for bag in bags]  # every bag checked before writing
    schema = DatasetSchema(robot_type=config.robot_type, fps=fps, joint_names=config.joint_names,
                           cameras={c.name: c.slot for c in config.cameras}, absolute_mask=config.absolute_mask)
    writer = DatasetWriter(out, schema, CODECS[options.codec], force=options.force, limits=limits)
    report = ConversionReport()
    try:
        for plan in plans:
            before = report.frames
            _convert_bag(plan, _Sampler(plan, config, mapper, options, report), writer, fps, report)
            report.bags += 1
            if announce is not None:
                announce(f"{plan.path}: {report.frames - before} frames")
        report.info = writer.close()
    except BaseException:
        writer.abort()
        raise
    report.episodes = report.info["total_episodes"]
    report.invalid.update({f"resized:{c}": n for c, n in writer.resized_frames.items()})
    report.wall_s = time.monotonic() - started
    write_json(Path(out) / CONVERSION_PATH, {
        "bags": [str(p.path) for p in plans], "fps": fps, "frames": report.frames, "episodes": report.episodes,
        "dropped_frames": dict(report.dropped), "invalid_inputs": dict(report.invalid),
        "action_source": options.action_topic or "controllers",
        "max_age_s": {"joint_states": options.max_state_age_s or config.safety.joint_state_max_age_s,
                      "cameras": options.max_camera_age_s or config.safety.camera_max_age_s,
                      "actions": options.max_action_age_s},
    })
    return report
