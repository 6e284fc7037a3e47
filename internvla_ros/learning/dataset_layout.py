"""The LeRobotDataset v3.0 layout: paths, feature definitions and ``meta/info.json``.

Written from LeRobot's documented v3.0 format (``datasets/utils.py`` defaults), without depending on
lerobot (not installable here). One dataset directory holds ``meta/`` (info, stats, tasks, episodes),
``data/`` (one row per frame) and ``videos/<key>/`` (all episodes of a camera concatenated per file).

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
               tasks: int) -> dict[str, Any]:
    """``meta/info.json`` with LeRobot v3.0's fields, plus the ``internvla_ros`` block."""
    fps: float | int = int(schema.fps) if float(schema.fps).is_integer() else schema.fps
    return {
        "codebase_version": CODEBASE_VERSION,
        "robot_type": schema.robot_type,
        "total_episodes": episodes,
        "total_frames": frames,
        "total_tasks": tasks,
        "chunks_size": CHUNKS_SIZE,
        "data_files_size_in_mb": DATA_FILES_SIZE_IN_MB,
        "video_files_size_in_mb": VIDEO_FILES_SIZE_IN_MB,
        "fps": fps,
        "splits": {"train": f"0:{episodes}"},
        "data_path": DATA_PATH,
        "video_path": VIDEO_PATH if videos else None,
        "features": schema.features(videos),
        OWN_INFO_KEY: schema.own_info(),
    }


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
