"""Parameter counts and the analytic FLOP count of one action chunk.

FLOPs count a multiply-add as 2 and include every matrix product and convolution: projections,
MLPs, attention scores and weighted sums, the ViT, the projection heads, and the Cosmos encoder.
Norms, RoPE, softmax, activations and residual adds (all O(tokens x width)) are left out; they are
well under 1% of the total. The Cosmos encoder is convolutional with shape-dependent layers, so its
count is taken by torch's FLOP counter over the module on the meta device (no memory, no compute).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from internvla_ros.model.config import ExpertConfig, InternVLAConfig
from internvla_ros.model.cosmos import AttnBlock, CosmosImageTokenizer


def _numel(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def parameter_groups(model: nn.Module) -> dict[str, int]:
    """Parameters per component of an :class:`~internvla_ros.model.modeling.InternVLAModel`.

    The tied embedding is counted once, under ``und LM embedding (tied lm_head)``.
    """
    m = model.model
    experts = m.qwen3_vl_with_expert
    und = experts.und_expert
    lm = und.model.language_model
    visual = und.model.visual
    deepstack = _numel(visual.deepstack_merger_list)
    return {
        "ViT (+ merger)": _numel(visual) - deepstack,
        "ViT DeepStack mergers (unused)": deepstack,
        "und LM layers + norm": _numel(lm.layers) + _numel(lm.norm),
        "und LM embedding (tied lm_head)": und.lm_head.weight.numel(),
        "gen expert": _numel(experts.gen_expert),
        "act expert": _numel(experts.act_expert),
        "Cosmos encoder": _numel(m.cosmos._enc_model),
        "Cosmos decoder": _numel(m.cosmos._dec_model),
        "foresight heads": sum(_numel(getattr(m, n)) for n in (
            "cosmos_in_proj", "downsample_conv", "upsample_conv", "cosmos_out_layer_norm", "cosmos_out_proj")),
        "action heads": sum(_numel(getattr(m, n)) for n in (
            "state_proj", "action_in_proj", "action_time_mlp_in", "action_time_mlp_out", "action_out_proj")),
    }


def expert_flops(expert: ExpertConfig, queries: int, keys: int) -> int:
    """One pass of an expert stack: ``queries`` new tokens attending to ``keys`` tokens (cached + new)."""
    d, i = expert.hidden_size, expert.intermediate_size
    projections = 2 * queries * (d * expert.q_width + 2 * d * expert.kv_width + expert.q_width * d)
    mlp = 2 * queries * 3 * d * i
    attention = 2 * 2 * queries * keys * expert.q_width
    return expert.num_layers * (projections + mlp + attention)


def vit_flops(config: InternVLAConfig) -> int:
    """The ViT + merger over all camera images (DeepStack mergers are not run)."""
    v = config.vision
    t, h, w = config.vision_grid
    n = t * h * w
    merged = n // v.spatial_merge_size**2
    wide = v.hidden_size * v.spatial_merge_size**2
    qkv_and_out = 2 * n * 4 * v.hidden_size**2
    attention = 2 * 2 * n * n * v.hidden_size
    mlp = 2 * n * 2 * v.hidden_size * v.intermediate_size
    patch_embed = 2 * n * v.patch_values * v.hidden_size
    merger = 2 * merged * (wide * wide + wide * v.out_hidden_size)
    per_image = patch_embed + v.depth * (qkv_and_out + attention + mlp) + merger
    return config.n_views * per_image


def _cosmos_encode_counts(config: InternVLAConfig) -> tuple[int, int]:
    """(all FLOPs, self-attention FLOPs) of the Cosmos encoder for one frame, on the meta device."""
    with torch.device("meta"):
        cosmos = CosmosImageTokenizer(config.cosmos)
    frame = torch.empty(1, config.cosmos.in_channels, *config.cosmos_resolution, device="meta")
    attention = 0

    def count(_: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        nonlocal attention
        b, c, h, w = args[0].shape
        attention += 4 * b * (h * w) ** 2 * c  # scores and weighted sum over N = h * w tokens

    hooks = [m.register_forward_pre_hook(count) for m in cosmos._enc_model.modules() if isinstance(m, AttnBlock)]
    with FlopCounterMode(display=False) as counter:
        cosmos.encode(frame)
    for hook in hooks:
        hook.remove()
    return int(counter.get_total_flops()), attention


def cosmos_encode_flops(config: InternVLAConfig) -> int:
    """Cosmos encoder FLOPs for one frame, counted on the meta device."""
    return _cosmos_encode_counts(config)[0]


def cosmos_attention_flops(config: InternVLAConfig) -> int:
    """The part of :func:`cosmos_encode_flops` spent in self-attention (a fused kernel on real CPUs,
    which the FLOP counter sees only on the meta device)."""
    return _cosmos_encode_counts(config)[1]


@dataclass(frozen=True)
class ChunkFlops:
    """FLOPs of one action chunk, per stage."""

    vision: int
    prefix: int
    cosmos_encode: int
    """All ``n_views x frames_per_view`` frames; half of it if the t-15 latents are kept from earlier."""
    generation: int
    action_step: int
    action_steps: int

    @property
    def total(self) -> int:
        return self.vision + self.prefix + self.cosmos_encode + self.generation + self.action_steps * self.action_step


def chunk_flops(config: InternVLAConfig) -> ChunkFlops:
    """Analytic FLOPs of one chunk with K/V reuse (prefix and generation once, then the action steps)."""
    prefix, generation, suffix = config.prefix_len, config.generation_len, config.suffix_len
    width = config.gen.hidden_size
    frames = config.n_views * config.frames_per_view
    tokens_per_frame = config.foresight_tokens_per_frame
    scale = config.foresight_scale_factor
    channels = config.cosmos_latent_channels
    # foresight_tokens: the two input maps folded into one (D, s, s, C) matrix, then one product per token
    generation_heads = 2 * width * scale * scale * width * channels + 2 * frames * tokens_per_frame * (
        scale * scale * channels * width)
    chunk = config.chunk_size
    action_heads = 2 * (config.max_state_dim * width + chunk * (config.max_action_dim * width + 2 * width * width
                                                                 + width * width + width * config.max_action_dim))
    return ChunkFlops(
        vision=vit_flops(config),
        prefix=expert_flops(config.und, prefix, prefix),
        cosmos_encode=frames * cosmos_encode_flops(config),
        generation=generation_heads + expert_flops(config.gen, generation, prefix + generation),
        action_step=action_heads + expert_flops(config.act, suffix, prefix + generation + suffix),
        action_steps=config.num_inference_steps,
    )
