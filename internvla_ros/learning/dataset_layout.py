"""The LeRobotDataset v3.0 layout: paths, feature definitions and ``meta/info.json``.

Written from LeRobot's documented v3.0 format (``datasets/utils.py`` defaults), without depending on
lerobot (not installable here). One dataset directory holds ``meta/`` (info, stats, tasks, episodes),
``data/`` (one row per frame) and ``videos/<key>/`` (episodes of a camera concatenated per file). As
LeRobot does, a data or video file that has reached its size limit (``data_files_size_in_mb``,
``video_files_size_in_mb``) is closed at the next episode boundary and the next episode starts the next
file (``file-001``, ...; ``chunk-001`` after ``chunks_size`` files); the episodes table says where each
episode lies.

State and action are stored in the model's units, config joint order: joint positions, a velocity-state
joint (a conveyor) as its speed, and grippers as 0 (open) .. 1 (closed), which is what the policy
runtime feeds the model and reads back. Both are absolute; which action dims the model predicts as deltas
is kept in ``info.json`` under ``internvla_ros`` (ignored by lerobot) together with the camera slots.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CODEBASE_VERSION = "v3.0"
CHUNKS_SIZE = 1000
DATA_FILES_SIZE_IN_MB = 100
VIDEO_FILES_SIZE_IN_MB = 200
INFO_PATH = "meta/info.json"
STATS_PATH = "meta/stats.json"
TASKS_PATH = "meta/tasks.parquet"
CONVERSION_PATH = "meta/conversion.json"
CHUNK_FILE = "chunk-{chunk_index:03d}/file-{file_index:03d}"
EPISODES_PATH = "meta/episodes/" + CHUNK_FILE + ".parquet"
DATA_PATH = "data/" + CHUNK_FILE + ".parquet"
VIDEO_PATH = "videos/{video_key}/" + CHUNK_FILE + ".mp4"
STATE_KEY = "observation.state"
ACTION_KEY = "action"
IMAGE_PREFIX = "observation.images."
OWN_INFO_KEY = "internvla_ros"
MB = 1024 * 1024


@dataclass(frozen=True)
class FileLimits:
    """Sizes at which a data or video file is full (MB, as LeRobot's ``*_files_size_in_mb``)."""

    data_mb: float = DATA_FILES_SIZE_IN_MB
    video_mb: float = VIDEO_FILES_SIZE_IN_MB

    def __post_init__(self) -> None:
        if not (self.data_mb > 0 and self.video_mb > 0):
            raise DatasetError(f"file size limits must be positive MB, got data {self.data_mb}, video {self.video_mb}")


LEROBOT_LIMITS = FileLimits()  # LeRobot's defaults


def next_file(location: tuple[int, int]) -> tuple[int, int]:
    """The (chunk_index, file_index) after ``location``: ``chunks_size`` files per chunk directory."""
    chunk, file = location
    return (chunk + 1, 0) if file + 1 >= CHUNKS_SIZE else (chunk, file + 1)


DEFAULT_FEATURES: dict[str, dict[str, Any]] = {
    "timestamp": {"dtype": "float32", "shape": [1], "names": None},
    "frame_index": {"dtype": "int64", "shape": [1], "names": None},
    "episode_index": {"dtype": "int64", "shape": [1], "names": None},
    "index": {"dtype": "int64", "shape": [1], "names": None},
    "task_index": {"dtype": "int64", "shape": [1], "names": None},
}


class DatasetError(Exception):
    """A dataset that cannot be written or read as asked; the message names the problem and the fix."""


def video_key(camera: str) -> str:
    return IMAGE_PREFIX + camera


@dataclass(frozen=True)
class VideoSpec:
    """How a camera's frames are encoded (the ``info`` of its video feature)."""

    height: int
    width: int
    codec: str
    pix_fmt: str
    fps: float

    def info(self) -> dict[str, Any]:
        return {"video.height": self.height, "video.width": self.width, "video.codec": self.codec,
                "video.pix_fmt": self.pix_fmt, "video.is_depth_map": False, "video.fps": self.fps,
                "video.channels": 3, "has_audio": False}


@dataclass(frozen=True)
class DatasetSchema:
    """What a converted robot dataset holds: joints, cameras (with model slots) and the action layout."""

    robot_type: str
    fps: float
    joint_names: tuple[str, ...]
    cameras: dict[str, int]  # camera name -> model image slot (0 head, 1 left wrist, 2 right wrist)
    absolute_mask: tuple[bool, ...]  # per joint: the model predicts the absolute value (else a delta)

    @property
    def dim(self) -> int:
        return len(self.joint_names)

    def features(self, videos: dict[str, VideoSpec]) -> dict[str, dict[str, Any]]:
        vector = {"dtype": "float32", "shape": [self.dim], "names": list(self.joint_names)}
        features: dict[str, dict[str, Any]] = {STATE_KEY: dict(vector), ACTION_KEY: dict(vector)}
        for camera in self.cameras:
            spec = videos[camera]
            features[video_key(camera)] = {"dtype": "video", "shape": [spec.height, spec.width, 3],
                                           "names": ["height", "width", "channels"], "info": spec.info()}
        return features | DEFAULT_FEATURES

    def own_info(self) -> dict[str, Any]:
        return {"joint_names": list(self.joint_names), "camera_slots": dict(self.cameras),
                "absolute_mask": list(self.absolute_mask),
                "units": "joint positions; velocity-state joints as speed; grippers 0 open .. 1 closed"}


def build_info(schema: DatasetSchema, videos: dict[str, VideoSpec], episodes: int, frames: int,
               tasks: int, limits: FileLimits = LEROBOT_LIMITS) -> dict[str, Any]:
    """``meta/info.json`` with LeRobot v3.0's fields, plus the ``internvla_ros`` block."""
    return {
        "codebase_version": CODEBASE_VERSION,
        "robot_type": schema.robot_type,
        "total_episodes": episodes,
        "total_frames": frames,
        "total_tasks": tasks,
        "chunks_size": CHUNKS_SIZE,
        "data_files_size_in_mb": _number(limits.data_mb),
        "video_files_size_in_mb": _number(limits.video_mb),
        "fps": _number(schema.fps),
        "splits": {"train": f"0:{episodes}"},
        "data_path": DATA_PATH,
        "video_path": VIDEO_PATH if videos else None,
        "features": schema.features(videos),
        OWN_INFO_KEY: schema.own_info(),
    }


def _number(value: float) -> float | int:
    return int(value) if float(value).is_integer() else value


def write_json(path: Path, value: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=2) + "\n")


