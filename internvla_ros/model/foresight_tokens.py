"""Cosmos latents <-> foresight tokens as matrix products.

The released layout maps a view's 32x32 latent to 4x4 tokens with a 1x1 convolution (``cosmos_in_proj``)
and a kernel = stride convolution (``downsample_conv``), and back with a kernel = stride transposed
convolution (``upsample_conv``). All three are linear maps of non-overlapping patches, so they are computed
here as reshapes and matrix products on the checkpoint's own weights: the two input maps compose into one
small matrix, applied to the 16-channel latent instead of a 64-channel (3B: 1024) intermediate. On CPUs the
convolutions' backward passes were among the largest costs of a training step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def latent_tokens(latents: Tensor, in_proj: nn.Conv2d, down: nn.Conv2d) -> Tensor:
    """``(M, C, H, W)`` latents -> ``(M, H/s * W/s, D)`` tokens in row-major patch order (``down(in_proj(x))``)."""
    s = down.kernel_size[0]
    m, c, h, w = latents.shape
    width = down.weight.shape[0]
    # (D, s, s, D') @ (D', C) -> (D, s, s, C): the 1x1 map folded into each patch position of the s x s one
    weight = down.weight.float().permute(0, 2, 3, 1) @ in_proj.weight.float().flatten(1)
    bias = down.bias.float() if down.bias is not None else torch.zeros(width, device=latents.device)
    if in_proj.bias is not None:
        bias = bias + down.weight.float().sum(dim=(2, 3)) @ in_proj.bias.float()
    dtype = down.weight.dtype
    if torch.compiler.is_exporting():  # a traced patch permute is a 6-D transpose, slower than the product
        conv = F.conv2d(latents.to(dtype), weight.permute(0, 3, 1, 2).to(dtype), bias.to(dtype), stride=s)
        return conv.flatten(2).transpose(1, 2)
    patches = latents.reshape(m, c, h // s, s, w // s, s).permute(0, 2, 4, 3, 5, 1).reshape(m * (h // s) * (w // s), -1)
    tokens = F.linear(patches.to(dtype), weight.reshape(width, -1).to(dtype), bias.to(dtype))
    return tokens.reshape(m, (h // s) * (w // s), width)


def token_latents(tokens: Tensor, up: nn.ConvTranspose2d) -> Tensor:
    """``(M, h, w, D)`` tokens -> ``(M, h*s, w*s, D)`` channels-last (``up`` on the tokens as a feature map)."""
    s = up.kernel_size[0]
    m, h, w, width = tokens.shape
    out = up.weight.shape[1]
    x = (tokens.reshape(-1, width) @ up.weight.reshape(width, -1)).reshape(m, h, w, out, s, s)
    x = x.permute(0, 1, 4, 2, 5, 3).reshape(m, h * s, w * s, out)
    return x if up.bias is None else x + up.bias
