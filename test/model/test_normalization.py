"""Mean/std normalisation against the InternVLA-A1 reference fixture (case A) and on bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from safetensors.numpy import load_file

from internvla_ros.model.errors import PreprocessingError
from internvla_ros.model.normalization import NORMALIZATION_EPS, NormalizationStats

CASE_A = Path(__file__).resolve().parent.parent / "fixtures" / "internvla_a1_reference" / "case_a"
STATS = CASE_A / "stats.json"
ROBOT = "aloha"
DIM = 14


@pytest.fixture(scope="module")
def stats() -> NormalizationStats:
    return NormalizationStats.load(STATS, ROBOT)


def test_eps_is_the_reference_value() -> None:
    assert NORMALIZATION_EPS == 1e-6


def test_load_reads_float32_vectors(stats: NormalizationStats) -> None:
    raw = json.loads(STATS.read_text())[ROBOT]
    assert stats.robot_type == ROBOT
    assert stats.state_dim == DIM and stats.action_dim == DIM
    for array in (stats.state_mean, stats.state_std, stats.action_mean, stats.action_std):
        assert array.dtype == np.float32
    np.testing.assert_array_equal(stats.state_mean, np.asarray(raw["observation.state"]["mean"], np.float32))
    np.testing.assert_array_equal(stats.action_std, np.asarray(raw["action"]["std"], np.float32))


def test_normalize_state_is_bit_exact_with_reference(stats: NormalizationStats) -> None:
    processed = load_file(CASE_A / "preprocess" / "processed.safetensors")
    out = stats.normalize_state(processed["state_raw"])
    assert out.dtype == np.float32
    # Measured max |diff| = 0.0.
    np.testing.assert_array_equal(out, processed["state_normalized"])


def test_normalize_state_matches_policy_input(stats: NormalizationStats) -> None:
    aux = load_file(CASE_A / "aux_inputs.safetensors")
    inputs = load_file(CASE_A / "inputs.safetensors")
    out = stats.normalize_state(aux["aux.state_raw_unnormalized"])
    np.testing.assert_array_equal(out, inputs["observation.state"])


def test_unnormalize_actions_is_bit_exact_with_reference(stats: NormalizationStats) -> None:
    outputs = load_file(CASE_A / "outputs.safetensors")
    actions = outputs["actions"][0]  # (50, 32): normalised, zero-padded beyond dim 14
    out = stats.unnormalize_actions(actions)
    assert out.shape == (50, DIM) and out.dtype == np.float32
    # Measured max |diff| = 0.0.
    np.testing.assert_array_equal(out, outputs["actions_unnormalized"][0])


def test_unknown_robot_type_lists_available(tmp_path: Path) -> None:
    with pytest.raises(PreprocessingError, match=r"'franka'.*available robot types: aloha"):
        NormalizationStats.load(STATS, "franka")


def test_missing_stats_file() -> None:
    with pytest.raises(PreprocessingError, match="does not exist"):
        NormalizationStats.load(CASE_A / "no_such_stats.json", ROBOT)


def test_stats_without_action_block(tmp_path: Path) -> None:
    raw = json.loads(STATS.read_text())
    del raw[ROBOT]["action"]
    path = tmp_path / "stats.json"
    path.write_text(json.dumps(raw))
    with pytest.raises(PreprocessingError, match="no 'action' statistics"):
        NormalizationStats.load(path, ROBOT)


def test_state_dimension_mismatch_names_dims(stats: NormalizationStats) -> None:
    with pytest.raises(PreprocessingError, match=r"shape \(16,\).*14-dimensional"):
        stats.normalize_state(np.zeros(16, np.float32))


def test_state_with_nan_is_refused(stats: NormalizationStats) -> None:
    state = np.zeros(DIM, np.float32)
    state[3] = np.nan
    with pytest.raises(PreprocessingError, match=r"NaN or inf \(dims \[3\]\)"):
        stats.normalize_state(state)


def test_state_with_inf_is_refused(stats: NormalizationStats) -> None:
    state = np.zeros(DIM, np.float32)
    state[0] = np.inf
    with pytest.raises(PreprocessingError, match="NaN or inf"):
        stats.normalize_state(state)


def test_actions_narrower_than_stats_are_refused(stats: NormalizationStats) -> None:
    with pytest.raises(PreprocessingError, match=r"expected \(T, >= 14\)"):
        stats.unnormalize_actions(np.zeros((50, 7), np.float32))


def test_actions_must_be_2d(stats: NormalizationStats) -> None:
    with pytest.raises(PreprocessingError, match=r"shape \(1, 50, 32\)"):
        stats.unnormalize_actions(np.zeros((1, 50, 32), np.float32))


def test_mismatched_mean_and_std_are_refused() -> None:
    with pytest.raises(PreprocessingError, match="state mean has 3 dims but std has 2"):
        NormalizationStats(
            robot_type="x",
            state_mean=np.zeros(3, np.float32),
            state_std=np.ones(2, np.float32),
            action_mean=np.zeros(3, np.float32),
            action_std=np.ones(3, np.float32),
        )


def test_stats_arrays_are_read_only(stats: NormalizationStats) -> None:
    with pytest.raises(ValueError):
        stats.state_mean[0] = 1.0


@settings(max_examples=50, deadline=None)
@given(
    hnp.arrays(
        np.float32,
        (5, DIM),
        elements=st.floats(-10, 10, width=32),
    )
)
def test_unnormalize_inverts_normalize(values: np.ndarray) -> None:
    """With the same statistics for state and action, the two maps are inverse up to float32 rounding."""
    base = NormalizationStats.load(STATS, ROBOT)
    same = NormalizationStats(
        robot_type=ROBOT,
        state_mean=base.state_mean,
        state_std=base.state_std,
        action_mean=base.state_mean,
        action_std=base.state_std,
    )
    padded = np.concatenate([same.normalize_state(values), np.zeros((5, 18), np.float32)], axis=1)
    np.testing.assert_allclose(same.unnormalize_actions(padded), values, atol=1e-5, rtol=1e-6)
