"""Writes a LeRobotDataset v3.0 directory frame by frame (see :mod:`internvla_ros.learning.dataset_layout`).

Frames go straight to the video encoders; an episode's state/action rows are appended to the data
parquet when the episode ends, so memory holds at most one episode's vectors. At an episode's end, a data
or video file that has reached its size limit is closed and the next episode goes to the next file.
Everything is written under ``<out>.partial`` and renamed to ``<out>`` only when complete.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from internvla_ros.learning.dataset_layout import (
    ACTION_KEY,
    DATA_PATH,
    EPISODES_PATH,
    INFO_PATH,
    LEROBOT_LIMITS,
    MB,
    STATE_KEY,
    STATS_PATH,
    TASKS_PATH,
    VIDEO_PATH,
    DatasetError,
    DatasetSchema,
    FileLimits,
    build_info,
    next_file,
    video_key,
    write_json,
)
from internvla_ros.learning.dataset_stats import RunningStats
from internvla_ros.learning.dataset_video import VideoCodec, VideoSpec, VideoTrack

IMAGE_STATS_STRIDE = 8  # image statistics from every 8th pixel in each direction (LeRobot also subsamples)
SCALARS = ("timestamp", "frame_index", "episode_index", "index", "task_index")


def tasks_table(tasks: list[str]) -> pa.Table:
    """``meta/tasks.parquet`` as LeRobot's ``pandas.DataFrame({"task_index": ...}, index=tasks)`` writes it."""
    table = pa.table({"task_index": pa.array(range(len(tasks)), pa.int64()), "task": pa.array(tasks, pa.string())})
    pandas_meta = {
        "index_columns": ["task"], "column_indexes": [],
        "columns": [{"name": "task_index", "field_name": "task_index", "pandas_type": "int64",
                     "numpy_type": "int64", "metadata": None},
                    {"name": "task", "field_name": "task", "pandas_type": "unicode", "numpy_type": "object",
                     "metadata": None}],
        "creator": {"library": "pyarrow", "version": pa.__version__}, "pandas_version": "2.2.0",
    }
    return table.replace_schema_metadata({b"pandas": json.dumps(pandas_meta).encode()})


def _image_sample(rgb: np.ndarray) -> np.ndarray:
    """(pixels, 3, 1, 1) in [0, 1]: LeRobot's per-channel image statistics shape."""
    pixels = rgb[::IMAGE_STATS_STRIDE, ::IMAGE_STATS_STRIDE].reshape(-1, 3).astype(np.float64) / 255.0
    return pixels[:, :, None, None]


@dataclass
class _Episode:
    task_index: int
    states: list[np.ndarray] = field(default_factory=list)
    actions: list[np.ndarray] = field(default_factory=list)
    images: dict[str, RunningStats] = field(default_factory=dict)


