"""Reads a LeRobotDataset v3.0 written by :mod:`internvla_ros.learning.dataset_writer` (or laid out alike).

The per-frame vectors are small and read whole; camera frames are decoded once, in order, into a
memory-mapped cache of model-sized letterboxed frames (``frames_<camera>.npy`` in a cache directory),
so training reads any frame at random without seeking in the video.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from internvla_ros.learning.dataset_layout import (
    ACTION_KEY,
    EPISODES_PATH,
    STATE_KEY,
    TASKS_PATH,
    DatasetError,
    DatasetSchema,
    read_info,
    schema_from_info,
    video_key,
)
from internvla_ros.learning.dataset_video import decode_frames
from internvla_ros.model.preprocessing import frames_to_tensor, resize_with_pad


@dataclass(frozen=True)
class Episode:
    index: int
    start: int  # global frame index of its first frame
    stop: int  # one past its last frame
    task: str


@dataclass(frozen=True)
class RobotDataset:
    root: Path
    schema: DatasetSchema
    states: np.ndarray  # (N, D) float32
    actions: np.ndarray  # (N, D) float32
    episode_of: np.ndarray  # (N,) episode index per frame
    episodes: tuple[Episode, ...]
    info: dict

    def __len__(self) -> int:
        return int(self.states.shape[0])

    def episode_arrays(self) -> list[tuple[np.ndarray, np.ndarray]]:
        return [(self.states[e.start:e.stop], self.actions[e.start:e.stop]) for e in self.episodes]

    def video_path(self, camera: str) -> Path:
        return self.root / self.info["video_path"].format(video_key=video_key(camera), chunk_index=0, file_index=0)


def _vectors(table: object, key: str, dim: int) -> np.ndarray:
    column = table.column(key).combine_chunks()  # type: ignore[attr-defined]
    return np.asarray(column.flatten(), dtype=np.float32).reshape(-1, dim)


def open_dataset(root: Path) -> RobotDataset:
    root = Path(root)
    info = read_info(root)
    schema = schema_from_info(info, root)
    data_files = sorted((root / "data").glob("chunk-*/file-*.parquet"))
    if not data_files:
        raise DatasetError(f"{root}: no data/chunk-*/file-*.parquet files")
    table = pq.read_table([str(p) for p in data_files]) if len(data_files) > 1 else pq.read_table(str(data_files[0]))
    table = table.sort_by("index")
    states, actions = _vectors(table, STATE_KEY, schema.dim), _vectors(table, ACTION_KEY, schema.dim)
    episode_of = np.asarray(table.column("episode_index"), dtype=np.int64)
    tasks = {row["task_index"]: row["task"] for row in pq.read_table(str(root / TASKS_PATH)).to_pylist()}
    rows = pq.read_table(str(root / EPISODES_PATH.format(chunk_index=0, file_index=0))).to_pylist()
    episodes = tuple(Episode(r["episode_index"], r["dataset_from_index"], r["dataset_to_index"], r["tasks"][0])
                     for r in sorted(rows, key=lambda r: r["episode_index"]))
    if len(states) != info["total_frames"] or sum(e.stop - e.start for e in episodes) != len(states):
        raise DatasetError(f"{root}: {len(states)} data rows, but info.json says {info['total_frames']} frames and "
                           "the episodes table covers another count; the dataset is incomplete")
    if not set(tasks.values()) >= {e.task for e in episodes}:
        raise DatasetError(f"{root}: an episode names a task missing from {TASKS_PATH}")
    return RobotDataset(root, schema, states, actions, episode_of, episodes, info)


def frame_cache(dataset: RobotDataset, camera: str, cache_dir: Path, size: tuple[int, int]) -> np.ndarray:
    """(N, H, W, 3) uint8 letterboxed frames of one camera, decoded once into ``cache_dir`` (memory-mapped).

    The cache is reused while the video file is unchanged (its size and mtime are recorded beside it).
    """
    video = dataset.video_path(camera)
    if not video.is_file():
        raise DatasetError(f"{video}: missing video of camera {camera}")
    cache_dir.mkdir(parents=True, exist_ok=True)
    path, tag_path = cache_dir / f"frames_{camera}.npy", cache_dir / f"frames_{camera}.json"
    stat = video.stat()
    tag = {"video": str(video.resolve()), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns, "size": list(size),
           "frames": len(dataset)}
    if path.is_file() and tag_path.is_file() and json.loads(tag_path.read_text()) == tag:
        return np.load(path, mmap_mode="r")
    frames = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(len(dataset), *size, 3))
    count = 0
    for count, rgb in enumerate(decode_frames(video), start=1):
        if count > len(dataset):
            break
        boxed = resize_with_pad(frames_to_tensor([rgb]), size[0], size[1])
        frames[count - 1] = (boxed[0].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
    if count != len(dataset):
        raise DatasetError(f"{video}: {count} frames decoded, the dataset has {len(dataset)}; the video is incomplete")
    frames.flush()
    tag_path.write_text(json.dumps(tag))
    return np.load(path, mmap_mode="r")
