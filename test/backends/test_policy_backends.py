"""The runtime's policy on a compiled backend computes what it computes on the eager model."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from internvla_ros.backends.errors import BackendError
from internvla_ros.runtime.internvla_policy import load_policy, warmup_observation

ACTIONS_ATOL = 1e-4
CAMERAS = {"head": 0, "left_wrist": 1, "right_wrist": 2}


def observations(count: int) -> list:
    """Distinct frames and states, with each t-15 frame an earlier current one (as the runtime supplies)."""
    rng = np.random.default_rng(0)
    base = warmup_observation(3, CAMERAS)
    frames = [rng.integers(0, 256, (120, 160, 3), dtype=np.uint8) for _ in range(count + 1)]
    result = []
    for k in range(count):
        cameras = {name: dataclasses.replace(camera, current=frames[k + 1], current_stamp_ns=k + 1,
                                             history=frames[k], history_stamp_ns=k)
                   for name, camera in base.cameras.items()}
        result.append(dataclasses.replace(base, stamp_ns=k + 1, cameras=cameras, instruction="pick up the block",
                                          normalized_state=rng.normal(size=14).astype(np.float32),
                                          decode_preview=k == count - 1))
    return result


@pytest.mark.slow
def test_onnxruntime_policy_matches_the_eager_policy(model_dir: Path, export_cache: Path) -> None:
    eager = load_policy(str(model_dir), cameras=CAMERAS)
    compiled = load_policy(str(model_dir), cameras=CAMERAS, backend="onnxruntime", export_cache=str(export_cache))
    assert compiled.info["foresight_kv_reuse"] is False and "onnxruntime" in compiled.info["backend"]
    for observation in observations(3):
        expected, got = eager.infer(observation), compiled.infer(observation)
        np.testing.assert_allclose(got.actions, expected.actions, atol=ACTIONS_ATOL)
    assert set(got.preview) == set(CAMERAS) and got.preview["head"].dtype == np.uint8


def test_an_unavailable_backend_is_refused_unless_fallback_is_allowed(model_dir: Path, export_cache: Path) -> None:
    with pytest.raises(BackendError, match="fallback to the next backend is off"):
        load_policy(str(model_dir), cameras=CAMERAS, backend="tensorrt,onnxruntime", export_cache=str(export_cache))
    policy = load_policy(str(model_dir), cameras=CAMERAS, backend="tensorrt,onnxruntime", fallback=True,
                         export_cache=str(export_cache))
    assert "onnxruntime" in policy.info["backend"]
    assert policy.info["skipped_backends"] and policy.info["skipped_backends"][0].startswith("tensorrt:")
