"""The analytic FLOP count against torch's FLOP counter on the fixture model."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file
from torch.utils.flop_counter import FlopCounterMode

from internvla_ros.model.checkpoint import load_checkpoint
from internvla_ros.model.config import internvla_a1_3b_config
from internvla_ros.model.cost import chunk_flops, cosmos_attention_flops, cosmos_encode_flops
from internvla_ros.model.inputs import ModelInputs

torch.set_num_threads(1)

CASE_A = Path(__file__).resolve().parents[1] / "fixtures" / "internvla_a1_reference" / "case_a"
FLOP_RTOL = 1e-3
"""The analytic count leaves out norms, RoPE and softmax only."""


def attention_flops(queries: int, keys: int, width: int, layers: int) -> int:
    """QK^T and AV; torch's counter does not see the CPU fused attention kernel."""
    return layers * 2 * 2 * queries * keys * width


def test_analytic_chunk_flops_match_the_counter() -> None:
    model = load_checkpoint(CASE_A).model
    config = model.config
    batch = load_file(CASE_A / "inputs.safetensors")
    inputs = ModelInputs(
        pixel_values=batch["observation.pixel_values"],
        image_grid_thw=batch["observation.image_grid_thw"],
        input_ids=batch["observation.input_ids"],
        attention_mask=batch["observation.attention_mask"],
        state=batch["observation.state"],
        view_mask=torch.ones(1, 3, dtype=torch.bool),
        frames=torch.stack([batch[f"observation.images.image{k}"] for k in range(3)], dim=1),
    )
    with FlopCounterMode(display=False) as counter:
        model.predict(inputs, batch["noise"])
    flops = chunk_flops(config)
    grid = config.vision_grid[1] * config.vision_grid[2]
    prefix, generation, suffix = config.prefix_len, config.generation_len, config.suffix_len
    width, layers = config.und.q_width, config.und.num_layers
    unseen = (
        config.n_views * attention_flops(grid, grid, config.vision.hidden_size, config.vision.depth)
        + attention_flops(prefix, prefix, width, layers)
        + attention_flops(generation, prefix + generation, width, layers)
        + config.num_inference_steps * attention_flops(suffix, prefix + generation + suffix, width, layers)
        + config.n_views * config.frames_per_view * cosmos_attention_flops(config)
    )
    counted = counter.get_total_flops()
    assert abs(flops.total - unseen - counted) <= FLOP_RTOL * counted


def test_3b_cosmos_encoder_cost() -> None:
    per_frame = cosmos_encode_flops(internvla_a1_3b_config())
    assert 78e9 < per_frame < 80e9  # "about 79 GFLOP per 256x256 image"
