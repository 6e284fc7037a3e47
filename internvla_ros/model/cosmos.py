"""Cosmos continuous image tokenizer (CI8x8), the frame encoder/decoder of InternVLA-A1's foresight path.

InternVLA-A1 turns each camera frame (256x256, values in [-1, 1]) into a 16x32x32 continuous latent with
NVIDIA's Cosmos-Tokenizer-CI8x8 and, optionally, decodes predicted latents back to pixels as an operator
preview. The released policy checkpoint carries the tokenizer's weights (``model.cosmos._enc_model.*``
and ``model.cosmos._dec_model.*``), so the architecture is rebuilt here as plain ``torch.nn`` modules
whose ``state_dict`` keys are exactly those keys without the ``model.cosmos.`` prefix.

Architecture (an LDM-style autoencoder, "AE" formulation, no sampling):

* encode: haar wavelet patching (``patch_size`` 4: 3 -> 48 channels, H/4 x W/4), ``conv_in``, one
  level of ``num_res_blocks`` ResNet blocks per entry of ``channels_mult`` with a stride-2 downsample
  after the first ``log2(spatial_compression / patch_size)`` levels, a middle block
  (ResNet, self-attention, ResNet), GroupNorm + SiLU + ``conv_out`` to ``z_channels``, then the 1x1
  ``quant_conv``. The result is the latent that the policy consumes, unscaled.
* decode: 1x1 ``post_quant_conv``, ``conv_in``, the middle block, ``num_res_blocks + 1`` ResNet blocks
  per level in reverse order with nearest-neighbour 2x upsampling on the last levels, GroupNorm +
  SiLU + ``conv_out`` to 48 channels and the inverse haar transform back to 3 x H x W.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from internvla_ros.model.errors import ConfigError, PreprocessingError

__all__ = ["CosmosConfig", "CosmosImageTokenizer"]

_PATCH_METHODS = ("haar", "rearrange")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_power_of_two(value: int) -> bool:
    return value >= 1 and (value & (value - 1)) == 0


@dataclass(frozen=True)
class CosmosConfig:
    """Hyper-parameters of the continuous image tokenizer; the defaults are the released CI8x8.

    Field names follow the Cosmos tokenizer's own configuration keys, so the ``cosmos_tokenizer``
    section of a fixture's ``arch.json`` maps onto them one to one.
    """

    in_channels: int = 3
    out_channels: int = 3
    channels: int = 128
    channels_mult: tuple[int, ...] = (2, 4, 4)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = (32,)
    dropout: float = 0.0
    resolution: int = 1024
    spatial_compression: int = 8
    patch_size: int = 4
    patch_method: str = "haar"
    latent_channels: int = 16
    z_channels: int = 16
    z_factor: int = 1
    groupnorm_num_groups: int = 32
    groupnorm_eps: float = 1e-6
    # The reference casts the whole tokenizer, its haar filter buffer included, to bfloat16 before use
    # (also when it later runs in float32), so its filter tap is bf16(1/sqrt(2)) = 0.70703125 and every
    # latent the policy was trained on carries that ~4.4e-4 scale error. True reproduces it; False
    # gives the exact orthonormal transform of the stand-alone Cosmos tokenizer.
    haar_bf16_taps: bool = True

    # Keys of arch.json's "cosmos_tokenizer" section that describe the model but set no field.
    DESCRIPTIVE_KEYS: ClassVar[frozenset[str]] = frozenset(
        {"class", "name", "real_CI8x8", "input_resolution", "latent_shape_per_frame", "vae_dim"}
    )
    # Keys that select a code path; only the one implemented here is accepted.
    SELECTOR_KEYS: ClassVar[Mapping[str, str]] = {
        "formulation": "AE",
        "encoder": "Default",
        "decoder": "Default",
    }

    def __post_init__(self) -> None:
        for name in ("channels_mult", "attn_resolutions"):
            value = getattr(self, name)
            if isinstance(value, Sequence) and not isinstance(value, str):
                object.__setattr__(self, name, tuple(value))
        self._validate()

    def _validate(self) -> None:
        def fail(name: str, problem: str) -> ConfigError:
            return ConfigError(f"CosmosConfig.{name}={getattr(self, name)!r}: {problem}")

        for name in (
            "in_channels",
            "out_channels",
            "channels",
            "num_res_blocks",
            "resolution",
            "spatial_compression",
            "patch_size",
            "latent_channels",
            "z_channels",
            "z_factor",
            "groupnorm_num_groups",
        ):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise fail(name, "must be an integer >= 1")
        for name in ("channels_mult", "attn_resolutions"):
            value = getattr(self, name)
            if not isinstance(value, tuple) or not all(_is_int(v) and v >= 1 for v in value):
                raise fail(name, "must be a sequence of integers >= 1")
        if not self.channels_mult:
            raise fail("channels_mult", "must name at least one resolution level")
        if not isinstance(self.dropout, (int, float)) or isinstance(self.dropout, bool):
            raise fail("dropout", "must be a number")
        if not 0.0 <= self.dropout < 1.0:
            raise fail("dropout", "must be in [0, 1)")
        if not isinstance(self.groupnorm_eps, (int, float)) or isinstance(self.groupnorm_eps, bool):
            raise fail("groupnorm_eps", "must be a number")
        if not self.groupnorm_eps > 0.0:
            raise fail("groupnorm_eps", "must be > 0")
        if not isinstance(self.haar_bf16_taps, bool):
            raise fail("haar_bf16_taps", "must be a bool")
        if self.patch_method not in _PATCH_METHODS:
            raise fail("patch_method", f"must be one of {_PATCH_METHODS}")
        if not _is_power_of_two(self.patch_size):
            raise fail("patch_size", "must be a power of two")
        if not _is_power_of_two(self.spatial_compression):
            raise fail("spatial_compression", "must be a power of two")
        if self.spatial_compression < self.patch_size:
            raise fail("spatial_compression", f"must be >= patch_size ({self.patch_size})")
        if self.num_resampling_levels > len(self.channels_mult):
            raise fail(
                "spatial_compression",
                f"needs {self.num_resampling_levels} down/upsampling levels but channels_mult "
                f"{self.channels_mult} has only {len(self.channels_mult)}",
            )
        if self.resolution % self.patch_size != 0:
            raise fail("resolution", f"must be a multiple of patch_size ({self.patch_size})")
        if self.z_factor != 1:
            raise fail("z_factor", "only the AE formulation (z_factor 1) is implemented")
        groups = self.groupnorm_num_groups
        for width in (self.channels, *(self.channels * m for m in self.channels_mult)):
            if width % groups != 0:
                raise fail(
                    "groupnorm_num_groups",
                    f"must divide every feature width; {width} (channels x channels_mult) is not a multiple",
                )

    @property
    def num_resampling_levels(self) -> int:
        """Stride-2 down (encoder) and up (decoder) steps; the wavelet patching does the rest."""
        return int(math.log2(self.spatial_compression)) - int(math.log2(self.patch_size))

    @classmethod
    def ci8x8(cls) -> CosmosConfig:
        """The released Cosmos-Tokenizer-CI8x8 inside InternVLA-A1-3B (77M parameters)."""
        return cls()

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CosmosConfig:
        """Build from a Cosmos-style config dict (e.g. arch.json's ``cosmos_tokenizer`` section).

        Descriptive keys are ignored; ``formulation``/``encoder``/``decoder`` are checked, since another
        value would change the computation; any other unknown key is rejected so typos cannot pass
        silently. Missing fields take the CI8x8 defaults.
        """
        if not isinstance(d, Mapping):
            raise ConfigError(f"CosmosConfig.from_dict expects a mapping, got {type(d).__name__}")
        names = {f.name for f in fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, value in d.items():
            if key in names:
                kwargs[key] = value
            elif key in cls.SELECTOR_KEYS:
                if value != cls.SELECTOR_KEYS[key]:
                    raise ConfigError(
                        f"CosmosConfig.{key}={value!r}: only {cls.SELECTOR_KEYS[key]!r} is implemented"
                    )
            elif key not in cls.DESCRIPTIVE_KEYS:
                raise ConfigError(f"CosmosConfig: unknown key {key!r}; known fields are {sorted(names)}")
        return cls(**kwargs)


def _group_norm(config: CosmosConfig, num_channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(config.groupnorm_num_groups, num_channels, eps=config.groupnorm_eps, affine=True)


def _haar_tap(bf16_taps: bool) -> float:
    """The haar filter tap 1/sqrt(2), optionally rounded to bfloat16 as the reference's filter is."""
    tap = 1.0 / math.sqrt(2.0)
    return float(torch.tensor(tap, dtype=torch.bfloat16).item()) if bf16_taps else tap


def _haar_forward(x: Tensor, levels: int, tap: float) -> Tensor:
    """2x2 haar analysis, ``levels`` times, each level rescaled by 1/2 as Cosmos does.

    With the exact tap each output is (sum of +-pixels) / 4; a coarser tap scales it by 2 * tap**2.
    Output channels are band-major per level: [LL, LH, HL, HH] x input channels, where the first
    letter is the filter along the width and the second along the height.
    """
    for _ in range(levels):
        b, c, h, w = x.shape
        if h % 2 or w % 2:
            raise PreprocessingError(f"haar patching needs even height and width, got {h}x{w}")
        x = x.reshape(b, c, h // 2, 2, w // 2, 2)
        x00, x01 = x[:, :, :, 0, :, 0], x[:, :, :, 0, :, 1]
        x10, x11 = x[:, :, :, 1, :, 0], x[:, :, :, 1, :, 1]
        row_sum_top, row_diff_top = x00 + x01, x00 - x01
        row_sum_bot, row_diff_bot = x10 + x11, x10 - x11
        x = torch.cat(
            [
                row_sum_top + row_sum_bot,
                row_sum_top - row_sum_bot,
                row_diff_top + row_diff_bot,
                row_diff_top - row_diff_bot,
            ],
            dim=1,
        ) * (tap * tap / 2.0)
    return x


def _haar_inverse(x: Tensor, levels: int, tap: float) -> Tensor:
    """Cosmos' haar synthesis (the exact inverse for the exact tap), outermost level first."""
    for _ in range(levels):
        b, c4, h, w = x.shape
        ll, lh, hl, hh = (band * (2.0 * tap * tap) for band in x.chunk(4, dim=1))
        top_left = ll + lh + hl + hh
        top_right = ll + lh - hl - hh
        bot_left = ll - lh + hl - hh
        bot_right = ll - lh - hl + hh
        top = torch.stack([top_left, top_right], dim=-1)
        bot = torch.stack([bot_left, bot_right], dim=-1)
        x = torch.stack([top, bot], dim=3).reshape(b, c4 // 4, 2 * h, 2 * w)
    return x


def _space_to_depth(x: Tensor, p: int) -> Tensor:
    """``b c (h p1) (w p2) -> b (c p1 p2) h w``, the tokenizer's ``rearrange`` patching."""
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // p, p, w // p, p).permute(0, 1, 3, 5, 2, 4)
    return x.reshape(b, c * p * p, h // p, w // p)


def _depth_to_space(x: Tensor, p: int) -> Tensor:
    b, cpp, h, w = x.shape
    x = x.reshape(b, cpp // (p * p), p, p, h, w).permute(0, 1, 4, 2, 5, 3)
    return x.reshape(b, cpp // (p * p), h * p, w * p)


def _group_norm_silu(norm: nn.GroupNorm, x: Tensor, silu: bool) -> Tensor:
    """GroupNorm (then SiLU) in any memory layout; float32 statistics in two passes.

    The channels-last GroupNorm kernel of torch computes the variance as E[x^2] - E[x]^2 and loses
    about 1e-5 per call, which the network amplifies to ~3e-4 on the latents; two passes keep float32
    parity with the NCHW kernel (~1e-6) while the convolutions run channels-last.
    """
    if x.dtype != torch.float32 or not x.is_contiguous(memory_format=torch.channels_last):
        out = norm(x)
        return F.silu(out, inplace=True) if silu else out
    b, c, h, w = x.shape
    g = norm.num_groups
    grouped = x.permute(0, 2, 3, 1).reshape(b, h * w, g, c // g)
    mean = grouped.mean(dim=(1, 3), keepdim=True)
    var = (grouped - mean).square_().mean(dim=(1, 3))
    scale = torch.rsqrt(var + norm.eps).repeat_interleave(c // g, dim=1) * norm.weight
    shift = norm.bias - mean.reshape(b, g).repeat_interleave(c // g, dim=1) * scale
    out = torch.addcmul(shift[:, :, None, None], x, scale[:, :, None, None])
    return F.silu(out, inplace=True) if silu else out


def _pointwise(conv: nn.Conv2d, x: Tensor) -> Tensor:
    """A 1x1 convolution as a matmul over channels (channels-last input stays channels-last)."""
    if not x.is_contiguous(memory_format=torch.channels_last):
        return conv(x)
    out = F.linear(x.permute(0, 2, 3, 1), conv.weight.flatten(1), conv.bias)
    return out.permute(0, 3, 1, 2)


def _patch_kernel(weight: Tensor, p: int) -> Tensor:
    """A 3x3 kernel over space-to-depth patches ``(O, c p p, 3, 3)`` as a ``(O, c, 3p, 3p)`` image kernel."""
    out, cpp, kh, kw = weight.shape
    kernel = weight.reshape(out, cpp // (p * p), p, p, kh, kw).permute(0, 1, 4, 2, 5, 3)
    return kernel.reshape(out, cpp // (p * p), kh * p, kw * p)


def _fold_pointwise(outer: nn.Conv2d, inner: nn.Conv2d) -> tuple[Tensor, Tensor]:
    """Weight and bias of ``outer(inner(x))`` as one convolution, for a 1x1 ``outer``."""
    mix = outer.weight.flatten(1)
    weight = _contract(mix[:, :, None, None, None], inner.weight[None])
    return weight, outer.bias + (mix * inner.bias).sum(dim=1)


def _contract(a: Tensor, b: Tensor) -> Tensor:
    """``(a * b).sum(1)``: weight folding as elementwise work, so FLOP counts stay those of the model."""
    return (a * b).sum(dim=1)


def _haar_matrix(config: CosmosConfig, like: Tensor) -> Tensor:
    """(patch channels, space-to-depth channels): the haar patching as a linear map on each p x p patch.

    Wavelet patching is linear and local, so ``haar(x) == matrix @ space_to_depth(x)`` per patch;
    folding it into ``conv_in`` turns two passes over the frame into one convolution.
    """
    p = config.patch_size
    n = config.in_channels * p * p
    basis = _depth_to_space(torch.eye(n, dtype=torch.float64, device=like.device).reshape(n, n, 1, 1), p)
    bands = _haar_forward(basis, _patch_levels(config), _haar_tap(config.haar_bf16_taps))
    return bands[:, :, 0, 0].T.to(like.dtype)


class ResnetBlock(nn.Module):
    """Pre-activation residual block (GroupNorm, SiLU, 3x3 conv; twice), 1x1 shortcut on width change."""

    def __init__(self, config: CosmosConfig, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.dropout = config.dropout
        self.norm1 = _group_norm(config, in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
        self.norm2 = _group_norm(config, out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1)
        self.nin_shortcut = (
            nn.Conv2d(in_channels, out_channels, kernel_size=1) if in_channels != out_channels else None
        )

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(_group_norm_silu(self.norm1, x, silu=True))
        h = _group_norm_silu(self.norm2, h, silu=True)
        h = F.dropout(h, p=self.dropout, training=self.training)
        h = self.conv2(h)
        shortcut = x if self.nin_shortcut is None else _pointwise(self.nin_shortcut, x)
        return h.add_(shortcut)


class AttnBlock(nn.Module):
    """Single-head self-attention over all pixels, head width = channels, with 1x1-conv projections."""

    def __init__(self, config: CosmosConfig, channels: int) -> None:
        super().__init__()
        self.norm = _group_norm(config, channels)
        self.q = nn.Conv2d(channels, channels, kernel_size=1)
        self.k = nn.Conv2d(channels, channels, kernel_size=1)
        self.v = nn.Conv2d(channels, channels, kernel_size=1)
        self.proj_out = nn.Conv2d(channels, channels, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        normed = _group_norm_silu(self.norm, x, silu=False)
        # Tokens (b, 1, h*w, c) with the channel axis innermost: the layout SDPA's fused kernels need
        # (a transposed NCHW view falls back to the slow math path). q, k, v come from one matmul.
        tokens = normed.permute(0, 2, 3, 1).reshape(b, h * w, c)
        weight = torch.cat([self.q.weight, self.k.weight, self.v.weight]).flatten(1)
        bias = torch.cat([self.q.bias, self.k.bias, self.v.bias])
        q, k, v = F.linear(tokens, weight, bias)[:, None].split(c, dim=-1)
        # softmax(q k^T / sqrt(c)) v: the default SDPA scale is 1/sqrt(head width) = 1/sqrt(c).
        out = F.linear(F.scaled_dot_product_attention(q, k, v)[:, 0], self.proj_out.weight.flatten(1),
                       self.proj_out.bias)
        return x + out.reshape(b, h, w, c).permute(0, 3, 1, 2)


class Downsample(nn.Module):
    """Stride-2 3x3 conv after padding only the bottom/right edge by one (asymmetric, as trained)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, stride=2, padding=0)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest-neighbour 2x upsampling followed by a 3x3 conv."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _MidBlock(nn.Module):
    def __init__(self, config: CosmosConfig, channels: int) -> None:
        super().__init__()
        self.block_1 = ResnetBlock(config, channels, channels)
        self.attn_1 = AttnBlock(config, channels)
        self.block_2 = ResnetBlock(config, channels, channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


class _Level(nn.Module):
    """One resolution level: ``block`` (ResNet blocks), ``attn`` (empty or one per block), resampler."""

    def __init__(
        self,
        blocks: list[ResnetBlock],
        attns: list[AttnBlock],
        resample: nn.Module | None,
        resample_name: str,
    ) -> None:
        super().__init__()
        self.block = nn.ModuleList(blocks)
        self.attn = nn.ModuleList(attns)
        self.resample_name = resample_name
        if resample is not None:
            self.add_module(resample_name, resample)

    def forward(self, x: Tensor) -> Tensor:
        for i, block in enumerate(self.block):
            x = block(x)
            if len(self.attn) > 0:
                x = self.attn[i](x)
        resample = getattr(self, self.resample_name, None)
        return x if resample is None else resample(x)


def _patch_levels(config: CosmosConfig) -> int:
    return int(math.log2(config.patch_size))


class Encoder(nn.Module):
    """Image (B, in_channels, H, W) -> (B, z_channels, H/compression, W/compression)."""

    def __init__(self, config: CosmosConfig) -> None:
        super().__init__()
        self.config = config
        p = config.patch_size
        self.conv_in = nn.Conv2d(config.in_channels * p * p, config.channels, kernel_size=3, padding=1)
        curr_res = config.resolution // p
        in_mult = (1, *config.channels_mult)
        levels = []
        block_in = config.channels
        for i_level, mult in enumerate(config.channels_mult):
            block_in = config.channels * in_mult[i_level]
            block_out = config.channels * mult
            blocks, attns = [], []
            for _ in range(config.num_res_blocks):
                blocks.append(ResnetBlock(config, block_in, block_out))
                block_in = block_out
                # Attention placement depends on the nominal training resolution, not the input size.
                if curr_res in config.attn_resolutions:
                    attns.append(AttnBlock(config, block_in))
            down = None
            if i_level < config.num_resampling_levels:
                down = Downsample(block_in)
                curr_res //= 2
            levels.append(_Level(blocks, attns, down, "downsample"))
        self.down = nn.ModuleList(levels)
        self.mid = _MidBlock(config, block_in)
        self.norm_out = _group_norm(config, block_in)
        self.conv_out = nn.Conv2d(block_in, config.z_factor * config.z_channels, kernel_size=3, padding=1)

    def patches(self, x: Tensor) -> Tensor:
        """Space-to-depth in channels-last memory (the layout torch's convolutions are fastest in)."""
        b, c, height, width = x.shape
        p = self.config.patch_size
        x = x.reshape(b, c, height // p, p, width // p, p).permute(0, 2, 4, 1, 3, 5)
        return x.reshape(b, height // p, width // p, c * p * p).permute(0, 3, 1, 2)

    def stem(self, x: Tensor) -> Tensor:
        """Patching + ``conv_in`` as one convolution over the space-to-depth patches.

        An export traces it as one stride-p convolution of the image itself (the 3x3 kernel over
        p x p patches is a 3p x 3p kernel moved p pixels at a time), in plain NCHW: a traced
        space-to-depth is a 6-D transpose that cost ONNX Runtime as much as the convolution, and
        traced channels-last code becomes a transpose around every norm and 1x1 conv.
        """
        weight = self.conv_in.weight
        if self.config.patch_method == "haar":
            weight = _contract(weight[:, :, None], _haar_matrix(self.config, weight)[None, :, :, None, None])
        if torch.compiler.is_exporting():
            p = self.config.patch_size
            return F.conv2d(x, _patch_kernel(weight, p), self.conv_in.bias, stride=p, padding=p)
        return F.conv2d(self.patches(x), weight, self.conv_in.bias, padding=1)

    def trunk(self, x: Tensor) -> Tensor:
        """Everything up to ``norm_out`` + SiLU (the input of ``conv_out``)."""
        h = self.stem(x)
        for level in self.down:
            h = level(h)
        return _group_norm_silu(self.norm_out, self.mid(h), silu=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv_out(self.trunk(x))


class Decoder(nn.Module):
    """Latent (B, z_channels, h, w) -> image (B, out_channels, h*compression, w*compression)."""

    def __init__(self, config: CosmosConfig) -> None:
        super().__init__()
        self.config = config
        p = config.patch_size
        n_levels = len(config.channels_mult)
        block_in = config.channels * config.channels_mult[-1]
        # Cosmos derives the starting resolution from the level count, not the upsample count; it
        # only decides where attention blocks go, and must match for the checkpoint's keys.
        curr_res = (config.resolution // p) // 2 ** (n_levels - 1)
        self.conv_in = nn.Conv2d(config.z_channels, block_in, kernel_size=3, padding=1)
        self.mid = _MidBlock(config, block_in)
        levels: list[_Level] = []
        for i_level in reversed(range(n_levels)):
            block_out = config.channels * config.channels_mult[i_level]
            blocks, attns = [], []
            for _ in range(config.num_res_blocks + 1):
                blocks.append(ResnetBlock(config, block_in, block_out))
                block_in = block_out
                if curr_res in config.attn_resolutions:
                    attns.append(AttnBlock(config, block_in))
            up = None
            if i_level >= n_levels - config.num_resampling_levels:
                up = Upsample(block_in)
                curr_res *= 2
            levels.insert(0, _Level(blocks, attns, up, "upsample"))
        self.up = nn.ModuleList(levels)
        self.norm_out = _group_norm(config, block_in)
        self.conv_out = nn.Conv2d(block_in, config.out_channels * p * p, kernel_size=3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            h = level(h)
        h = self.conv_out(F.silu(self.norm_out(h)))
        if self.config.patch_method == "haar":
            return _haar_inverse(h, _patch_levels(self.config), _haar_tap(self.config.haar_bf16_taps))
        return _depth_to_space(h, self.config.patch_size)


class _EncoderModel(nn.Module):
    def __init__(self, config: CosmosConfig) -> None:
        super().__init__()
        self.encoder = Encoder(config)
        self.quant_conv = nn.Conv2d(
            config.z_factor * config.z_channels, config.z_factor * config.latent_channels, 1
        )

    def forward(self, x: Tensor) -> Tensor:
        weight, bias = _fold_pointwise(self.quant_conv, self.encoder.conv_out)
        return F.conv2d(self.encoder.trunk(x), weight, bias, padding=1).contiguous()


class _DecoderModel(nn.Module):
    def __init__(self, config: CosmosConfig) -> None:
        super().__init__()
        self.post_quant_conv = nn.Conv2d(config.latent_channels, config.z_channels, 1)
        self.decoder = Decoder(config)

    def forward(self, z: Tensor) -> Tensor:
        return self.decoder(self.post_quant_conv(z))


class CosmosImageTokenizer(nn.Module):
    """Continuous image tokenizer with the checkpoint's layout (``_enc_model``, ``_dec_model``).

    The module's parameter dtype is the compute dtype: inputs are cast to it and results are returned
    in it (InternVLA-A1 runs Cosmos in bfloat16; float32 gives exact parity with the reference).
    """

    def __init__(self, config: CosmosConfig) -> None:
        super().__init__()
        if not isinstance(config, CosmosConfig):
            raise ConfigError(f"CosmosImageTokenizer needs a CosmosConfig, got {type(config).__name__}")
        self.config = config
        self._enc_model = _EncoderModel(config)
        self._dec_model = _DecoderModel(config)

    def _param_dtype(self) -> torch.dtype:
        return self._enc_model.quant_conv.weight.dtype

    def encode(self, images: Tensor) -> Tensor:
        """(B, in_channels, H, W) in [-1, 1] -> latent (B, latent_channels, H/c, W/c).

        ``c`` is ``spatial_compression``. The result is the AE latent itself, unscaled and unsampled:
        the reference's ``cosmos.encode`` returns the first element of the encoder's (latent, stats)
        output, and that tensor is what the policy feeds to ``cosmos_in_proj``.
        """
        c = self.config.spatial_compression
        if images.ndim != 4 or images.shape[1] != self.config.in_channels:
            raise PreprocessingError(
                f"Cosmos encode expects (B, {self.config.in_channels}, H, W), got {tuple(images.shape)}"
            )
        if images.shape[-2] % c or images.shape[-1] % c:
            raise PreprocessingError(
                f"Cosmos encode needs H and W divisible by {c}, got {tuple(images.shape[-2:])}"
            )
        return self._enc_model(images.to(self._param_dtype()))

    def decode(self, latents: Tensor) -> Tensor:
        """(B, latent_channels, h, w) -> image (B, out_channels, h*c, w*c), nominally in [-1, 1]."""
        if latents.ndim != 4 or latents.shape[1] != self.config.latent_channels:
            raise PreprocessingError(
                f"Cosmos decode expects (B, {self.config.latent_channels}, h, w), got {tuple(latents.shape)}"
            )
        return self._dec_model(latents.to(self._param_dtype()))

    def forward(self, images: Tensor) -> Tensor:
        """Autoencode: ``decode(encode(images))``."""
        return self.decode(self.encode(images))
