"""InternVLA-A1: understanding, generation (visual foresight) and action experts with one shared attention.

Inference does each piece of work once per chunk:

1. :meth:`InternVLAModel.run_prefix` — ViT + prompt through the und expert; per-layer K/V kept.
2. :meth:`InternVLAModel.run_generation` — the 96 Cosmos tokens through the gen expert, reading the
   prefix K/V; its own K/V kept (:class:`BlockCache`), reusable across chunks when foresight is
   refreshed at a lower rate than the actions.
3. :meth:`InternVLAModel.sample_actions` — each Euler step runs only the state + action tokens
   through the act expert against the cached K/V (:meth:`InternVLAModel.action_context`).

:meth:`InternVLAModel.predict` and :meth:`InternVLAModel.predict_uncached` (all blocks recomputed
jointly at every step, the layout the model is trained with, also used by :meth:`InternVLAModel.forward`)
run the one staged pipeline (:mod:`internvla_ros.model.pipeline`) over :class:`TorchStages
<internvla_ros.model.torch_stages.TorchStages>`; every pass goes through
:func:`~internvla_ros.model.attention.mixed_layer`.

Precision: float32 everywhere gives parity with the reference. With :meth:`InternVLAModel.to_precision`
(bfloat16) the experts and the ViT run in bf16 while every RMSNorm weight, the RoPE tables and all
projection heads (state/action/time/foresight, including ``action_out_proj``) stay float32, as in the
reference; Cosmos runs in the dtype asked for (the rule every loader applies is
:func:`~internvla_ros.model.pipeline.cosmos_dtype`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLTextRMSNorm

from internvla_ros.model.attention import (
    ACTION_BLOCK,
    GENERATION_BLOCK,
    PREFIX_BLOCK,
    STATE_BLOCK,
    LayerKV,
    attention_recorder,
    block_attention_bias,
    following_positions,
    mixed_layer,
    mrope_prefix_positions,
)
from internvla_ros.model.config import InternVLAConfig
from internvla_ros.model.cosmos import CosmosImageTokenizer
from internvla_ros.model.errors import ModelError, PreprocessingError
from internvla_ros.model.experts import MixtureOfExperts, TextExpert
from internvla_ros.model.foresight_tokens import latent_tokens, token_latents
from internvla_ros.model.inputs import ModelInputs
from internvla_ros.model.pipeline import SamplerTrace, euler
from internvla_ros.model.preprocessing import cosmos_frames


def sinusoidal_time_embedding(time: Tensor, dim: int, min_period: float, max_period: float) -> Tensor:
    """Sine-cosine embedding ``(*time.shape, dim)`` of flow-matching times (``(B,)`` one per chunk, ``(B, chunk)``
    one per action step), computed in float64 like the reference."""
    fraction = torch.linspace(0.0, 1.0, dim // 2, dtype=torch.float64, device=time.device)
    period = min_period * (max_period / min_period) ** fraction
    angle = (2 * math.pi / period) * time.to(torch.float64)[..., None]
    return torch.cat([torch.sin(angle), torch.cos(angle)], dim=-1).to(time.dtype)


def pad_last_dim(x: Tensor, size: int, what: str) -> Tensor:
    """Zero-pad the feature axis to ``size`` (state and actions are padded to 32 dims)."""
    if x.shape[-1] > size:
        raise PreprocessingError(f"{what} has {x.shape[-1]} dims, more than the model's {size}")
    return F.pad(x, (0, size - x.shape[-1]))


def check_image_tokens(config: InternVLAConfig, input_ids: Tensor, image_embeds: int) -> None:
    """As many image tokens in the prompt as the ViT gave embeddings, or a PreprocessingError."""
    found = int((input_ids == config.tokens.image).sum())
    if found != image_embeds:
        raise PreprocessingError(f"{found} image tokens in input_ids but the ViT produced {image_embeds} embeddings")


@dataclass(frozen=True)
class BlockCache:
    """Per-layer post-RoPE keys/values of consecutive blocks, with their layout."""

    layers: tuple[LayerKV, ...]
    blocks: Tensor
    """(L,) block id of every token."""
    valid: Tensor
    """(B, L) False for padding tokens and missing cameras."""
    positions: Tensor
    """(3, B, L) M-RoPE ids."""

    def extend(self, other: BlockCache) -> BlockCache:
        return BlockCache(
            layers=tuple(
                LayerKV(torch.cat([a.keys, b.keys], dim=2), torch.cat([a.values, b.values], dim=2))
                for a, b in zip(self.layers, other.layers, strict=True)
            ),
            blocks=torch.cat([self.blocks, other.blocks]),
            valid=torch.cat([self.valid, other.valid], dim=1),
            positions=torch.cat([self.positions, other.positions], dim=2),
        )


@dataclass(frozen=True)
class TokenBlock:
    """Embeddings of one block of tokens, ready for the transformer."""

    embeds: Tensor
    valid: Tensor
    positions: Tensor
    block_ids: Tensor


@dataclass(frozen=True)
class Prediction:
    """Actions of one chunk, and the intermediates that parity checks compare."""

    actions: Tensor
    prefix_out: Tensor
    middle_out: Tensor
    cosmos_latents: Tensor
    prefix_position_ids: Tensor
    middle_position_ids: Tensor
    vit_image_embeds: Tensor
    prefix_embs: Tensor
    middle_embs: Tensor
    trace: SamplerTrace


@dataclass(frozen=True)
class Losses:
    """Training losses: per-element flow-matching MSE ``(B, chunk, max_action_dim)`` and foresight MSE."""

    action: Tensor
    foresight: Tensor


class InternVLAModules(nn.Module):
    """The released ``model.*`` layout: experts, Cosmos and the projection heads."""

    def __init__(self, config: InternVLAConfig) -> None:
        super().__init__()
        width = config.act.hidden_size
        latent = config.cosmos_latent_channels
        scale = config.foresight_scale_factor
        self.qwen3_vl_with_expert = MixtureOfExperts(config)
        self.cosmos = CosmosImageTokenizer(config.cosmos)
        self.cosmos_in_proj = nn.Conv2d(latent, width, kernel_size=1)
        self.downsample_conv = nn.Conv2d(width, width, kernel_size=scale, stride=scale)
        self.upsample_conv = nn.ConvTranspose2d(width, width, kernel_size=scale, stride=scale)
        self.cosmos_out_layer_norm = nn.LayerNorm(width, eps=config.foresight_layernorm_eps)
        self.cosmos_out_proj = nn.Linear(width, latent)
        self.state_proj = nn.Linear(config.max_state_dim, width)
        self.action_in_proj = nn.Linear(config.max_action_dim, width)
        self.action_time_mlp_in = nn.Linear(2 * width, width)
        self.action_time_mlp_out = nn.Linear(width, width)
        self.action_out_proj = nn.Linear(width, config.max_action_dim)


class InternVLAModel(nn.Module):
    """InternVLA-A1-3B policy network; ``state_dict()`` keys equal the released checkpoint's."""

    def __init__(self, config: InternVLAConfig) -> None:
        super().__init__()
        self.config = config
        self.model = InternVLAModules(config)

    # ---------------------------------------------------------------- precision and the shared layer pass
    @property
    def experts(self) -> MixtureOfExperts:
        return self.model.qwen3_vl_with_expert

    @property
    def compute_dtype(self) -> torch.dtype:
        return self.experts.language_model.compute_dtype

    def to_precision(self, dtype: torch.dtype, cosmos_dtype: torch.dtype | None = None) -> InternVLAModel:
        """Experts + ViT in ``dtype``; RMSNorm weights, RoPE tables and heads float32; Cosmos in ``cosmos_dtype``."""
        self.model.float()
        self.experts.to(dtype)
        for module in self.experts.modules():
            if isinstance(module, Qwen3VLTextRMSNorm):
                module.float()
        self.experts.rotary.float()
        self.experts.visual.rotary_pos_emb.float()
        self.model.cosmos.to(cosmos_dtype or dtype)
        return self

    def _run(
        self,
        experts: list[TextExpert],
        blocks: list[TokenBlock],
        past: BlockCache | None,
    ) -> tuple[list[Tensor], tuple[LayerKV, ...]]:
        """All layers of the given experts over consecutive blocks (one expert per block)."""
        positions = torch.cat([b.positions for b in blocks], dim=2)
        valid = torch.cat([b.valid for b in blocks], dim=1)
        block_ids = torch.cat([b.block_ids for b in blocks])
        key_valid, key_blocks = valid, block_ids
        if past is not None:
            key_valid = torch.cat([past.valid, valid], dim=1)
            key_blocks = torch.cat([past.blocks, block_ids])
        dtype = experts[0].compute_dtype
        bias = block_attention_bias(block_ids, valid, key_blocks, key_valid, self.config.attention_mask_value, dtype)
        cos, sin = self.experts.rope(positions)
        rope = (cos.to(dtype), sin.to(dtype))
        hidden = [b.embeds.to(e.compute_dtype) for e, b in zip(experts, blocks, strict=True)]
        new_kv = []
        for index in range(self.config.und.num_layers):
            layers = [e.layers[index] for e in experts]
            hidden, kv = mixed_layer(layers, hidden, rope, bias, None if past is None else past.layers[index],
                                     attention_recorder(index, block_ids, key_blocks, key_valid))
            new_kv.append(kv)
        outputs = [e.final_norm(h) for e, h in zip(experts, hidden, strict=True)]
        return outputs, tuple(new_kv)

    # ---------------------------------------------------------------- prefix (ViT + prompt)
    def embed_images(self, pixel_values: Tensor, image_grid_thw: Tensor) -> Tensor:
        """ViT + merger: ``(B, patches, 1536)`` -> ``(B * n_views * 64, und_hidden)``."""
        visual = self.experts.visual
        patches = pixel_values.reshape(-1, pixel_values.shape[-1]).to(visual.patch_embed.proj.weight.dtype)
        return visual.embed(patches, image_grid_thw.reshape(-1, 3))

    def prefix_positions(self, input_ids: Tensor, attention_mask: Tensor, image_grid_thw: Tensor) -> Tensor:
        """M-RoPE ids ``(3, B, L)`` of the prefix (host side: they depend on where the prompt's tokens are)."""
        return mrope_prefix_positions(input_ids, attention_mask, image_grid_thw, self.config.tokens.image,
                                      self.config.vision.spatial_merge_size)

    def check_image_tokens(self, input_ids: Tensor, image_embeds: int) -> None:
        check_image_tokens(self.config, input_ids, image_embeds)

    def prefix_tokens(self, input_ids: Tensor, attention_mask: Tensor, image_embeds: Tensor,
                      positions: Tensor) -> TokenBlock:
        """Token embeddings with the image tokens replaced, in order, by ``image_embeds``.

        A gather rather than ``masked_scatter`` (same result when the counts match, see
        :meth:`check_image_tokens`), so that ONNX export can trace it.
        """
        embeds = self.experts.language_model.embed_tokens(input_ids)
        is_image = input_ids == self.config.tokens.image
        index = (torch.cumsum(is_image.long().flatten(), dim=0) - 1).clamp(min=0).reshape(is_image.shape)
        embeds = torch.where(is_image[..., None], image_embeds.to(embeds.dtype)[index], embeds)
        block_ids = torch.full((input_ids.shape[1],), PREFIX_BLOCK, device=input_ids.device)
        return TokenBlock(embeds, attention_mask.bool(), positions, block_ids)

    def embed_prefix(
        self, pixel_values: Tensor, image_grid_thw: Tensor, input_ids: Tensor, attention_mask: Tensor
    ) -> tuple[TokenBlock, Tensor]:
        """Token embeddings with the image tokens replaced by ViT outputs; also returns the ViT outputs."""
        image_embeds = self.embed_images(pixel_values, image_grid_thw)
        self.check_image_tokens(input_ids, image_embeds.shape[0])
        positions = self.prefix_positions(input_ids, attention_mask, image_grid_thw)
        return self.prefix_tokens(input_ids, attention_mask, image_embeds, positions), image_embeds

    def run_prefix(self, prefix: TokenBlock) -> tuple[Tensor, BlockCache]:
        """The und expert over the prefix; returns its final-norm output and per-layer K/V."""
        (prefix_out,), kv = self._run([self.experts.language_model], [prefix], None)
        return prefix_out, BlockCache(kv, prefix.block_ids, prefix.valid, prefix.positions)

    # ---------------------------------------------------------------- generation (visual foresight)
    def encode_frames(self, frames: Tensor) -> Tensor:
        """Cosmos latents ``(..., 16, 32, 32)`` float32 of frames ``(..., 3, 224, 224)`` in [0, 1].

        Frames can be encoded one at a time (e.g. the t-15 frame ahead of time) and stacked later.
        """
        lead = frames.shape[:-3]
        flat = cosmos_frames(frames.reshape(-1, *frames.shape[-3:]).float(), self.config.cosmos_resolution)
        latents = self.model.cosmos.encode(flat).float()
        return latents.reshape(*lead, *latents.shape[1:])

    def embed_generation(self, latents: Tensor, view_mask: Tensor, after: Tensor) -> TokenBlock:
        """Cosmos latents ``(B, N, T, 16, 32, 32)`` -> 16 tokens per view and frame, ordered (view, frame, h, w).

        ``after`` are the positions of the block it follows (the prefix).
        """
        cfg = self.config
        expected = (cfg.n_views, cfg.frames_per_view, cfg.cosmos_latent_channels, *cfg.cosmos_latent_hw)
        if latents.ndim != 6 or tuple(latents.shape[1:]) != expected:
            raise PreprocessingError(f"cosmos latents must be (B, {', '.join(map(str, expected))}), "
                                     f"got {tuple(latents.shape)}")
        batch = latents.shape[0]
        heads = self.model
        tokens = latent_tokens(latents.flatten(0, 2), heads.cosmos_in_proj, heads.downsample_conv)  # (B*N*T, 16, D)
        tokens = tokens.reshape(batch, -1, tokens.shape[-1])
        per_view = cfg.frames_per_view * cfg.foresight_tokens_per_frame
        valid = view_mask.bool().repeat_interleave(per_view, dim=1)
        positions = following_positions(after, tokens.shape[1])
        block_ids = torch.full((tokens.shape[1],), GENERATION_BLOCK, device=tokens.device)
        return TokenBlock(tokens, valid, positions, block_ids)

    def run_generation(self, prefix: BlockCache, generation: TokenBlock) -> tuple[Tensor, BlockCache]:
        """The gen expert over the foresight tokens, reading the prefix K/V.

        Returns the gen expert's final-norm output and the generation block's own K/V. Combine it
        with a prefix through :meth:`action_context`; a runtime may keep it for several chunks to
        refresh foresight at a lower rate than the actions.
        """
        (middle_out,), kv = self._run([self.experts.gen_expert], [generation], prefix)
        return middle_out, BlockCache(kv, generation.block_ids, generation.valid, generation.positions)

    @staticmethod
    def action_context(prefix: BlockCache, generation: BlockCache) -> BlockCache:
        """The K/V every action step reads: prefix, then generation (concatenated once per chunk)."""
        return prefix.extend(generation)

    def foresight_latents(self, middle_out: Tensor) -> Tensor:
        """Predicted Cosmos latent of frame t+15 per view ``(B, N, 16, 32, 32)`` (float32)."""
        cfg = self.config
        heads = self.model
        batch, width = middle_out.shape[0], middle_out.shape[-1]
        side = math.isqrt(cfg.foresight_tokens_per_frame)
        x = middle_out.float().reshape(batch, cfg.n_views, cfg.frames_per_view, side, side, width)
        x = token_latents(x.mean(dim=2).flatten(0, 1), heads.upsample_conv)  # (B*N, 32, 32, D)
        h, w = x.shape[1:3]
        x = heads.cosmos_out_proj(heads.cosmos_out_layer_norm(x))
        return x.reshape(batch, cfg.n_views, h, w, -1).permute(0, 1, 4, 2, 3)

    def decode_foresight(self, latents: Tensor) -> Tensor:
        """Cosmos-decode predicted latents ``(B, N, 16, 32, 32)`` to images ``(B, N, 3, 256, 256)`` in ~[-1, 1].

        Works with Cosmos in float32 or bf16 (the latents are cast to its dtype, the images returned float32).
        """
        images = self.model.cosmos.decode(latents.flatten(0, 1))
        return images.float().reshape(*latents.shape[:2], *images.shape[1:])

    # ---------------------------------------------------------------- actions (flow matching)
    def embed_suffix(self, state: Tensor, x_t: Tensor, time: Tensor, after: Tensor) -> TokenBlock:
        """State token, then the noisy action tokens fused with the time embedding (swish MLP). ``time``:
        ``(B,)``, or ``(B, chunk)`` with a time per action step (training-time RTC gives its prefix time 0)."""
        cfg = self.config
        heads = self.model
        state = pad_last_dim(state, cfg.max_state_dim, "state")
        state_emb = heads.state_proj(state.float())[:, None]
        time_emb = sinusoidal_time_embedding(time.float(), heads.action_in_proj.out_features, cfg.min_period,
                                             cfg.max_period)
        action_emb = heads.action_in_proj(x_t.float())
        if time_emb.ndim == 2:
            time_emb = time_emb[:, None]
        fused = torch.cat([action_emb, time_emb.expand_as(action_emb)], dim=2)
        action_time = heads.action_time_mlp_out(F.silu(heads.action_time_mlp_in(fused)))
        embeds = torch.cat([state_emb, action_time], dim=1)
        batch, length = embeds.shape[:2]
        block_ids = torch.full((length,), ACTION_BLOCK, device=embeds.device)
        block_ids[0] = STATE_BLOCK
        valid = torch.ones(batch, length, dtype=torch.bool, device=embeds.device)
        return TokenBlock(embeds, valid, following_positions(after, length), block_ids)

    def velocity(self, suffix_out: Tensor) -> Tensor:
        """action_out_proj (float32) over the action tokens."""
        return self.model.action_out_proj(suffix_out[:, -self.config.chunk_size:].float())

    def denoise_step(self, context: BlockCache, state: Tensor, x_t: Tensor, time: Tensor) -> Tensor:
        """Velocity ``v_t`` (float32) at ``x_t`` and times ``(B,)``; only the state + action tokens are computed."""
        suffix = self.embed_suffix(state, x_t, time, context.positions)
        (suffix_out,), _ = self._run([self.experts.act_expert], [suffix], context)
        return self.velocity(suffix_out)

    def _joint_pass(
        self, prefix: TokenBlock, generation: TokenBlock, state: Tensor, x_t: Tensor, time: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """All three experts over all blocks at once: (prefix_out, middle_out, v_t)."""
        suffix = self.embed_suffix(state, x_t, time, generation.positions)
        experts = [self.experts.language_model, self.experts.gen_expert, self.experts.act_expert]
        (prefix_out, middle_out, suffix_out), _ = self._run(experts, [prefix, generation, suffix], None)
        return prefix_out, middle_out, self.velocity(suffix_out)

    def sample_actions(
        self, context: BlockCache, state: Tensor, noise: Tensor, trace: SamplerTrace | None = None
    ) -> Tensor:
        """Actions ``(B, chunk, max_action_dim)`` from ``noise``, reading the cached prefix + generation K/V."""
        return euler(noise, self.config.num_inference_steps,
                     lambda x_t, time: self.denoise_step(context, state, x_t, time), trace=trace)

    # ---------------------------------------------------------------- whole chunk (the staged pipeline)
    def latents_for(self, inputs: ModelInputs) -> Tensor:
        if inputs.cosmos_latents is not None:
            return inputs.cosmos_latents.float()
        if inputs.frames is None:
            raise PreprocessingError("ModelInputs needs either frames or cosmos_latents for the foresight block")
        return self.encode_frames(inputs.frames)

    def _check_noise(self, noise: Tensor, batch: int) -> None:
        expected = (batch, self.config.chunk_size, self.config.max_action_dim)
        if tuple(noise.shape) != expected:
            raise ModelError(f"noise must have shape {expected}, got {tuple(noise.shape)}")

    def _embed(self, inputs: ModelInputs) -> tuple[TokenBlock, Tensor, TokenBlock, Tensor]:
        prefix, vit = self.embed_prefix(inputs.pixel_values, inputs.image_grid_thw, inputs.input_ids,
                                        inputs.attention_mask)
        latents = self.latents_for(inputs)
        return prefix, vit, self.embed_generation(latents, inputs.view_mask, prefix.positions), latents

    @torch.no_grad()
    def predict(self, inputs: ModelInputs, noise: Tensor) -> Prediction:
        """One chunk with K/V reuse (prefix once, generation once, then the action steps), with intermediates."""
        from internvla_ros.model.torch_stages import predict  # torch_stages builds on this module

        return predict(self, inputs, noise, kv_reuse=True)

    @torch.no_grad()
    def predict_uncached(self, inputs: ModelInputs, noise: Tensor) -> Prediction:
        """One chunk recomputing all three experts over all blocks at every step (no K/V reuse)."""
        from internvla_ros.model.torch_stages import predict

        return predict(self, inputs, noise, kv_reuse=False)

    # ---------------------------------------------------------------- training objective
    def sample_time(self, batch: int, device: torch.device | str = "cpu") -> Tensor:
        """Flow-matching training times ``Beta(alpha, beta) * scale + offset`` ``(B,)`` (float32)."""
        cfg = self.config
        alpha = torch.tensor(cfg.time_beta_alpha, dtype=torch.float32, device=device)
        beta = torch.tensor(cfg.time_beta_beta, dtype=torch.float32, device=device)
        sample = torch.distributions.Beta(alpha, beta).sample((batch,))
        return sample * cfg.time_scale + cfg.time_offset

    def forward(self, inputs: ModelInputs, actions: Tensor, future_latents: Tensor, noise: Tensor,
                time: Tensor) -> Losses:
        """Training losses at flow times ``time`` ``(B,)`` (or ``(B, chunk)``, one per action step):
        ``x_t = t * noise + (1 - t) * actions``, target ``noise - actions``, per element (the caller masks);
        foresight target ``future_latents`` ``(B, N, 16, 32, 32)`` (the t+15 frames).
        """
        actions = pad_last_dim(actions, self.config.max_action_dim, "actions")
        self._check_noise(noise, actions.shape[0])
        prefix, _, generation, _ = self._embed(inputs)
        t = time.float()[:, None, None] if time.ndim == 1 else time.float()[:, :, None]
        x_t = t * noise + (1 - t) * actions
        _, middle_out, v_t = self._joint_pass(prefix, generation, inputs.state, x_t, time)
        views = inputs.view_mask.bool()
        predicted = self.foresight_latents(middle_out)
        foresight = F.mse_loss(predicted[views], future_latents.float()[views])
        return Losses(action=F.mse_loss(v_t, noise - actions, reduction="none"), foresight=foresight)
