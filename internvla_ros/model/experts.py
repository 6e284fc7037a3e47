"""The three experts and the ViT, built from transformers' Qwen3-VL building blocks.

Attribute names mirror the released checkpoint, so ``state_dict()`` keys are the checkpoint keys:
``und_expert.model.visual.*``, ``und_expert.model.language_model.{embed_tokens,layers,norm}``,
``und_expert.lm_head``, ``{gen,act}_expert.{layers,norm}``. Only the modules are used; the forward
logic lives in :mod:`internvla_ros.model.attention` and :mod:`internvla_ros.model.modeling`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers.models.qwen3_vl.configuration_qwen3_vl import Qwen3VLTextConfig, Qwen3VLVisionConfig
from transformers.models.qwen3_vl.modeling_qwen3_vl import (
    Qwen3VLTextDecoderLayer,
    Qwen3VLTextRMSNorm,
    Qwen3VLTextRotaryEmbedding,
    Qwen3VLVisionAttention,
    Qwen3VLVisionModel,
    Qwen3VLVisionPatchEmbed,
    apply_rotary_pos_emb_vision,
)

from internvla_ros.model.config import ExpertConfig, InternVLAConfig, VisionConfig
from internvla_ros.model.errors import ConfigError


def hf_text_config(config: ExpertConfig) -> Qwen3VLTextConfig:
    """transformers' config object for one expert (only used to size its building blocks)."""
    return Qwen3VLTextConfig(
        vocab_size=config.vocab_size or 1,
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_kv_heads,
        head_dim=config.head_dim,
        hidden_act=config.hidden_act,
        rms_norm_eps=config.rms_norm_eps,
        attention_bias=config.attention_bias,
        rope_parameters={
            "rope_type": "default",
            "rope_theta": config.rope_theta,
            "mrope_section": list(config.mrope_section),
            "mrope_interleaved": config.mrope_interleaved,
        },
    )


def hf_vision_config(config: VisionConfig) -> Qwen3VLVisionConfig:
    return Qwen3VLVisionConfig(
        depth=config.depth,
        hidden_size=config.hidden_size,
        hidden_act=config.hidden_act,
        intermediate_size=config.intermediate_size,
        num_heads=config.num_heads,
        in_channels=config.in_channels,
        patch_size=config.patch_size,
        spatial_merge_size=config.spatial_merge_size,
        temporal_patch_size=config.temporal_patch_size,
        out_hidden_size=config.out_hidden_size,
        num_position_embeddings=config.num_position_embeddings,
        deepstack_visual_indexes=list(config.deepstack_visual_indexes),
        rope_parameters={"rope_type": "axial", "rope_theta": config.rotary_theta},
    )


class TextExpert(nn.Module):
    """A Qwen3-VL text decoder stack: ``layers.N.*`` and the final ``norm`` (+ ``embed_tokens``)."""

    def __init__(self, config: ExpertConfig, embed_tokens: nn.Embedding | None = None) -> None:
        super().__init__()
        hf = hf_text_config(config)
        self.config = config
        if embed_tokens is not None:
            self.embed_tokens = embed_tokens
        self.layers = nn.ModuleList(Qwen3VLTextDecoderLayer(hf, i) for i in range(config.num_layers))
        self.norm = Qwen3VLTextRMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    @property
    def compute_dtype(self) -> torch.dtype:
        return self.layers[0].self_attn.q_proj.weight.dtype

    def final_norm(self, hidden: Tensor) -> Tensor:
        return self.norm(hidden).to(hidden.dtype)


class PatchEmbedding(Qwen3VLVisionPatchEmbed):
    """The ViT's patch projection as one matrix product over flattened patches.

    Its Conv3d has kernel = stride = the patch, so it is a linear map of each patch; the weight stays a
    Conv3d (the checkpoint's ``patch_embed.proj.*``). On CPUs the matmul is several times faster than the
    convolution, and its backward about 7x (it was the largest single cost of a training step).
    """

    def forward(self, hidden_states: Tensor) -> Tensor:
        weight = self.proj.weight
        patches = hidden_states.reshape(-1, weight[0].numel()).to(weight.dtype)
        return F.linear(patches, weight.flatten(1), self.proj.bias)


