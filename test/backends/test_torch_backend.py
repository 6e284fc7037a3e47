"""The staged torch backend returns what the model's own predict returns."""

from __future__ import annotations

from pathlib import Path

import torch

from internvla_ros.backends.base import STAGE_TOTAL, step_stage
from internvla_ros.backends.factory import BackendOptions, create_backend
from internvla_ros.backends.torch_backend import TorchBackend
from internvla_ros.cli.bench_model import load_batch
from internvla_ros.model.config import load_config

from .conftest import THREADS

UNCACHED_ATOL = 1e-5
"""K/V reuse vs recomputing all blocks at every step (same math, other summation order)."""


def test_staged_predict_equals_model_predict(model_dir: Path) -> None:
    backend = create_backend(["torch"], BackendOptions(model_dir, threads=THREADS)).backend
    assert isinstance(backend, TorchBackend)
    config = load_config(model_dir)
    inputs, noise, _ = load_batch(model_dir, config)
    result = backend.predict(inputs, noise, foresight=True)
    with torch.no_grad():
        expected = backend.model.predict(inputs, noise)
        assert torch.equal(result.actions, expected.actions)
        assert result.foresight_latents is not None
        assert torch.equal(result.foresight_latents, backend.model.foresight_latents(expected.middle_out))
    assert [step_stage(i) for i in range(config.num_inference_steps)] == [
        s for s in result.timings_ns if s.startswith("action_step_")]
    assert result.timings_ns[STAGE_TOTAL] >= sum(v for k, v in result.timings_ns.items() if k != STAGE_TOTAL)

    uncached = TorchBackend(backend.model, kv_reuse=False)
    assert uncached.name == "torch-uncached"
    other = uncached.predict(inputs, noise)
    assert (other.actions - result.actions).abs().max().item() <= UNCACHED_ATOL
    assert set(other.timings_ns) == {STAGE_TOTAL}
