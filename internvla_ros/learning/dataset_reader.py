"""Reads a LeRobotDataset v3.0 written by :mod:`internvla_ros.learning.dataset_writer` (or laid out alike).

The per-frame vectors are small and read whole (every data file); camera frames are decoded once, file
by file in the episodes' order, into a memory-mapped cache of model-sized letterboxed frames
(``frames_<camera>.npy`` in a cache directory), so training reads any frame at random without seeking.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from internvla_ros.learning.dataset_layout import (
    ACTION_KEY,
    STATE_KEY,
    TASKS_PATH,
    DatasetError,
    DatasetSchema,
    read_info,
    schema_from_info,
    video_key,
)
from internvla_ros.learning.dataset_video import decoded
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
    video_files: dict[str, tuple[Path, ...]]  # per camera, its files in dataset order

    def __len__(self) -> int:
        return int(self.states.shape[0])

    def episode_arrays(self) -> list[tuple[np.ndarray, np.ndarray]]:
        return [(self.states[e.start:e.stop], self.actions[e.start:e.stop]) for e in self.episodes]



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
    episode_files = sorted((root / "meta" / "episodes").glob("chunk-*/file-*.parquet"))
    if not episode_files:
        raise DatasetError(f"{root}: no meta/episodes/chunk-*/file-*.parquet files")
    rows = sorted((r for f in episode_files for r in pq.read_table(str(f)).to_pylist()),
                  key=lambda r: r["episode_index"])
    episodes = tuple(Episode(r["episode_index"], r["dataset_from_index"], r["dataset_to_index"], r["tasks"][0])
                     for r in rows)
    if len(states) != info["total_frames"] or sum(e.stop - e.start for e in episodes) != len(states):
        raise DatasetError(f"{root}: {len(states)} data rows, but info.json says {info['total_frames']} frames and "
                           "the episodes table covers another count; the dataset is incomplete")
    if not set(tasks.values()) >= {e.task for e in episodes}:
        raise DatasetError(f"{root}: an episode names a task missing from {TASKS_PATH}")
    videos = {camera: _video_files(root, info, camera, rows) for camera in schema.cameras}
    return RobotDataset(root, schema, states, actions, episode_of, episodes, info, videos)


def _video_files(root: Path, info: dict, camera: str, rows: list[dict]) -> tuple[Path, ...]:
    """The camera's files in dataset order; refuses a layout whose files do not hold the episodes in that
    order, one after another from each file's start (decoding file by file would pair the wrong frames)."""
    key = video_key(camera)
    files: list[tuple[int, int]] = []
    end_s = 0.0
    for row in rows:
        location = (row.get(f"videos/{key}/chunk_index", 0), row.get(f"videos/{key}/file_index", 0))
        if not files or files[-1] != location:
            if location in files:
                raise DatasetError(f"{root}: episode {row['episode_index']} returns to an earlier {key} file "
                                   f"{location}; episodes must fill the video files in order")
            files.append(location)
            end_s = 0.0
        start_s = float(row.get(f"videos/{key}/from_timestamp", end_s))
        if abs(start_s - end_s) > 1e-3:
            raise DatasetError(f"{root}: episode {row['episode_index']} starts at {start_s:.3f} s of its {key} file, "
                               f"not where the previous episode ended ({end_s:.3f} s); episodes must follow each "
                               "other in the video files")
        length = row["dataset_to_index"] - row["dataset_from_index"]
        end_s = float(row.get(f"videos/{key}/to_timestamp", start_s + length / float(info["fps"])))
    return tuple(root / info["video_path"].format(video_key=key, chunk_index=c, file_index=f) for c, f in files)


def frame_cache(dataset: RobotDataset, camera: str, cache_dir: Path, size: tuple[int, int],
                needed: np.ndarray | None = None) -> np.ndarray:
    """(N, H, W, 3) uint8 letterboxed frames of one camera, decoded once into ``cache_dir`` (memory-mapped).

    ``needed`` (N booleans): only those frames are converted and stored, the others stay black (a sparse
    file: training at a sample stride of 5 stores a fifth of them). The cache is reused while the video
    files and the needed frames are unchanged (their sizes, mtimes and a digest are recorded beside it).
    """
    videos = dataset.video_files[camera]
    for video in videos:
        if not video.is_file():
            raise DatasetError(f"{video}: missing video of camera {camera}")
    cache_dir.mkdir(parents=True, exist_ok=True)
    path, tag_path = cache_dir / f"frames_{camera}.npy", cache_dir / f"frames_{camera}.json"
    tag: dict = {"videos": [[str(v.resolve()), v.stat().st_size, v.stat().st_mtime_ns] for v in videos],
                 "size": list(size), "frames": len(dataset)}
    if len(videos) == 1:  # the tag of a one-file dataset as it was before files rolled over: caches stay valid
        tag = {"video": tag["videos"][0][0], "bytes": tag["videos"][0][1], "mtime_ns": tag["videos"][0][2],
               "size": list(size), "frames": len(dataset)}
    if needed is not None:
        if needed.shape != (len(dataset),):
            raise ValueError(f"needed: {needed.shape} flags for a dataset of {len(dataset)} frames")
        tag["needed_sha256"] = hashlib.sha256(np.packbits(needed.astype(bool)).tobytes()).hexdigest()
    if path.is_file() and tag_path.is_file() and json.loads(tag_path.read_text()) == tag:
        return np.load(path, mmap_mode="r")
    # Built beside the old cache and moved over it: a process still reading the old one (a training run while
    # check-chunks rebuilds the cache for other frames) keeps its frames; rewriting in place zeroed them.
    partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
    frames = np.lib.format.open_memmap(partial, mode="w+", dtype=np.uint8, shape=(len(dataset), *size, 3))
    count = 0
    for frame in (frame for video in videos for frame in decoded(video)):
        if count == len(dataset):
            raise DatasetError(f"camera {camera}: its {len(videos)} video file(s) hold more frames than the "
                               f"dataset's {len(dataset)}; the videos do not match the data")
        if needed is None or needed[count]:
            boxed = resize_with_pad(frames_to_tensor([frame.to_ndarray(format="rgb24")]), size[0], size[1])
            frames[count] = (boxed[0].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
        count += 1
    if count != len(dataset):
        raise DatasetError(f"camera {camera}: {count} frames decoded from {len(videos)} video file(s), the dataset "
                           f"has {len(dataset)}; the videos are incomplete")
    frames.flush()
    del frames
    tag_path.unlink(missing_ok=True)  # no reader trusts the old tag for the new frames
    os.replace(partial, path)
    partial_tag = tag_path.with_name(f"{tag_path.name}.{os.getpid()}.partial")
    partial_tag.write_text(json.dumps(tag))
    os.replace(partial_tag, tag_path)
    return np.load(path, mmap_mode="r")