class DatasetWriter:
    def __init__(self, out: Path, schema: DatasetSchema, codec: VideoCodec, force: bool = False,
                 limits: FileLimits = LEROBOT_LIMITS) -> None:
        self.out = Path(out)
        if self.out.exists() and any(self.out.iterdir()) and not force:
            raise DatasetError(f"{self.out} exists and is not empty; choose another --out or pass --force")
        self.schema = schema
        self.codec = codec
        self.limits = limits
        self.root = self.out.with_name(self.out.name + ".partial")
        shutil.rmtree(self.root, ignore_errors=True)
        self.root.mkdir(parents=True)
        self._data_at = (0, 0)  # (chunk_index, file_index) of the data file being written
        self._video_at = dict.fromkeys(schema.cameras, (0, 0))
        self._video_specs: dict[str, VideoSpec] = {}  # each camera's first file's (the dataset's features)
        self._resized = dict.fromkeys(schema.cameras, 0)  # frames resized in the files already closed
        self.tracks = {c: self._track(c) for c in schema.cameras}
        self.tasks: dict[str, int] = {}
        self.episodes: list[dict[str, Any]] = []
        self.frames = 0
        self.stats = {key: RunningStats() for key in (STATE_KEY, ACTION_KEY, *SCALARS)}
        self.image_stats = {c: RunningStats() for c in schema.cameras}
        self._episode: _Episode | None = None
        self._data: pq.ParquetWriter | None = None

    # -- frames ---------------------------------------------------------------------------------------
    def begin_episode(self, task: str) -> None:
        if self._episode is not None:
            self.end_episode()
        self._episode = _Episode(self.tasks.setdefault(task, len(self.tasks)),
                                 images={c: RunningStats() for c in self.schema.cameras})

    def add_frame(self, state: np.ndarray, action: np.ndarray, images: dict[str, np.ndarray]) -> None:
        episode = self._episode
        if episode is None:
            raise DatasetError("add_frame before begin_episode")
        episode.states.append(np.asarray(state, np.float32))
        episode.actions.append(np.asarray(action, np.float32))
        for camera, track in self.tracks.items():
            track.add(images[camera])
            sample = _image_sample(images[camera])
            episode.images[camera].update(sample)
            self.image_stats[camera].update(sample)

    def end_episode(self) -> None:
        episode, self._episode = self._episode, None
        if episode is None or not episode.states:
            return
        length, index = len(episode.states), len(self.episodes)
        columns = {
            STATE_KEY: np.stack(episode.states), ACTION_KEY: np.stack(episode.actions),
            "timestamp": (np.arange(length) / self.schema.fps).astype(np.float32),
            "frame_index": np.arange(length, dtype=np.int64),
            "episode_index": np.full(length, index, np.int64),
            "index": np.arange(self.frames, self.frames + length, dtype=np.int64),
            "task_index": np.full(length, episode.task_index, np.int64),
        }
        self._write_rows(columns)
        row: dict[str, Any] = {
            "episode_index": index, "tasks": [self._task_text(episode.task_index)], "length": length,
            "data/chunk_index": self._data_at[0], "data/file_index": self._data_at[1],
            "dataset_from_index": self.frames, "dataset_to_index": self.frames + length,
        }
        for camera, track in self.tracks.items():
            key = video_key(camera)
            start = track.frames - length
            chunk_index, file_index = self._video_at[camera]
            row |= {f"videos/{key}/chunk_index": chunk_index, f"videos/{key}/file_index": file_index,
                    f"videos/{key}/from_timestamp": start / self.schema.fps,
                    f"videos/{key}/to_timestamp": track.frames / self.schema.fps}
        for key, values in columns.items():
            episode_stats = RunningStats()
            episode_stats.update(values)
            self.stats[key].update(values)
            row |= {f"stats/{key}/{name}": value for name, value in episode_stats.result().items()}
        for camera, stats in episode.images.items():
            row |= {f"stats/{video_key(camera)}/{name}": value for name, value in stats.result().items()}
        row |= {"meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0}
        self.episodes.append(row)
        self.frames += length
        self._next_files()

    def _track(self, camera: str) -> VideoTrack:
        chunk_index, file_index = self._video_at[camera]
        path = self.root / VIDEO_PATH.format(video_key=video_key(camera), chunk_index=chunk_index,
                                             file_index=file_index)
        first = self._video_specs.get(camera)  # a later file keeps the camera's first file's size
        return VideoTrack(path, self.schema.fps, self.codec, None if first is None else (first.height, first.width))

    def _data_path(self) -> Path:
        return self.root / DATA_PATH.format(chunk_index=self._data_at[0], file_index=self._data_at[1])

    def _next_files(self) -> None:
        """Between episodes: close every file that has reached its limit; the next episode opens the next."""
        if self._data is not None and self._data_path().stat().st_size >= self.limits.data_mb * MB:
            self._data.close()
            self._data, self._data_at = None, next_file(self._data_at)
        for camera, track in self.tracks.items():
            if track.path.is_file() and track.path.stat().st_size >= self.limits.video_mb * MB:
                self._finish_track(camera)
                self._video_at[camera] = next_file(self._video_at[camera])
                self.tracks[camera] = self._track(camera)

    def _finish_track(self, camera: str) -> None:
        track = self.tracks[camera]
        track.close()
        self._resized[camera] += track.resized
        track.resized = 0  # moved into the writer's count (close() may finish the current track later)
        if track.spec is not None:
            self._video_specs.setdefault(camera, track.spec)

    def _task_text(self, task_index: int) -> str:
        return next(text for text, i in self.tasks.items() if i == task_index)

    def _write_rows(self, columns: dict[str, np.ndarray]) -> None:
        dim = self.schema.dim
        arrays = {}
        for key, values in columns.items():
            if values.ndim == 2:
                arrays[key] = pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1), pa.float32()), dim)
            else:
                arrays[key] = pa.array(values)
        table = pa.table(arrays)
        if self._data is None:
            path = self._data_path()
            path.parent.mkdir(parents=True, exist_ok=True)
            self._data = pq.ParquetWriter(str(path), table.schema)
        self._data.write_table(table)

    # -- finish ---------------------------------------------------------------------------------------
    def close(self) -> dict[str, Any]:
        """Finish every file, write meta/ and move the dataset to ``out``; returns info.json."""
        self.end_episode()
        if not self.episodes:
            self.abort()
            raise DatasetError("no frame could be converted (see the counts of dropped frames); nothing written")
        for camera in self.tracks:
            self._finish_track(camera)
        if self._data is not None:
            self._data.close()
        info = build_info(self.schema, self._video_specs, len(self.episodes), self.frames, len(self.tasks),
                          self.limits)
        write_json(self.root / INFO_PATH, info)
        stats = {key: s.result() for key, s in self.stats.items()}
        stats |= {video_key(c): s.result() for c, s in self.image_stats.items()}
        write_json(self.root / STATS_PATH, stats)
        pq.write_table(tasks_table(list(self.tasks)), str(self.root / TASKS_PATH))
        episodes_path = self.root / EPISODES_PATH.format(chunk_index=0, file_index=0)
        episodes_path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(self.episodes), str(episodes_path))
        if self.out.exists():
            shutil.rmtree(self.out)
        self.root.rename(self.out)
        return info

    def abort(self) -> None:
        for track in self.tracks.values():
            track.close()
        if self._data is not None:
            self._data.close()
        shutil.rmtree(self.root, ignore_errors=True)

    @property
    def resized_frames(self) -> dict[str, int]:
        """Frames resized to their camera's video size, over all files so far."""
        counts = {c: self._resized[c] + t.resized for c, t in self.tracks.items()}
        return {c: n for c, n in counts.items() if n}
