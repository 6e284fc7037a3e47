"""The model's faster formulations against the modules they stand in for: transformers' per-image ViT
attention, and the released convolutions between Cosmos latents and foresight tokens."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLVisionAttention

from internvla_ros.model.checkpoint import load_checkpoint
from internvla_ros.model.experts import ImageBatchAttention
from internvla_ros.model.foresight_tokens import latent_tokens, token_latents

CASE_A = Path(__file__).resolve().parents[1] / "fixtures" / "internvla_a1_reference" / "case_a"


@pytest.mark.parametrize("grids", [[[1, 16, 16]] * 5, [[1, 16, 16], [1, 8, 12], [1, 16, 16]]],
                         ids=["equal images", "unequal images"])
def test_image_batch_attention_equals_transformers_per_image_attention(grids: list[list[int]]) -> None:
    visual = load_checkpoint(CASE_A).model.eval().experts.visual
    assert all(isinstance(block.attn, ImageBatchAttention) for block in visual.blocks)
    grid = torch.tensor(grids)
    generator = torch.Generator().manual_seed(3)
    pixels = torch.randn(int(grid.prod(dim=1).sum()), visual.patch_embed.proj.weight[0].numel(), generator=generator)
    with torch.no_grad():
        batched = visual.embed(pixels, grid)
        for block in visual.blocks:
            block.attn.__class__ = Qwen3VLVisionAttention  # transformers' own forward, same weights
        per_image = visual.embed(pixels, grid)
    torch.testing.assert_close(batched, per_image, atol=1e-6, rtol=1e-6)


def test_foresight_tokens_equal_the_released_convolutions() -> None:
    torch.manual_seed(0)
    width, channels, scale = 24, 16, 8
    in_proj, down = nn.Conv2d(channels, width, 1), nn.Conv2d(width, width, scale, stride=scale)
    up = nn.ConvTranspose2d(width, width, scale, stride=scale)
    latents = torch.randn(5, channels, 32, 32)
    with torch.no_grad():
        reference = down(in_proj(latents)).flatten(2).transpose(1, 2)  # (M, 16, D), row-major patches
        torch.testing.assert_close(latent_tokens(latents, in_proj, down), reference, atol=1e-5, rtol=1e-5)
        tokens = torch.randn(5, 4, 4, width)
        expected = up(tokens.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)  # channels-last (M, 32, 32, D)
        torch.testing.assert_close(token_latents(tokens, up), expected, atol=1e-5, rtol=1e-5)
