"""The inference path cut into graphs with fixed shapes, as ``nn.Module`` wrappers for ONNX export.

Each wrapper takes and returns plain tensors only (K/V stacked per layer), calls the model's own
stage methods, and leaves out what depends on data values (the M-RoPE ids of the prompt, the image
token count), which the host computes once per chunk. The ViT is the one exception to reusing model
code: transformers splits its attention per image with ``cu_seqlens.tolist()``, which export
cannot trace, so :func:`vision_embed` runs the same blocks with all images batched (the images
share one grid).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import vision_utils
from transformers.models.qwen3_vl.modeling_qwen3_vl import apply_rotary_pos_emb_vision

from internvla_ros.model.attention import GENERATION_BLOCK, PREFIX_BLOCK, LayerKV, mrope_prefix_positions
from internvla_ros.model.config import InternVLAConfig
from internvla_ros.model.modeling import BlockCache, InternVLAModel
from internvla_ros.model.rtc import autograd_guidance

VISION = "vision"
PREFIX = "prefix"
COSMOS_ENCODE = "cosmos_encode"
GENERATION = "generation"
ACTION_STEP = "action_step"
GUIDANCE_STEP = "guidance_step"
FORESIGHT = "foresight"
COSMOS_DECODE = "cosmos_decode"
GRAPH_NAMES = (VISION, PREFIX, COSMOS_ENCODE, GENERATION, ACTION_STEP, GUIDANCE_STEP, FORESIGHT, COSMOS_DECODE)


@dataclass(frozen=True)
class Layout:
    """Fixed token layout and tensor sizes of one configuration, batch 1."""

    n_views: int
    frames_per_view: int
    patches_per_view: int
    patch_values: int
    image_tokens_per_view: int
    und_hidden: int
    prefix_len: int
    generation_len: int
    suffix_len: int
    num_layers: int
    kv_heads: int
    head_dim: int
    chunk_size: int
    max_state_dim: int
    max_action_dim: int
    num_inference_steps: int
    frame_hw: tuple[int, int]
    latent_channels: int
    latent_hw: tuple[int, int]
    cosmos_hw: tuple[int, int]
    expert_hidden: int

    @classmethod
    def of(cls, config: InternVLAConfig) -> Layout:
        t, h, w = config.vision_grid
        return cls(
            n_views=config.n_views, frames_per_view=config.frames_per_view, patches_per_view=t * h * w,
            patch_values=config.vision.patch_values, image_tokens_per_view=config.image_tokens_per_view,
            und_hidden=config.und.hidden_size, prefix_len=config.prefix_len, generation_len=config.generation_len,
            suffix_len=config.suffix_len, num_layers=config.und.num_layers, kv_heads=config.und.num_kv_heads,
            head_dim=config.und.head_dim, chunk_size=config.chunk_size, max_state_dim=config.max_state_dim,
            max_action_dim=config.max_action_dim, num_inference_steps=config.num_inference_steps,
            frame_hw=config.image_resolution, latent_channels=config.cosmos_latent_channels,
            latent_hw=config.cosmos_latent_hw, cosmos_hw=config.cosmos_resolution,
            expert_hidden=config.act.hidden_size,
        )

    def kv_shape(self, tokens: int) -> tuple[int, ...]:
        return (self.num_layers, 1, self.kv_heads, tokens, self.head_dim)

    @property
    def context_len(self) -> int:
        return self.prefix_len + self.generation_len


# ------------------------------------------------------------------------------------------------
# Shared by the export wrappers and the graph stages.
# ------------------------------------------------------------------------------------------------
def stack_kv(layers: tuple[LayerKV, ...]) -> tuple[Tensor, Tensor]:
    """Per-layer K/V -> ``(layers, B, kv_heads, L, head_dim)`` keys and values."""
    return torch.stack([kv.keys for kv in layers]), torch.stack([kv.values for kv in layers])


def unstack_kv(keys: Tensor, values: Tensor) -> tuple[LayerKV, ...]:
    return tuple(LayerKV(keys[i], values[i]) for i in range(keys.shape[0]))


def block_ids(prefix_len: int, generation_len: int, device: torch.device) -> Tensor:
    ids = torch.full((prefix_len + generation_len,), GENERATION_BLOCK, device=device)
    ids[:prefix_len] = PREFIX_BLOCK
    return ids


def prefix_positions(config: InternVLAConfig, input_ids: Tensor, attention_mask: Tensor,
                     image_grid_thw: Tensor) -> Tensor:
    """M-RoPE ids ``(3, B, L)`` of the prefix (host side: depends on where the prompt's tokens are)."""
    return mrope_prefix_positions(input_ids, attention_mask, image_grid_thw, config.tokens.image,
                                  config.vision.spatial_merge_size)


def vision_inputs(model: InternVLAModel, image_grid_thw: Tensor) -> dict[str, Tensor]:
    """What the ViT computes from the grid alone (constant for a fixed layout)."""
    visual = model.experts.visual
    grid = image_grid_thw.reshape(-1, 3)
    indices, weights = vision_utils.get_vision_interpolation_indices_and_weights(
        grid, visual.num_grid_per_side, mode=visual.interpolation_mode,
        align_corners=visual.interpolation_align_corners, spatial_merge_size=visual.spatial_merge_size,
    )
    return {"interp_indices": indices, "interp_weights": weights,
            "position_ids": vision_utils.get_vision_position_ids(grid, visual.spatial_merge_size)}


def vision_embed(model: InternVLAModel, patches: Tensor, images: int, grid: dict[str, Tensor]) -> Tensor:
    """ViT + merger over ``images`` equally sized images, attention batched per image."""
    visual = model.experts.visual
    hidden = visual.patch_embed(patches.to(visual.patch_embed.proj.weight.dtype))
    positions = (visual.pos_embed(grid["interp_indices"]) * grid["interp_weights"][:, :, None]).sum(1)
    hidden = hidden + positions.to(hidden.dtype)
    cos, sin = visual.rotary_pos_emb(hidden, grid["position_ids"])
    length = hidden.shape[0]
    for block in visual.blocks:
        attn = block.attn
        q, k, v = attn.qkv(block.norm1(hidden)).reshape(length, 3, attn.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
        q, k = apply_rotary_pos_emb_vision(q, k, cos, sin)

        def per_image(x: Tensor, heads: int = attn.num_heads) -> Tensor:
            return x.reshape(images, length // images, heads, -1).transpose(1, 2)

        out = F.scaled_dot_product_attention(per_image(q), per_image(k), per_image(v), scale=attn.scaling)
        hidden = hidden + attn.proj(out.transpose(1, 2).reshape(length, -1))
        hidden = hidden + block.mlp(block.norm2(hidden))
    return visual.merger(hidden)


class TwoPassGroupNorm(nn.GroupNorm):
    """GroupNorm exported as ONNX InstanceNormalization over each group shifted by its first value.

    ONNX Runtime's GroupNormalization kernel (CPU, 1.31) takes the variance as E[x^2] - E[x]^2, which
    cancels on near-constant groups: an all-black (missing) camera frame gave Cosmos latents 3.9e-3
    away from torch's, and a constant 3.0 with noise 1e-4 gives NaN (a negative variance). Its
    InstanceNormalization kernel takes the mean, then the mean of the centred squares (two passes),
    in one op; only its float32 sum of a near-constant group is inexact (1e-3 after normalising),
    and subtracting the group's first value first (exact for values within 2x of each other) leaves
    it small residuals to sum. Computed in float32 whatever the weights' dtype; shares the weights
    of the norm it replaces.
    """

    def __init__(self, norm: nn.GroupNorm) -> None:
        super().__init__(norm.num_groups, norm.num_channels, eps=norm.eps, affine=norm.affine)
        self.weight, self.bias = norm.weight, norm.bias

    def forward(self, x: Tensor) -> Tensor:
        grouped = x.float().reshape(x.shape[0], self.num_groups, -1)
        shifted = grouped - grouped[:, :, :1]
        per_channel = self.affine and self.num_groups == self.num_channels
        weight, bias = (self.weight.float(), self.bias.float()) if per_channel else (None, None)
        y = F.instance_norm(shifted, weight=weight, bias=bias, eps=self.eps).reshape(x.shape)
        if self.affine and not per_channel:
            shape = (1, -1, *([1] * (x.ndim - 2)))
            y = y * self.weight.float().reshape(shape) + self.bias.float().reshape(shape)
        return y.to(x.dtype)


def stabilize_group_norms(module: nn.Module) -> None:
    """Replace every ``nn.GroupNorm`` under ``module`` by :class:`TwoPassGroupNorm` (same weights), in place."""
    for name, child in module.named_children():
        if isinstance(child, nn.GroupNorm) and not isinstance(child, TwoPassGroupNorm):
            setattr(module, name, TwoPassGroupNorm(child))
        else:
            stabilize_group_norms(child)


# ------------------------------------------------------------------------------------------------
# Export wrappers: one per graph.
# ------------------------------------------------------------------------------------------------
class VisionGraph(nn.Module):
    """``pixel_values (views * patches, 1536)`` -> ``image_embeds (views * tokens, und_hidden)``."""

    def __init__(self, model: InternVLAModel, layout: Layout) -> None:
        super().__init__()
        self.model = model
        self.images = layout.n_views
        grid = torch.tensor([model.config.vision_grid] * layout.n_views)
        for name, value in vision_inputs(model, grid).items():
            self.register_buffer(name, value, persistent=False)

    def forward(self, pixel_values: Tensor) -> Tensor:
        grid = {name: getattr(self, name) for name in ("interp_indices", "interp_weights", "position_ids")}
        return vision_embed(self.model, pixel_values, self.images, grid)


class PrefixGraph(nn.Module):
    """Prompt + image embeddings through the und expert -> per-layer K/V of the prefix."""

    def __init__(self, model: InternVLAModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: Tensor, attention_mask: Tensor, image_embeds: Tensor,
                position_ids: Tensor) -> tuple[Tensor, Tensor]:
        block = self.model.prefix_tokens(input_ids, attention_mask, image_embeds, position_ids)
        _, cache = self.model.run_prefix(block)
        return stack_kv(cache.layers)


class CosmosEncodeGraph(nn.Module):
    """One frame ``(1, 3, 224, 224)`` in [0, 1] -> Cosmos latents ``(1, 16, 32, 32)``: a call per frame, so a
    frame seen before or a missing camera's costs nothing."""

    def __init__(self, model: InternVLAModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, frames: Tensor) -> Tensor:
        return self.model.encode_frames(frames)


class GenerationGraph(nn.Module):
    """Foresight tokens through the gen expert, reading the prefix K/V."""

    def __init__(self, model: InternVLAModel, layout: Layout) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("prefix_blocks", block_ids(layout.prefix_len, 0, torch.device("cpu")), persistent=False)

    def forward(self, cosmos_latents: Tensor, view_mask: Tensor, prefix_keys: Tensor, prefix_values: Tensor,
                prefix_valid: Tensor, prefix_positions: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        prefix = BlockCache(unstack_kv(prefix_keys, prefix_values), self.prefix_blocks, prefix_valid.bool(),
                            prefix_positions)
        block = self.model.embed_generation(cosmos_latents, view_mask, prefix_positions)
        middle_out, cache = self.model.run_generation(prefix, block)
        keys, values = stack_kv(cache.layers)
        return middle_out, keys, values, cache.valid, cache.positions


class ActionStepGraph(nn.Module):
    """One flow-matching step: context K/V + state + ``x_t`` + time -> velocity ``v_t``."""

    def __init__(self, model: InternVLAModel, layout: Layout) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("blocks", block_ids(layout.prefix_len, layout.generation_len, torch.device("cpu")),
                             persistent=False)

    def forward(self, context_keys: Tensor, context_values: Tensor, context_valid: Tensor,
                context_positions: Tensor, state: Tensor, x_t: Tensor, time: Tensor) -> Tensor:
        context = BlockCache(unstack_kv(context_keys, context_values), self.blocks, context_valid.bool(),
                             context_positions)
        return self.model.denoise_step(context, state, x_t, time)


class GuidanceStepGraph(ActionStepGraph):
    """Real-time chunking's step: the velocity and its guidance vector (:func:`~internvla_ros.model.rtc.
    autograd_guidance`, one backward pass through the action expert). ``trace_autograd``: the export
    traces the backward pass into plain ops first (``torch.export`` cannot export ``autograd.grad``)."""

    trace_autograd = True

    def forward(self, context_keys: Tensor, context_values: Tensor, context_valid: Tensor,  # type: ignore[override]
                context_positions: Tensor, state: Tensor, x_t: Tensor, time: Tensor, target: Tensor,
                weights: Tensor) -> tuple[Tensor, Tensor]:
        step = autograd_guidance(lambda x, t: super(GuidanceStepGraph, self).forward(
            context_keys, context_values, context_valid, context_positions, state, x, t))
        return step(x_t, time, target, weights)


class ForesightGraph(nn.Module):
    """Gen expert output -> predicted Cosmos latents of frame t+15 ``(1, views, 16, 32, 32)``."""

    def __init__(self, model: InternVLAModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, middle_out: Tensor) -> Tensor:
        return self.model.foresight_latents(middle_out)


class CosmosDecodeGraph(nn.Module):
    """Cosmos latents ``(views, 16, 32, 32)`` -> preview images ``(views, 3, 256, 256)`` in ~[-1, 1]."""

    def __init__(self, model: InternVLAModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, latents: Tensor) -> Tensor:
        return self.model.model.cosmos.decode(latents).float()
