"""Feature statistics: LeRobot's per-feature ``stats.json`` and the model's normalisation statistics.

The dataset's ``meta/stats.json`` describes the stored (absolute) values, as LeRobot writes it. The
model normalises something else: its action is a chunk of deltas to the observation's state on the
delta dims (absolute on the others), as InternVLA-A1's ``compute_norm_stats`` computes them. So
:func:`model_stats` builds those from the data: the state over every frame, and the action over every
frame's chunk (the last action repeated past an episode's end, exactly the chunks training sees).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from internvla_ros.learning.dataset_layout import ACTION_KEY, STATE_KEY
from internvla_ros.learning.dataset_reader import RobotDataset


class RunningStats:
    """Mean, std, min and max of vectors seen in batches (float64 sums, so long datasets stay exact)."""

    def __init__(self) -> None:
        self.count = 0
        self._sum: np.ndarray | None = None
        self._sq: np.ndarray | None = None
        self._min: np.ndarray | None = None
        self._max: np.ndarray | None = None

    def update(self, batch: np.ndarray) -> None:
        """``batch`` (N, ...): N samples of one feature's shape."""
        values = np.asarray(batch, dtype=np.float64)
        if values.shape[0] == 0:
            return
        total, squares = values.sum(axis=0), np.square(values).sum(axis=0)
        low, high = values.min(axis=0), values.max(axis=0)
        if self._sum is None:
            self._sum, self._sq, self._min, self._max = total, squares, low, high
        else:
            self._sum = self._sum + total
            self._sq = self._sq + squares
            self._min = np.minimum(self._min, low)
            self._max = np.maximum(self._max, high)
        self.count += values.shape[0]

    def result(self) -> dict[str, Any]:
        """``{mean, std, min, max, count}`` as JSON-ready lists (population std, as LeRobot)."""
        if self._sum is None or self._sq is None or self._min is None or self._max is None:
            raise ValueError("no samples")
        mean = self._sum / self.count
        std = np.sqrt(np.maximum(self._sq / self.count - np.square(mean), 0.0))
        return {"mean": mean.tolist(), "std": std.tolist(), "min": self._min.tolist(), "max": self._max.tolist(),
                "count": [self.count]}


def action_chunks(actions: np.ndarray, chunk_size: int) -> np.ndarray:
    """(T, D) actions of one episode -> (T, chunk_size, D): each frame's next ``chunk_size`` actions,
    the last one repeated past the episode's end."""
    steps = np.minimum(np.arange(actions.shape[0])[:, None] + np.arange(chunk_size)[None, :], actions.shape[0] - 1)
    return actions[steps]


def model_actions(chunks: np.ndarray, states: np.ndarray, absolute_mask: np.ndarray) -> np.ndarray:
    """Chunks (T, C, D) as the model predicts them: minus the frame's state on the delta dims."""
    return np.where(absolute_mask, chunks, chunks - states[:, None, :])


def model_stats(episodes: Iterable[tuple[np.ndarray, np.ndarray]], absolute_mask: tuple[bool, ...],
                chunk_size: int) -> dict[str, dict[str, Any]]:
    """``{observation.state: {...}, action: {...}}`` over episodes given as (states (T, D), actions (T, D))."""
    state, action = RunningStats(), RunningStats()
    mask = np.asarray(absolute_mask, dtype=bool)
    for states, actions in episodes:
        state.update(states)
        chunks = model_actions(action_chunks(actions, chunk_size), states, mask)
        action.update(chunks.reshape(-1, chunks.shape[-1]))
    if state.count == 0:
        raise ValueError("the dataset holds no frames")
    return {STATE_KEY: state.result(), ACTION_KEY: action.result()}


def dataset_model_stats(dataset: RobotDataset, chunk_size: int) -> dict[str, dict[str, Any]]:
    """The normalisation statistics a checkpoint needs for this dataset's robot."""
    return model_stats(dataset.episode_arrays(), dataset.schema.absolute_mask, chunk_size)


def merge_robot_stats(existing: dict[str, Any], robot_type: str, entry: dict[str, dict[str, Any]],
                      max_state_dim: int, max_action_dim: int, replace: bool = False) -> dict[str, Any]:
    """``existing`` (a checkpoint's stats.json) with ``entry`` under ``robot_type``; refuses dims that do not fit."""
    state_dim, action_dim = len(entry[STATE_KEY]["mean"]), len(entry[ACTION_KEY]["mean"])
    if state_dim > max_state_dim or action_dim > max_action_dim:
        raise StatsError(f"the dataset has a {state_dim}-dim state and {action_dim}-dim action, the model takes at "
                         f"most {max_state_dim} and {max_action_dim}; use a checkpoint with larger max dims")
    old = existing.get(robot_type)
    if isinstance(old, dict) and not replace:
        dims = {key: len(old.get(key, {}).get("mean", [])) for key in (STATE_KEY, ACTION_KEY)}
        if dims != {STATE_KEY: state_dim, ACTION_KEY: action_dim}:
            raise StatsError(f"robot type {robot_type!r} is already in stats.json with {dims[STATE_KEY]}-dim state and "
                             f"{dims[ACTION_KEY]}-dim action, the dataset has {state_dim} and {action_dim}; choose "
                             "another --robot-type, or --replace to overwrite it")
    return {**existing, robot_type: entry}


class StatsError(ValueError):
    """Statistics that do not fit the checkpoint or the robot type they are meant for."""
