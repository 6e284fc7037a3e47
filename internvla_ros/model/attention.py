"""The shared attention of the Mixture-of-Transformers: block mask, M-RoPE positions, one layer.

Every pass of the model (prefix, generation, one action step, or all blocks at once) goes through
:func:`mixed_layer`, so the cached and the recompute-everything paths share the same math.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from internvla_ros.model.errors import PreprocessingError

PREFIX_BLOCK = 0
GENERATION_BLOCK = 1
STATE_BLOCK = 2
ACTION_BLOCK = 3

MASKED_POSITION = 1
"""M-RoPE position the reference gives to padding tokens (they are masked, so it does not matter)."""


def block_attention_bias(
    query_blocks: Tensor,
    query_valid: Tensor,
    key_blocks: Tensor,
    key_valid: Tensor,
    mask_value: float,
    dtype: torch.dtype,
) -> Tensor:
    """Additive attention bias ``(B, 1, Lq, Lk)`` for the block layout prefix | generation | state | action.

    A query sees every valid key of its own block and of earlier blocks (bidirectionally inside a
    block), never a later block. Padding keys are masked; a padding query still reads earlier blocks
    (as the reference's cached passes do), but nothing of its own block. Masked keys get the
    reference's finite ``mask_value``, so a fully masked row averages over its own and earlier
    blocks exactly as the reference's eager softmax does; keys of later blocks get ``-inf``, which
    makes the cached passes and the all-blocks pass agree on every row.
    """
    earlier_or_same = key_blocks[None, :] <= query_blocks[:, None]
    earlier = key_blocks[None, :] < query_blocks[:, None]
    allowed = earlier_or_same[None] & key_valid[:, None, :] & (query_valid[:, :, None] | earlier[None])
    masked = torch.where(earlier_or_same, mask_value, float("-inf")).to(dtype)
    bias = torch.where(allowed, torch.zeros((), dtype=dtype, device=masked.device), masked)
    return bias[:, None]


def mrope_prefix_positions(
    input_ids: Tensor,
    attention_mask: Tensor,
    image_grid_thw: Tensor,
    image_token_id: int,
    spatial_merge_size: int,
) -> Tensor:
    """Qwen3-VL M-RoPE ids ``(3, B, L)`` (t, h, w) for the prefix tokens.

    Valid text tokens get one position on all three axes; the image tokens of a camera get
    ``start + (t, h, w)`` over its merged patch grid, and the next token continues after the
    largest of them. Padding tokens get :data:`MASKED_POSITION`. ``image_grid_thw`` is
    ``(B, n_views, 3)``; camera k's grid describes the k-th run of image tokens in the row.
    """
    batch, length = input_ids.shape
    positions = torch.full((3, batch, length), MASKED_POSITION, dtype=torch.long)
    ids = input_ids.cpu()
    valid = attention_mask.cpu().bool()
    grids = image_grid_thw.cpu().reshape(batch, -1, 3)
    for b in range(batch):
        is_image = ids[b] == image_token_id
        # Start of every image-token run (one run per camera).
        starts = torch.nonzero(is_image & ~torch.cat([torch.tensor([False]), is_image[:-1]])).flatten().tolist()
        if len(starts) != grids.shape[1]:
            raise PreprocessingError(f"row {b}: {len(starts)} image-token runs for {grids.shape[1]} camera grids")
        row = positions[:, b]
        next_position = 0
        index = 0
        for camera, start in enumerate([*starts, length]):
            text = torch.arange(index, start)[valid[b, index:start]]  # text tokens before this run
            row[:, text] = torch.arange(next_position, next_position + len(text))
            next_position += len(text)
            if start == length:
                break
            t, h, w = (int(v) for v in grids[b, camera])
            h, w = h // spatial_merge_size, w // spatial_merge_size
            count = t * h * w
            if not bool(is_image[start:start + count].all()) or start + count > length:
                raise PreprocessingError(f"row {b}: image run at {start} is shorter than its grid {t}x{h}x{w}")
            if bool(valid[b, start]):
                grid = torch.stack(torch.meshgrid(torch.arange(t), torch.arange(h), torch.arange(w),
                                                  indexing="ij")).reshape(3, -1)
                row[:, start:start + count] = grid + next_position
                next_position = int(row[:, start:start + count].max()) + 1
            index = start + count
    return positions.to(input_ids.device)


def following_positions(previous: Tensor, count: int) -> Tensor:
    """Positions ``(3, B, count)`` of a block that follows ``previous``: max + 1, max + 2, ... per axis."""
    start = previous.amax(dim=-1, keepdim=True)
    return start + torch.arange(1, count + 1, device=previous.device)


def rotate_half(x: Tensor) -> Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate ``(B, heads, L, head_dim)`` by ``cos/sin`` of shape ``(B, L, head_dim)``."""
    return x * cos[:, None] + rotate_half(x) * sin[:, None]


@dataclass(frozen=True)
class LayerKV:
    """Post-RoPE keys and values ``(B, kv_heads, L, head_dim)`` of one layer."""

    keys: Tensor
    values: Tensor


@dataclass(frozen=True)
class AttentionWeights:
    """One layer's attention probabilities ``(B, heads, Lq, Lk)`` and the block of each query and key."""

    layer: int
    query_blocks: Tensor  # (Lq,)
    key_blocks: Tensor  # (Lk,)
    key_valid: Tensor  # (B, Lk)
    weights: Tensor


_RECORDINGS: list[list[AttentionWeights]] = []


@contextmanager
def record_attention() -> Iterator[list[AttentionWeights]]:
    """Collects every layer's attention probabilities while active: a diagnostic, since it materialises
    each attention matrix, which the fused kernel never does."""
    records: list[AttentionWeights] = []
    _RECORDINGS.append(records)
    try:
        yield records
    finally:
        _RECORDINGS.remove(records)


def attention_recorder(layer: int, query_blocks: Tensor, key_blocks: Tensor,
                       key_valid: Tensor) -> Callable[[Tensor], None] | None:
    """What :func:`mixed_layer` hands its probabilities to inside :func:`record_attention`; None outside."""
    if not _RECORDINGS:
        return None
    records = _RECORDINGS[-1]
    return lambda weights: records.append(AttentionWeights(layer, query_blocks, key_blocks, key_valid, weights))


def _cast(x: Tensor, like: nn.Linear) -> Tensor:
    return x.to(like.weight.dtype)


def mixed_layer(
    layers: Sequence[nn.Module],
    hidden: Sequence[Tensor],
    rope: tuple[Tensor, Tensor],
    bias: Tensor,
    past: LayerKV | None,
    record: Callable[[Tensor], None] | None = None,
) -> tuple[list[Tensor], LayerKV]:
    """One Mixture-of-Transformers layer over consecutive token segments, one expert per segment.

    Each expert normalises and projects its own tokens (q/k RMSNorm per head); Q, K, V are
    concatenated along the tokens, rotated with one M-RoPE (``rope``: cos/sin in the compute dtype),
    extended with ``past`` (cached keys and values of earlier blocks), and one scaled-dot-product
    attention runs with ``bias`` (compute dtype, from :func:`block_attention_bias`). The result
    is split back; each expert applies its own o_proj, residual, post-attention norm and MLP.
    Returns the new hidden states and this layer's keys/values for the new tokens; ``record``, when
    given, receives the attention probabilities (see :func:`record_attention`).
    """
    queries, keys, values = [], [], []
    for layer, h in zip(layers, hidden, strict=True):
        attn = layer.self_attn
        x = _cast(layer.input_layernorm(h), attn.q_proj)
        shape = (*x.shape[:-1], -1, attn.head_dim)
        queries.append(attn.q_norm(attn.q_proj(x).view(shape)).transpose(1, 2))
        keys.append(attn.k_norm(attn.k_proj(x).view(shape)).transpose(1, 2))
        values.append(attn.v_proj(x).view(shape).transpose(1, 2))
    compute_dtype = values[0].dtype
    cos, sin = rope
    query = apply_rope(torch.cat(queries, dim=2).to(compute_dtype), cos, sin)
    new = LayerKV(apply_rope(torch.cat(keys, dim=2).to(compute_dtype), cos, sin), torch.cat(values, dim=2))
    key, value = new.keys, new.values
    if past is not None:
        key = torch.cat([past.keys, key], dim=2)
        value = torch.cat([past.values, value], dim=2)
    attn0 = layers[0].self_attn
    if record is not None:
        expanded = key.repeat_interleave(query.shape[1] // key.shape[1], dim=1)
        logits = (query @ expanded.transpose(-1, -2)).float() * attn0.scaling + bias.float()
        record(torch.softmax(logits, dim=-1))
    out = F.scaled_dot_product_attention(
        query, key, value, attn_mask=bias, scale=attn0.scaling,
        enable_gqa=query.shape[1] != key.shape[1],
    )
    out = out.transpose(1, 2).flatten(2)
    outputs, start = [], 0
    for layer, h in zip(layers, hidden, strict=True):
        end = start + h.shape[1]
        residual = h + layer.self_attn.o_proj(_cast(out[:, start:end], layer.self_attn.o_proj)).to(h.dtype)
        x = _cast(layer.post_attention_layernorm(residual), layer.mlp.up_proj)
        outputs.append(residual + layer.mlp(x).to(h.dtype))
        start = end
    return outputs, new
