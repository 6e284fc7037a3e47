"""The batch the InternVLA-A1 model consumes: what preprocessing produces and every caller passes on."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch
from torch import Tensor


@dataclass(frozen=True)
class ModelInputs:
    """One batch of model inputs; the names follow the reference batch keys (``observation.<name>``).

    ``frames`` are the Cosmos frames ``(B, n_views, frames_per_view, 3, 224, 224)`` in [0, 1]
    ([t-15, t]); ``cosmos_latents`` ``(B, n_views, frames_per_view, 16, 32, 32)`` may be given
    instead (e.g. the t-15 latents encoded ahead of time). ``view_mask`` ``(B, n_views)`` is False
    for a missing camera (whose prompt tokens must also have ``attention_mask`` 0).
    """

    pixel_values: Tensor  # (B, n_views * patches, patch_dim) float32
    image_grid_thw: Tensor  # (B, n_views, 3) int64
    input_ids: Tensor  # (B, L) int64
    attention_mask: Tensor  # (B, L) int64
    state: Tensor  # (B, max_state_dim) float32, normalised and zero-padded
    view_mask: Tensor  # (B, n_views) bool
    frames: Tensor | None = None
    cosmos_latents: Tensor | None = None

    @property
    def batch_size(self) -> int:
        return int(self.input_ids.shape[0])

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> ModelInputs:
        """Move every tensor to ``device``; ``dtype`` applies to the floating-point tensors only."""

        def move(tensor: Tensor) -> Tensor:
            if dtype is not None and tensor.is_floating_point():
                return tensor.to(device=device, dtype=dtype, non_blocking=True)
            return tensor.to(device=device, non_blocking=True)

        tensors = {f.name: getattr(self, f.name) for f in fields(self)}
        return replace(self, **{name: move(t) for name, t in tensors.items() if t is not None})
