"""The torch backend is the one pipeline over the model's own stages; torch-uncached really recomputes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from internvla_ros.backends.errors import BackendError
from internvla_ros.backends.factory import BackendOptions, create_backend
from internvla_ros.cli.bench_model import load_batch
from internvla_ros.model.config import load_config
from internvla_ros.model.pipeline import STAGE_TOTAL, StageTimings, step_stage
from internvla_ros.model.torch_stages import TorchStages

from .conftest import THREADS

UNCACHED_ATOL = 1e-5
"""K/V reuse vs recomputing all blocks at every step (same math, other summation order)."""


def test_pipeline_equals_model_predict_and_times_every_stage(model_dir: Path) -> None:
    backend = create_backend(["torch"], BackendOptions(model_dir, threads=THREADS)).backend
    assert isinstance(backend.stages, TorchStages) and backend.stages.kv_reuse
    config = load_config(model_dir)
    inputs, noise, _ = load_batch(model_dir, config)
    timings = StageTimings()
    result = backend.run(inputs, noise, foresight=True, hook=timings)
    with torch.no_grad():
        expected = backend.stages.model.predict(inputs, noise)
    assert torch.equal(result.actions, expected.actions)
    assert result.foresight_latents is not None
    assert torch.equal(result.foresight_latents, backend.stages.model.foresight_latents(expected.middle_out))
    assert [step_stage(i) for i in range(config.num_inference_steps)] == [
        s for s in timings if s.startswith("action_step_")]
    assert {"vision", "prefix", "cosmos_encode", "generation", "context", "foresight"} <= set(timings)
    assert timings[STAGE_TOTAL] >= sum(v for k, v in timings.items() if k != STAGE_TOTAL)


def test_uncached_recomputes_every_block_at_every_step(model_dir: Path) -> None:
    """torch-uncached runs the joint pass of all experts per step (counted), and agrees numerically."""
    options = BackendOptions(model_dir, threads=THREADS)
    cached = create_backend(["torch"], options).backend
    uncached = create_backend(["torch-uncached"], options).backend
    assert uncached.name == "torch-uncached" and isinstance(uncached.stages, TorchStages)
    model = uncached.stages.model
    calls = []
    # Every pass through the und expert projects its queries once in layer 0.
    counter = model.experts.language_model.layers[0].self_attn.q_proj.register_forward_hook(
        lambda *_: calls.append(1))
    try:
        inputs, noise, _ = load_batch(model_dir, load_config(model_dir))
        other = uncached.run(inputs, noise, foresight=True)
    finally:
        counter.remove()
    assert len(calls) == model.config.num_inference_steps  # the prefix recomputed at every step
    reference = cached.run(inputs, noise, foresight=True)
    assert (other.actions - reference.actions).abs().max().item() <= UNCACHED_ATOL
    assert other.foresight_latents is not None and reference.foresight_latents is not None
    assert (other.foresight_latents - reference.foresight_latents).abs().max().item() <= UNCACHED_ATOL


def test_uncached_cannot_be_compiled(model_dir: Path) -> None:
    with pytest.raises(BackendError, match="eager baseline"):
        create_backend(["torch-uncached"], BackendOptions(model_dir, threads=THREADS, compile=True))