class ImageBatchAttention(Qwen3VLVisionAttention):
    """The ViT's attention within each image, all images of one size in one call.

    transformers runs one attention call per image unless flash-attention is installed (it is not on
    CPUs); a batch-16 training step has 48 images (three camera slots) of 256 patches, and the per-call cost
    made their attention the largest part of a step. Images of unequal size keep the per-image calls.
    """

    def forward(self, hidden_states: Tensor, cu_seqlens: Tensor,
                position_embeddings: tuple[Tensor, Tensor] | None = None, **kwargs: object) -> Tensor:
        lengths = cu_seqlens[1:] - cu_seqlens[:-1]
        if len(lengths) < 2 or bool((lengths != lengths[0]).any()):
            return super().forward(hidden_states, cu_seqlens, position_embeddings, **kwargs)
        assert position_embeddings is not None  # the vision model always passes its rotary tables
        seq = hidden_states.shape[0]
        images, length = len(lengths), seq // len(lengths)
        q, k, v = self.qkv(hidden_states).reshape(seq, 3, self.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
        q, k = apply_rotary_pos_emb_vision(q, k, *position_embeddings)
        q, k, v = (t.reshape(images, length, self.num_heads, -1).transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v, scale=self.scaling)
        return self.proj(out.transpose(1, 2).reshape(seq, -1))


class VisionTower(Qwen3VLVisionModel):
    """Qwen3-VL ViT + merger. The DeepStack mergers are kept for their weights but never run.

    The reference discards the DeepStack features (``image_embs, _ = visual(...)``), so they cannot
    change the actions; clearing the layer indexes skips computing them at all.
    """

    def __init__(self, config: VisionConfig) -> None:
        super().__init__(hf_vision_config(config))
        self.deepstack_visual_indexes = ()
        self.patch_embed = PatchEmbedding(self.config)
        for block in self.blocks:  # built before any weights are loaded, so only the forward changes
            block.attn = ImageBatchAttention(self.config)

    def embed(self, pixel_values: Tensor, grid_thw: Tensor) -> Tensor:
        """Flattened patches ``(N, 1536)`` + grids ``(images, 3)`` -> merged embeddings ``(N / 4, out)``."""
        return self(pixel_values, grid_thw=grid_thw).pooler_output


class _VisionLanguageModel(nn.Module):
    """``und_expert.model``: ``visual`` + ``language_model``."""

    def __init__(self, config: InternVLAConfig, embed_tokens: nn.Embedding) -> None:
        super().__init__()
        self.visual = VisionTower(config.vision)
        self.language_model = TextExpert(config.und, embed_tokens=embed_tokens)


class UnderstandingExpert(nn.Module):
    """Qwen3-VL-2B: ViT + language model. ``lm_head`` is only the (tied) token embedding's storage."""

    def __init__(self, config: InternVLAConfig) -> None:
        super().__init__()
        vocab = config.und.vocab_size
        if vocab is None:  # InternVLAConfig already refuses this; narrows the type
            raise ConfigError("InternVLAConfig.und.vocab_size: the understanding expert needs a vocabulary")
        embed_tokens = nn.Embedding(vocab, config.und.hidden_size)
        self.model = _VisionLanguageModel(config, embed_tokens)
        self.lm_head = nn.Linear(config.und.hidden_size, vocab, bias=False)
        # Tied word embedding: the checkpoint stores only lm_head.weight.
        embed_tokens.weight = self.lm_head.weight


def mrope_axes(sections: tuple[int, ...], columns: int, device: torch.device | None = None) -> Tensor:
    """Position axis (0 t, 1 h, 2 w) of each rotary frequency column in Qwen3-VL's interleaved M-RoPE:
    columns 1, 4, 7, ... take h and 2, 5, 8, ... take w, each for ``3 * section`` columns; t the rest."""
    axes = torch.zeros(columns, dtype=torch.long, device=device)
    for axis in (1, 2):
        axes[axis:3 * sections[axis]:3] = axis
    return axes


class MixtureOfExperts(nn.Module):
    """``qwen3_vl_with_expert``: the three experts that share one attention per layer."""

    def __init__(self, config: InternVLAConfig) -> None:
        super().__init__()
        self.und_expert = UnderstandingExpert(config)
        self.gen_expert = TextExpert(config.gen)
        self.act_expert = TextExpert(config.act)
        self._build_rope(config)

    @property
    def language_model(self) -> TextExpert:
        return self.und_expert.model.language_model

    @property
    def visual(self) -> VisionTower:
        return self.und_expert.model.visual

    def rope(self, position_ids: Tensor) -> tuple[Tensor, Tensor]:
        """cos/sin ``(B, L, head_dim)`` in float32 for M-RoPE ids ``(3, B, L)``.

        The values of transformers' interleaved M-RoPE bit for bit, with each frequency column
        gathering the position of its own axis instead of overwriting columns in place: an export
        traced that in-place recomposition as four scatters per call, a quarter of an action step.
        """
        freqs = position_ids.expand(3, -1, -1).float()[self.rope_axes].permute(1, 2, 0) * self.rotary.inv_freq.float()
        cos = freqs.cos() * self.rotary.attention_scaling
        sin = freqs.sin() * self.rotary.attention_scaling
        return torch.cat((cos, cos), dim=-1), torch.cat((sin, sin), dim=-1)

    def _build_rope(self, config: InternVLAConfig) -> None:
        """One M-RoPE for all tokens (the experts share theta, sections and head_dim), and its column axes."""
        self.rotary = Qwen3VLTextRotaryEmbedding(hf_text_config(config.und))
        axes = mrope_axes(config.und.mrope_section, self.rotary.inv_freq.numel(), self.rotary.inv_freq.device)
        self.register_buffer("rope_axes", axes, persistent=False)

    def reset_rotary(self, config: InternVLAConfig) -> None:
        """Rebuild the non-persistent RoPE buffers (after building on the meta device)."""
        self._build_rope(config)
        visual = self.visual
        visual.rotary_pos_emb = type(visual.rotary_pos_emb)(visual.config)
