"""Mean/std normalisation of robot state and actions, read from a released ``stats.json``.

The policy itself runs on normalised values; the released inference script normalises the state
with ``(x - mean) / (std + eps)`` and un-normalises the actions with ``x * (std + eps) + mean``, both
in float32. Doing the arithmetic in the same order and precision keeps us bit-exact with it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from internvla_ros.model.errors import PreprocessingError

NORMALIZATION_EPS: float = 1e-6
"""Added to the std before dividing; the reference's value, so constant features do not blow up."""

STATE_KEY = "observation.state"
ACTION_KEY = "action"
_STAT_FIELDS = ("mean", "std")


def _as_vector(values: object, robot_type: str, key: str, field: str) -> np.ndarray:
    """Read one statistic as a finite float32 vector, or explain which entry is wrong."""
    try:
        array = np.asarray(values, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise PreprocessingError(
            f"stats.json: {robot_type}/{key}/{field} is not a list of numbers ({exc}); fix the stats file"
        ) from exc
    if array.ndim != 1 or array.size == 0:
        raise PreprocessingError(
            f"stats.json: {robot_type}/{key}/{field} must be a non-empty 1-D list, got shape {array.shape}"
        )
    if not np.all(np.isfinite(array)):
        raise PreprocessingError(f"stats.json: {robot_type}/{key}/{field} contains NaN or inf values")
    return array


@dataclass(frozen=True)
class NormalizationStats:
    """Per-robot mean/std of the state and the action, as float32 vectors."""

    robot_type: str
    state_mean: np.ndarray
    state_std: np.ndarray
    action_mean: np.ndarray
    action_std: np.ndarray
    eps: float = NORMALIZATION_EPS

    def __post_init__(self) -> None:
        for name in ("state_mean", "state_std", "action_mean", "action_std"):
            value = getattr(self, name)
            if not isinstance(value, np.ndarray) or value.dtype != np.float32 or value.ndim != 1:
                raise PreprocessingError(
                    f"NormalizationStats.{name} must be a 1-D float32 numpy array, got {type(value).__name__}"
                    f" {getattr(value, 'dtype', '')} {getattr(value, 'shape', '')}"
                )
            frozen = value.copy()
            frozen.setflags(write=False)
            object.__setattr__(self, name, frozen)
        if self.state_mean.shape != self.state_std.shape:
            raise PreprocessingError(
                f"stats for {self.robot_type!r}: state mean has {self.state_mean.size} dims but std has "
                f"{self.state_std.size}; fix the stats file"
            )
        if self.action_mean.shape != self.action_std.shape:
            raise PreprocessingError(
                f"stats for {self.robot_type!r}: action mean has {self.action_mean.size} dims but std has "
                f"{self.action_std.size}; fix the stats file"
            )

    @property
    def state_dim(self) -> int:
        return int(self.state_mean.size)

    @property
    def action_dim(self) -> int:
        return int(self.action_mean.size)

    @classmethod
    def load(cls, path: Path, robot_type: str) -> NormalizationStats:
        """Load the statistics of one robot type from a ``stats.json`` file.

        Layout: ``{robot_type: {"observation.state": {mean, std, min, max}, "action": {...}}}``.
        """
        path = Path(path)
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError as exc:
            raise PreprocessingError(f"stats file {path} does not exist; pass the checkpoint's stats.json") from exc
        except json.JSONDecodeError as exc:
            raise PreprocessingError(f"stats file {path} is not valid JSON: {exc}") from exc
        if not isinstance(raw, dict):
            raise PreprocessingError(f"stats file {path} must hold a JSON object keyed by robot type")
        if robot_type not in raw:
            available = ", ".join(sorted(raw)) or "none"
            raise PreprocessingError(f"robot type {robot_type!r} not in {path}; available robot types: {available}")
        entry = raw[robot_type]
        vectors: dict[str, np.ndarray] = {}
        for key in (STATE_KEY, ACTION_KEY):
            block = entry.get(key) if isinstance(entry, dict) else None
            if not isinstance(block, dict):
                raise PreprocessingError(f"stats file {path}: {robot_type!r} has no {key!r} statistics")
            for field in _STAT_FIELDS:
                if field not in block:
                    raise PreprocessingError(f"stats file {path}: {robot_type}/{key} has no {field!r}")
                vectors[f"{key}/{field}"] = _as_vector(block[field], robot_type, key, field)
        return cls(
            robot_type=robot_type,
            state_mean=vectors[f"{STATE_KEY}/mean"],
            state_std=vectors[f"{STATE_KEY}/std"],
            action_mean=vectors[f"{ACTION_KEY}/mean"],
            action_std=vectors[f"{ACTION_KEY}/std"],
        )

    def normalize_state(self, state: np.ndarray) -> np.ndarray:
        """``(state - mean) / (std + eps)`` in float32; the last axis must be the state dimension."""
        values = np.asarray(state, dtype=np.float32)
        if values.ndim == 0 or values.shape[-1] != self.state_dim:
            raise PreprocessingError(
                f"state has shape {values.shape} but the {self.robot_type!r} stats are "
                f"{self.state_dim}-dimensional; use the stats of the robot that produced the state"
            )
        if not np.all(np.isfinite(values)):
            bad = np.flatnonzero(~np.isfinite(values.reshape(-1, self.state_dim)).all(axis=0))
            raise PreprocessingError(
                f"state contains NaN or inf (dims {bad.tolist()}); check the joint-state source before inference"
            )
        eps = np.float32(self.eps)
        return ((values - self.state_mean) / (self.state_std + eps)).astype(np.float32, copy=False)

    def unnormalize_actions(self, actions: np.ndarray) -> np.ndarray:
        """Map normalised ``(T, >=D)`` actions back to robot units, dropping the zero-padded dims beyond D."""
        values = np.asarray(actions, dtype=np.float32)
        if values.ndim != 2 or values.shape[1] < self.action_dim:
            raise PreprocessingError(
                f"actions have shape {values.shape}; expected (T, >= {self.action_dim}) for the "
                f"{self.robot_type!r} stats; use the stats of the robot the model was trained for"
            )
        eps = np.float32(self.eps)
        head = values[:, : self.action_dim]
        return (head * (self.action_std + eps) + self.action_mean).astype(np.float32, copy=False)
