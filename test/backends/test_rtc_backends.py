"""Real-time chunking on ONNX Runtime (the exported guidance graph) against the torch pipeline."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from internvla_ros.backends import onnxruntime_backend
from internvla_ros.model.checkpoint import load_checkpoint
from internvla_ros.model.rtc import RtcGuidance, shift_chunk
from internvla_ros.model.torch_stages import torch_pipeline
from test.model.test_modeling import make_inputs

RTC_ATOL = 1e-4
"""Guided chunk, ONNX Runtime vs torch, float32: 6e-6 measured (plain chunk: 6e-6)."""


@pytest.mark.parametrize("schedule", ["exp", "hard"])
def test_onnxruntime_guided_chunk_equals_torch(model_dir: Path, engine_dir: Path, schedule: str) -> None:
    ort = onnxruntime_backend.create(model_dir, engine_dir, threads=1)
    torch_ = torch_pipeline(load_checkpoint(model_dir).model)
    batch = load_file(model_dir / "inputs.safetensors")
    inputs, noise = make_inputs(batch), batch["noise"]
    with torch.inference_mode():
        previous = torch_.run(inputs, torch.randn(noise.shape, generator=torch.Generator().manual_seed(7))).actions
        guidance = RtcGuidance.build(shift_chunk(previous[0].numpy(), 2), 4, 10, beta=5.0, schedule=schedule,
                                     dim=noise.shape[2])
        expected = torch_.run(inputs, noise, rtc=guidance).actions
        got = ort.run(inputs, noise, rtc=guidance).actions
        plain = ort.run(inputs, noise).actions
    assert (got - expected).abs().max().item() < RTC_ATOL
    assert (got - plain).abs().max().item() > 100 * RTC_ATOL  # the guidance really acted


def test_onnxruntime_refuses_prefix_conditioning_with_the_fix(model_dir: Path, engine_dir: Path) -> None:
    """Its action-step graph takes one flow time per chunk: a model trained with training-time RTC is refused
    (never run with the per-step times cut to one) and told to use torch."""
    from internvla_ros.model.errors import ModelError
    from internvla_ros.model.rtc import RtcPrefix

    ort = onnxruntime_backend.create(model_dir, engine_dir, threads=1)
    batch = load_file(model_dir / "inputs.safetensors")
    inputs, noise = make_inputs(batch), batch["noise"]
    prefix = RtcPrefix.build(torch.zeros(noise.shape[1], 4).numpy(), delay=3, max_delay=5, dim=noise.shape[2])
    with torch.inference_mode(), pytest.raises(ModelError, match="use backend torch"):
        ort.run(inputs, noise, rtc=prefix)
    with torch.inference_mode():  # a prefix of 0 steps is plain sampling, which the graphs run
        assert ort.run(inputs, noise, rtc=RtcPrefix(prefix.actions, 0)).actions.shape == noise.shape
