"""Action and state mapping between the robot's joints and the model's normalised vectors.

Model -> robot: un-normalise with the robot type's statistics, add deltas to the state captured with the
observation (per-dim absolute mask; grippers are absolute), snap or scale grippers, split per controller.
Robot -> model: joint_states (any order, any superset) -> the state vector in config order.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

from internvla_ros.model.errors import ModelError
from internvla_ros.runtime.config import GripperConfig, RuntimeConfig
from internvla_ros.runtime.errors import MappingError

REASON_SHAPE = "shape"
REASON_NON_FINITE = "non_finite"
REASON_STATS = "statistics"


class ActionStats(Protocol):
    """What the mapping needs from ``internvla_ros.model.normalization.NormalizationStats``."""

    def normalize_state(self, state: np.ndarray) -> np.ndarray: ...

    def unnormalize_actions(self, actions: np.ndarray) -> np.ndarray: ...


class ActionMapper:
    """Converts between joint space (config order, joint units) and the model's vectors."""

    def __init__(self, config: RuntimeConfig, stats: ActionStats) -> None:
        self._config = config
        self._stats = stats
        self._absolute = np.asarray(config.absolute_mask, dtype=bool)
        self._grippers = tuple((config.joint_index[g.joint], g) for g in config.grippers)
        self._velocity_state = np.asarray([j.state_field == "velocity" for j in config.joints], dtype=bool)

    @property
    def config(self) -> RuntimeConfig:
        return self._config

    # Robot -> model -------------------------------------------------------------------------------

    def joint_values(
        self,
        names: Sequence[str],
        positions: Sequence[float],
        velocities: Sequence[float] | None = None,
    ) -> np.ndarray:
        """joint_states -> each configured joint's value in config order and joint units.

        A velocity-state joint (a conveyor's speed) reads ``velocities``; every other joint ``positions``.
        """
        names = list(names)
        positions = np.asarray(positions, dtype=np.float64)
        if positions.shape != (len(names),):
            msg = f"joint_states: {len(names)} names but positions of shape {positions.shape}"
            raise MappingError(msg)
        if velocities is not None and len(velocities) > 0:
            velocities = np.asarray(velocities, dtype=np.float64)
            if velocities.shape != (len(names),):
                msg = f"joint_states: {len(names)} names but velocities of shape {velocities.shape}"
                raise MappingError(msg)
        else:
            velocities = None
        index: dict[str, int] = {}
        for i, name in enumerate(names):
            if name in index:
                msg = f"joint_states: joint {name!r} appears twice"
                raise MappingError(msg)
            index[name] = i
        missing = [n for n in self._config.joint_names if n not in index]
        if missing:
            msg = f"joint_states: missing configured joints {missing}"
            raise MappingError(msg)
        rows = np.asarray([index[n] for n in self._config.joint_names])
        values = positions[rows].copy()
        if self._velocity_state.any():
            if velocities is None:
                needed = [n for n, v in zip(self._config.joint_names, self._velocity_state, strict=True) if v]
                msg = f"joint_states: no velocities, but {needed} take their state from velocity"
                raise MappingError(msg)
            values[self._velocity_state] = velocities[rows][self._velocity_state]
        bad = [n for n, v in zip(self._config.joint_names, values, strict=True) if not np.isfinite(v)]
        if bad:
            msg = f"joint_states: non-finite value for joints {bad}"
            raise MappingError(msg)
        return values

    def model_state(self, joint_values: np.ndarray) -> np.ndarray:
        """Joint units -> the model's raw state (grippers as 0 open .. 1 closed), config order."""
        state = np.array(joint_values, dtype=np.float64)
        for i, gripper in self._grippers:
            state[i] = _gripper_fraction(gripper, state[i])
        return state

    def normalized_state(self, model_state: np.ndarray) -> np.ndarray:
        """The model's state input: normalised and zero-padded to the model's action dim."""
        try:
            normalized = np.asarray(self._stats.normalize_state(np.asarray(model_state)), dtype=np.float64)
        except ModelError as err:
            msg = f"observation state: {err}"
            raise MappingError(msg) from err
        padded = np.zeros(self._config.execution.action_dim, dtype=np.float64)
        padded[: normalized.shape[-1]] = normalized
        return padded

    # Model -> robot -------------------------------------------------------------------------------

    def chunk_to_joint_positions(self, actions: np.ndarray, model_state: np.ndarray) -> np.ndarray:
        """(T, >=D) normalised actions -> (T, D) absolute joint targets in joint units.

        ``model_state`` is the state captured with the observation the chunk was computed from.
        """
        actions = np.asarray(actions)
        check_chunk_shape(actions, self._config)
        if not np.isfinite(actions[:, : self._config.dim]).all():
            msg = "policy output: non-finite values in the robot's action dims"
            raise MappingError(msg, REASON_NON_FINITE)
        try:
            with np.errstate(over="ignore", invalid="ignore"):  # overflow shows up as inf, checked below
                values = np.asarray(self._stats.unnormalize_actions(actions), dtype=np.float64)
        except ModelError as err:
            msg = f"policy output: {err}"
            raise MappingError(msg, REASON_STATS) from err
        if values.shape != (actions.shape[0], self._config.dim):
            msg = (
                f"statistics for {self._config.robot_type!r} give actions of shape {values.shape}, "
                f"the config has {self._config.dim} joints"
            )
            raise MappingError(msg, REASON_STATS)
        state = np.asarray(model_state, dtype=np.float64)
        if state.shape != (self._config.dim,):
            msg = f"observation state: shape {state.shape}, expected ({self._config.dim},)"
            raise MappingError(msg, REASON_SHAPE)
        absolute = np.where(self._absolute, values, values + state)
        for i, gripper in self._grippers:
            absolute[:, i] = _gripper_position(gripper, absolute[:, i])
        if not np.isfinite(absolute).all():
            msg = "policy output: non-finite joint targets after un-normalisation"
            raise MappingError(msg, REASON_NON_FINITE)
        return absolute

    def rebase_chunk(self, actions: np.ndarray, old_state: np.ndarray, new_state: np.ndarray) -> np.ndarray:
        """Normalised actions computed from ``old_state`` re-expressed for ``new_state`` (real-time chunking's
        target): delta dims shift by the state change over the action scale (affine stats), absolute dims stay."""
        values = np.asarray(actions, dtype=np.float32).copy()
        dim = self._config.dim
        width = values.shape[1]
        scale = self._stats.unnormalize_actions(np.ones((1, width))) - self._stats.unnormalize_actions(
            np.zeros((1, width)))
        change = np.asarray(old_state, np.float64) - np.asarray(new_state, np.float64)
        values[:, :dim] += np.where(self._absolute, 0.0, change / scale[0, :dim]).astype(np.float32)
        return values

    def split_by_controller(self, joint_positions: np.ndarray) -> dict[str, np.ndarray]:
        """Config-order joint vector(s) -> each controller's slice, in the controller's joint order."""
        index = self._config.joint_index
        positions = np.asarray(joint_positions)
        return {c.name: positions[..., [index[j] for j in c.joints]] for c in self._config.controllers}


