"""Action mapping (model -> joints) and state mapping (joint_states -> model), with their errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from internvla_ros.model.normalization import NormalizationStats
from internvla_ros.runtime.errors import MappingError
from internvla_ros.runtime.mapping import ActionMapper

from .harness import ACTION_DIM, JOINTS, ROBOT_TYPE, make_config, padded, write_stats

FLOAT32_TOL = 1e-5


@pytest.fixture
def mapper(tmp_path: Path) -> ActionMapper:
    stats = NormalizationStats.load(write_stats(tmp_path / "stats.json"), ROBOT_TYPE)
    return ActionMapper(make_config(), stats)


def test_deltas_are_added_to_the_observed_state_and_absolute_dims_are_not(tmp_path: Path) -> None:
    stats_path = write_stats(tmp_path / "stats.json", mean=0.1, std=2.0)
    mapper = ActionMapper(make_config(grippers__gripper__mode="scale"), NormalizationStats.load(stats_path, ROBOT_TYPE))
    state = np.array([0.5, -0.25, 0.0, 0.2])
    normalized = padded(np.array([[0.0, 0.0, 0.0, 0.0], [1.0, -1.0, 0.2, 0.05]]))
    out = mapper.chunk_to_joint_positions(normalized, state)
    raw = normalized[:, :4] * 2.0 + 0.1  # un-normalised with mean 0.1, std 2
    expected_arm = raw[:, :2] + state[:2]
    np.testing.assert_allclose(out[:, :2], expected_arm, atol=FLOAT32_TOL)
    np.testing.assert_allclose(out[:, 3], raw[:, 3], atol=FLOAT32_TOL)  # belt speed: absolute
    # Gripper in 'scale' mode: model 0 = open (0.08), 1 = closed (0.0), clipped to [0, 1].
    np.testing.assert_allclose(out[:, 2], 0.08 - np.clip(raw[:, 2], 0, 1) * 0.08, atol=FLOAT32_TOL)


def test_gripper_threshold_snaps_to_open_or_closed(mapper: ActionMapper) -> None:
    values = np.array([-1.0, 0.0, 0.49, 0.5, 0.51, 1.0, 3.0])
    actions = np.zeros((len(values), 4))
    actions[:, 2] = values
    out = mapper.chunk_to_joint_positions(padded(actions), np.zeros(4))
    expected = np.where(values >= 0.5, 0.0, 0.08)
    np.testing.assert_allclose(out[:, 2], expected)


def test_split_by_controller_uses_each_controllers_joint_order(mapper: ActionMapper) -> None:
    split = mapper.split_by_controller(np.array([1.0, 2.0, 3.0, 4.0]))
    assert {k: v.tolist() for k, v in split.items()} == {
        "arm_controller": [1.0, 2.0],
        "gripper_controller": [3.0],
        "belt_controller": [4.0],
    }


def test_joint_states_in_any_order_and_superset(mapper: ActionMapper) -> None:
    names = ["belt", "extra_joint", "gripper", "elbow", "camera_pan", "shoulder"]
    positions = [9.0, 7.0, 0.02, -0.3, 1.0, 0.4]
    velocities = [0.25, 0.0, 0.0, 0.0, 0.0, 0.0]
    values = mapper.joint_values(names, positions, velocities)
    np.testing.assert_allclose(values, [0.4, -0.3, 0.02, 0.25])  # belt state is its velocity
    state = mapper.model_state(values)
    np.testing.assert_allclose(state, [0.4, -0.3, 0.75, 0.25])  # gripper 0.02 of 0.08 open = 0.75 closed


def test_normalized_state_is_zero_padded(tmp_path: Path) -> None:
    stats = NormalizationStats.load(write_stats(tmp_path / "stats.json", mean=1.0, std=0.5), ROBOT_TYPE)
    mapper = ActionMapper(make_config(), stats)
    out = mapper.normalized_state(np.array([1.0, 2.0, 0.0, 1.5]))
    assert out.shape == (ACTION_DIM,)
    np.testing.assert_allclose(out[:4], [0.0, 2.0, -2.0, 1.0], atol=FLOAT32_TOL)
    assert not out[4:].any()


@pytest.mark.parametrize(
    ("names", "positions", "velocities", "words"),
    [
        (["shoulder", "elbow", "gripper"], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0], "missing configured joints ['belt']"),
        (["shoulder", "elbow", "gripper", "belt", "elbow"], [0.0] * 5, [0.0] * 5, "'elbow' appears twice"),
        (list(JOINTS), [0.0, float("nan"), 0.0, 0.0], [0.0] * 4, "non-finite value for joints ['elbow']"),
        (list(JOINTS), [0.0] * 4, [0.0, 0.0, 0.0, float("inf")], "non-finite value for joints ['belt']"),
        (list(JOINTS), [0.0] * 3, [0.0] * 4, "positions of shape (3,)"),
        (list(JOINTS), [0.0] * 4, [0.0] * 3, "velocities of shape (3,)"),
        (list(JOINTS), [0.0] * 4, None, "take their state from velocity"),
    ],
)
def test_bad_joint_states_raise_clearly(
    mapper: ActionMapper, names: list[str], positions: list[float], velocities: list[float] | None, words: str
) -> None:
    with pytest.raises(MappingError) as caught:
        mapper.joint_values(names, positions, velocities)
    assert words in str(caught.value)


@pytest.mark.parametrize(
    ("actions", "reason"),
    [
        (np.zeros((50,)), "shape"),
        (np.zeros((1, 50, 32)), "shape"),
        (np.zeros((0, 32)), "shape"),
        (np.zeros((51, 32)), "shape"),
        (np.zeros((50, 3)), "shape"),
        (np.zeros((50, 33)), "shape"),
        (np.array([["a"] * 32] * 50), "shape"),
        (np.full((50, 32), np.nan), "non_finite"),
        (np.full((50, 32), np.inf), "non_finite"),
        (np.full((50, 32), 1e39), "non_finite"),  # overflows float32 when un-normalised
    ],
)
def test_bad_chunks_are_rejected_with_a_reason(mapper: ActionMapper, actions: np.ndarray, reason: str) -> None:
    with pytest.raises(MappingError) as caught:
        mapper.chunk_to_joint_positions(actions, np.zeros(4))
    assert caught.value.reason == reason


def test_nan_in_padding_is_ignored(mapper: ActionMapper) -> None:
    """Only the robot's dims matter; the model's padding dims are dropped, whatever they hold."""
    actions = np.zeros((50, 32))
    actions[:, 10:] = np.nan
    out = mapper.chunk_to_joint_positions(actions, np.zeros(4))
    assert np.isfinite(out).all()


def test_stats_of_another_robot_are_reported(tmp_path: Path) -> None:
    stats = NormalizationStats.load(write_stats(tmp_path / "stats.json", dim=3), ROBOT_TYPE)
    mapper = ActionMapper(make_config(), stats)
    with pytest.raises(MappingError) as caught:
        mapper.chunk_to_joint_positions(np.zeros((50, 32)), np.zeros(4))
    assert caught.value.reason == "statistics"
    with pytest.raises(MappingError, match="observation state"):
        mapper.normalized_state(np.zeros(4))