def read_info(root: Path) -> dict[str, Any]:
    """``meta/info.json`` of a dataset directory, checked to be a v3.0 dataset."""
    path = Path(root) / INFO_PATH
    try:
        info = json.loads(path.read_text())
    except FileNotFoundError as err:
        raise DatasetError(f"{root}: no {INFO_PATH}; pass a LeRobot v3.0 dataset directory "
                           "(made by `internvla dataset from-bags`)") from err
    except json.JSONDecodeError as err:
        raise DatasetError(f"{path}: not valid JSON ({err})") from err
    if info.get("codebase_version") != CODEBASE_VERSION:
        raise DatasetError(f"{path}: codebase_version {info.get('codebase_version')!r}; only {CODEBASE_VERSION} "
                           "datasets are read (convert older ones with lerobot's v2.1 -> v3.0 converter)")
    return info


def schema_from_info(info: dict[str, Any], root: Path) -> DatasetSchema:
    """The schema of a dataset; its ``internvla_ros`` block is required (it says which dims are deltas)."""
    own = info.get(OWN_INFO_KEY)
    features = info.get("features", {})
    if not isinstance(own, dict) or STATE_KEY not in features or ACTION_KEY not in features:
        raise DatasetError(f"{root}: {INFO_PATH} lacks {OWN_INFO_KEY!r} or the {STATE_KEY}/{ACTION_KEY} features; "
                           "convert the bags with `internvla dataset from-bags`")
    joints = tuple(own["joint_names"])
    mask = tuple(bool(v) for v in own["absolute_mask"])
    for key in (STATE_KEY, ACTION_KEY):
        if list(features[key]["shape"]) != [len(joints)]:
            raise DatasetError(f"{root}: feature {key} has shape {features[key]['shape']}, but {len(joints)} joints")
    if len(mask) != len(joints):
        raise DatasetError(f"{root}: absolute_mask has {len(mask)} entries for {len(joints)} joints")
    return DatasetSchema(robot_type=str(info.get("robot_type")), fps=float(info["fps"]), joint_names=joints,
                         cameras={str(k): int(v) for k, v in own["camera_slots"].items()}, absolute_mask=mask)