def check_chunk_shape(actions: np.ndarray, config: RuntimeConfig) -> None:
    """A chunk is (T, A) with 1 <= T <= chunk_size and dim <= A <= action_dim, of a real dtype."""
    if actions.ndim != 2:
        msg = f"policy output: expected a (T, {config.execution.action_dim}) chunk, got shape {actions.shape}"
        raise MappingError(msg, REASON_SHAPE)
    steps, width = actions.shape
    if not 1 <= steps <= config.execution.chunk_size:
        msg = f"policy output: {steps} steps, allowed 1..{config.execution.chunk_size}"
        raise MappingError(msg, REASON_SHAPE)
    if not config.dim <= width <= config.execution.action_dim:
        msg = f"policy output: {width} action dims, allowed {config.dim}..{config.execution.action_dim}"
        raise MappingError(msg, REASON_SHAPE)
    if not (np.issubdtype(actions.dtype, np.floating) or np.issubdtype(actions.dtype, np.integer)):
        msg = f"policy output: dtype {actions.dtype} is not numeric"
        raise MappingError(msg, REASON_SHAPE)


def _gripper_position(gripper: GripperConfig, value: np.ndarray) -> np.ndarray:
    span = gripper.closed_position - gripper.open_position
    if gripper.mode == "threshold":
        return np.where(value >= gripper.threshold, gripper.closed_position, gripper.open_position)
    return gripper.open_position + np.clip(value, 0.0, 1.0) * span


def _gripper_fraction(gripper: GripperConfig, position: float) -> float:
    span = gripper.closed_position - gripper.open_position
    return float(np.clip((position - gripper.open_position) / span, 0.0, 1.0))
