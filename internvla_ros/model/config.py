"""Configuration of the InternVLA-A1 Mixture-of-Transformers model.

Every number the model uses is a field here, validated in ``__post_init__``. A checkpoint directory
is read by :func:`load_config`: ``config.json`` (the released ``QwenA1Config`` dump) names the size
variants, which map to sizes through the explicit tables below; an optional ``arch.json`` states
every hyper-parameter and takes precedence (it is how non-standard sizes, e.g. test fixtures, are
described). Sizes are never parsed out of variant names.

This is the one place the model's numbers are parsed and defined: the image processor in front of
the ViT (:class:`ImageProcessorConfig`, ``arch.json``'s ``processor`` section), the Qwen3 special
token ids and the tiny-vocabulary :class:`TokenIdRemap` included. Preprocessing takes them from here
(:meth:`internvla_ros.model.preprocessing.PreprocessorConfig.from_model_config`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from internvla_ros.model.cosmos import CosmosConfig
from internvla_ros.model.errors import ConfigError, PreprocessingError

CHECKPOINT_TYPE = "qwena1"
"""``config.json["type"]`` of the released InternVLA-A1-3B checkpoints."""

CONFIG_FILE = "config.json"
ARCH_FILE = "arch.json"

# Released InternVLA-A1-3B values that the model and the preprocessing share (defaults of both).
N_VIEWS = 3
FRAMES_PER_VIEW = 2
"""Each camera contributes the frames [t - 15, t]."""
MAX_STATE_DIM = 32
TOKENIZER_MAX_LENGTH = 48
IMAGE_RESOLUTION: tuple[int, int] = (224, 224)
"""Camera frames are letterboxed to this size (the reference's ``image_resolution``)."""
COSMOS_RESOLUTION: tuple[int, int] = (256, 256)
"""The Cosmos tokenizer consumes 256x256 frames; the 224x224 policy frames are upsampled to it."""
RGB_CHANNELS = 3
QWEN_VL_PATCH_SIZE = 16
QWEN_VL_TEMPORAL_PATCH_SIZE = 2
QWEN_VL_MERGE_SIZE = 2

# Qwen3 special tokens.
QWEN_SPECIAL_TOKEN_BASE = 151643
"""First Qwen3 special token id (``<|endoftext|>``, also the pad id): the specials follow the 151,643
byte-level BPE ranks, in the order of :data:`QWEN3_ADDED_TOKENS` (up to 151668)."""

QWEN3_ADDED_TOKENS: tuple[tuple[str, bool], ...] = (
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True),
    ("<|box_start|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|vision_pad|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<|fim_prefix|>", False),
    ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False),
    ("<|repo_name|>", False),
    ("<|file_sep|>", False),
    ("<tool_response>", False),
    ("</tool_response>", False),
    ("<think>", False),
    ("</think>", False),
)
"""The Qwen3 added tokens at ids 151643-151668 and whether each is flagged special (tokenizer_config.json)."""

QWEN_SPECIAL_TOKEN_COUNT = len(QWEN3_ADDED_TOKENS)


def qwen_special_token_id(token: str) -> int:
    """Id of a Qwen3 added token in the full vocabulary (``<|image_pad|>`` -> 151655)."""
    return QWEN_SPECIAL_TOKEN_BASE + [name for name, _ in QWEN3_ADDED_TOKENS].index(token)


def _require(condition: bool, name: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"{name}: {message}")


def _positive(obj: object, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        _require(value > 0, f"{type(obj).__name__}.{name}", f"must be > 0, got {value!r}")


@dataclass(frozen=True)
class ExpertConfig:
    """One Qwen3-VL text decoder stack (the und LM, or the generation / action expert)."""

    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 5_000_000.0
    mrope_section: tuple[int, int, int] = (24, 20, 20)
    mrope_interleaved: bool = True
    hidden_act: str = "silu"
    attention_bias: bool = False
    vocab_size: int | None = None
    """Only the understanding expert has a (tied) token embedding; the others take embeddings."""

    def __post_init__(self) -> None:
        name = type(self).__name__
        _positive(self, "hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads", "head_dim")
        _positive(self, "rms_norm_eps", "rope_theta")
        _require(self.num_heads % self.num_kv_heads == 0, f"{name}.num_kv_heads",
                 f"must divide num_heads={self.num_heads}, got {self.num_kv_heads}")
        _require(len(self.mrope_section) == 3, f"{name}.mrope_section", "needs 3 entries (t, h, w)")
        _require(2 * sum(self.mrope_section) == self.head_dim, f"{name}.mrope_section",
                 f"sections {self.mrope_section} must sum to head_dim/2 = {self.head_dim // 2}")
        _require(self.mrope_interleaved, f"{name}.mrope_interleaved",
                 "only the interleaved M-RoPE layout of Qwen3-VL is implemented")
        _require(self.hidden_act == "silu", f"{name}.hidden_act", f"only 'silu' is supported, got {self.hidden_act!r}")
        _require(self.vocab_size is None or self.vocab_size > 0, f"{name}.vocab_size",
                 f"must be > 0 or None, got {self.vocab_size!r}")

    @property
    def q_width(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_width(self) -> int:
        return self.num_kv_heads * self.head_dim


@dataclass(frozen=True)
class VisionConfig:
    """The Qwen3-VL ViT (with its patch merger and the DeepStack mergers it carries)."""

    depth: int
    hidden_size: int
    intermediate_size: int
    num_heads: int
    out_hidden_size: int
    hidden_act: str = "gelu_pytorch_tanh"
    in_channels: int = RGB_CHANNELS
    patch_size: int = QWEN_VL_PATCH_SIZE
    temporal_patch_size: int = QWEN_VL_TEMPORAL_PATCH_SIZE
    spatial_merge_size: int = QWEN_VL_MERGE_SIZE
    num_position_embeddings: int = 2304
    deepstack_visual_indexes: tuple[int, ...] = (5, 11, 17)
    layernorm_eps: float = 1e-6
    rotary_theta: float = 10_000.0

    def __post_init__(self) -> None:
        name = type(self).__name__
        _positive(self, "depth", "hidden_size", "intermediate_size", "num_heads", "out_hidden_size",
                  "in_channels", "patch_size", "temporal_patch_size", "spatial_merge_size",
                  "num_position_embeddings", "rotary_theta")
        _require(self.hidden_size % self.num_heads == 0, f"{name}.num_heads",
                 f"must divide hidden_size={self.hidden_size}")
        side = math.isqrt(self.num_position_embeddings)
        _require(side * side == self.num_position_embeddings, f"{name}.num_position_embeddings",
                 "must be a square (a side x side grid of learned positions)")
        _require(all(0 <= i < self.depth for i in self.deepstack_visual_indexes), f"{name}.deepstack_visual_indexes",
                 f"must be layer indexes below depth={self.depth}, got {self.deepstack_visual_indexes}")
        # transformers' Qwen3-VL ViT hard-codes its LayerNorm eps to 1e-6.
        _require(self.layernorm_eps == 1e-6, f"{name}.layernorm_eps", "the Qwen3-VL ViT uses 1e-6")

    @property
    def patch_values(self) -> int:
        """Length of one flattened patch row of ``pixel_values`` (3 x 2 x 16 x 16 = 1536)."""
        return self.in_channels * self.temporal_patch_size * self.patch_size**2


@dataclass(frozen=True)
class TokenIds:
    """Special token ids of the understanding expert's vocabulary (defaults: the full Qwen3-VL vocabulary)."""

    image: int = qwen_special_token_id("<|image_pad|>")
    video: int = qwen_special_token_id("<|video_pad|>")
    vision_start: int = qwen_special_token_id("<|vision_start|>")
    vision_end: int = qwen_special_token_id("<|vision_end|>")
    pad: int = qwen_special_token_id("<|endoftext|>")


QWEN_TOKEN_IDS = TokenIds()
"""The special ids as the Qwen3-VL tokenizer produces them (before any :class:`TokenIdRemap`)."""


@dataclass(frozen=True)
class TokenIdRemap:
    """Maps real Qwen token ids onto a shrunk vocabulary (test fixtures only).

    Qwen specials (``id >= 151643``) go to ``vocab_size - 26 + (id - 151643)``, other ids to
    ``id % (vocab_size - 26)``; this is how the reference fixture built its tiny vocabulary.
    """

    vocab_size: int

    def __post_init__(self) -> None:
        _require(self.vocab_size > QWEN_SPECIAL_TOKEN_COUNT, "TokenIdRemap.vocab_size",
                 f"must exceed {QWEN_SPECIAL_TOKEN_COUNT} (room for the Qwen specials)")

    def apply(self, ids: torch.Tensor) -> torch.Tensor:
        """Map a tensor of full-vocabulary ids."""
        plain = self.vocab_size - QWEN_SPECIAL_TOKEN_COUNT
        return torch.where(ids >= QWEN_SPECIAL_TOKEN_BASE, plain + (ids - QWEN_SPECIAL_TOKEN_BASE), ids % plain)

    def __call__(self, token_id: int) -> int:
        return int(self.apply(torch.tensor(token_id, dtype=torch.int64)))

    def token_ids(self, ids: TokenIds) -> TokenIds:
        """``ids`` with every id mapped."""
        return TokenIds(**{f.name: self(getattr(ids, f.name)) for f in fields(ids)})


# ---------------------------------------------------------------------------------------------
# Image processing (the Qwen3-VL image processor in front of the ViT).
# ---------------------------------------------------------------------------------------------
MAX_ASPECT_RATIO = 200.0
"""smart_resize refuses images more elongated than this (the Qwen2-VL processor's limit)."""


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """Qwen2-VL target size: both sides multiples of ``factor``, area within [min_pixels, max_pixels].

    Same arithmetic as the Qwen2-VL image processor, so the patch grid (and hence the token count)
    matches what the model was trained on.
    """
    if min(height, width) <= 0:
        raise PreprocessingError(f"smart_resize needs a positive size, got {height}x{width}")
    if max(height, width) / min(height, width) > MAX_ASPECT_RATIO:
        raise PreprocessingError(
            f"image {height}x{width} has an aspect ratio above {MAX_ASPECT_RATIO:g}; crop it before inference"
        )
    new_h = round(height / factor) * factor
    new_w = round(width / factor) * factor
    if new_h * new_w > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        new_h = max(factor, math.floor(height / beta / factor) * factor)
        new_w = max(factor, math.floor(width / beta / factor) * factor)
    elif new_h * new_w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        new_h = math.ceil(height * beta / factor) * factor
        new_w = math.ceil(width * beta / factor) * factor
    return new_h, new_w


def check_positive_int(kind: str, name: str, value: Any) -> int:
    """``value`` if it is a positive integer (not a bool); else a PreprocessingError naming ``kind`` ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise PreprocessingError(f"{kind} {name} must be a positive integer, got {value!r}")
    return value


@dataclass(frozen=True)
class ImageProcessorConfig:
    """Every number of the image path, with the released InternVLA-A1 / Qwen3-VL values as defaults."""

    resize_height: int = IMAGE_RESOLUTION[0]
    resize_width: int = IMAGE_RESOLUTION[1]
    pad_value: float = 0.0
    patch_size: int = QWEN_VL_PATCH_SIZE
    temporal_patch_size: int = QWEN_VL_TEMPORAL_PATCH_SIZE
    merge_size: int = QWEN_VL_MERGE_SIZE
    min_pixels: int = 65536
    max_pixels: int = 16777216
    image_mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    image_std: tuple[float, float, float] = (0.5, 0.5, 0.5)

    def __post_init__(self) -> None:
        for name in (
            "resize_height",
            "resize_width",
            "patch_size",
            "temporal_patch_size",
            "merge_size",
            "min_pixels",
            "max_pixels",
        ):
            check_positive_int("image processor setting", name, getattr(self, name))
        if self.min_pixels > self.max_pixels:
            raise PreprocessingError(
                f"image processor min_pixels {self.min_pixels} exceeds max_pixels {self.max_pixels}"
            )
        for name in ("image_mean", "image_std"):
            values = getattr(self, name)
            if len(values) != RGB_CHANNELS:
                raise PreprocessingError(f"image processor {name} needs 3 values (RGB), got {values!r}")
            object.__setattr__(self, name, tuple(float(v) for v in values))
        if any(s <= 0 for s in self.image_std):
            raise PreprocessingError(f"image processor image_std must be positive, got {self.image_std}")
        height, width = self.processed_size
        if height % self.factor or width % self.factor:
            raise PreprocessingError(f"processed size {height}x{width} is not a multiple of {self.factor}")

    @property
    def factor(self) -> int:
        """Side lengths must be multiples of one merged patch."""
        return self.patch_size * self.merge_size

    @property
    def processed_size(self) -> tuple[int, int]:
        """Size the 224x224 frame is resized to before patching (256x256 with the released values)."""
        return smart_resize(self.resize_height, self.resize_width, self.factor, self.min_pixels, self.max_pixels)

    @property
    def grid_thw(self) -> tuple[int, int, int]:
        """Patch grid of one still image: one temporal patch, (H/patch) x (W/patch) spatial patches."""
        height, width = self.processed_size
        return 1, height // self.patch_size, width // self.patch_size

    @property
    def patches_per_image(self) -> int:
        t, h, w = self.grid_thw
        return t * h * w

    @property
    def patch_dim(self) -> int:
        """Values per patch row: channels x temporal patch x patch x patch (1536)."""
        return RGB_CHANNELS * self.temporal_patch_size * self.patch_size * self.patch_size

    @property
    def tokens_per_image(self) -> int:
        """Vision tokens after the 2x2 merger (64 with the released values)."""
        return self.patches_per_image // (self.merge_size * self.merge_size)

    @property
    def tokens_per_camera(self) -> int:
        """vision_start + merged image tokens + vision_end (66 with the released values)."""
        return self.tokens_per_image + 2


@dataclass(frozen=True)
class InternVLAConfig:
    """The whole policy: experts, ViT, Cosmos, heads, sampler and token layout."""

    und: ExpertConfig
    gen: ExpertConfig
    act: ExpertConfig
    vision: VisionConfig
    cosmos: CosmosConfig
    chunk_size: int = 50
    n_action_steps: int = 50
    max_state_dim: int = MAX_STATE_DIM
    max_action_dim: int = 32
    num_inference_steps: int = 10
    rtc_training_max_delay: int = 0
    """Trained with training-time RTC up to this delay (chunk steps): the executed prefix of the previous chunk is
    passed in clean at flow time 0 instead of guiding towards it. 0: trained without."""
    min_period: float = 4e-3
    max_period: float = 4.0
    time_beta_alpha: float = 1.5
    time_beta_beta: float = 1.0
    time_scale: float = 0.999
    time_offset: float = 0.001
    tokens: TokenIds = field(default_factory=TokenIds)
    tokenizer_max_length: int = TOKENIZER_MAX_LENGTH
    n_views: int = N_VIEWS
    frames_per_view: int = FRAMES_PER_VIEW
    image_history_interval: int = 15
    processor: ImageProcessorConfig = field(default_factory=ImageProcessorConfig)
    """Camera frame -> ViT patches; its resize target is the policy's ``image_resolution``."""
    vision_resolution: tuple[int, int] | None = None
    """ViT input size; ``None`` takes the processor's smart_resize of the frame (256x256 for 224x224)."""
    cosmos_resolution: tuple[int, int] = COSMOS_RESOLUTION
    cosmos_latent_channels: int = 16
    foresight_scale_factor: int = 8
    """Kernel = stride of downsample_conv / upsample_conv (32x32 latents <-> 4x4 tokens)."""
    foresight_layernorm_eps: float = 1e-5
    attention_mask_value: float = -2.3819763e38
    """Additive bias of a masked key: the reference's value, so fully masked rows average like it."""
    token_id_remap: TokenIdRemap | None = None

    def __post_init__(self) -> None:
        name = type(self).__name__
        if self.vision_resolution is None:
            object.__setattr__(self, "vision_resolution", self.processor.processed_size)
        _positive(self, "chunk_size", "n_action_steps", "max_state_dim", "max_action_dim", "num_inference_steps",
                  "min_period", "max_period", "tokenizer_max_length", "n_views", "frames_per_view",
                  "cosmos_latent_channels", "foresight_scale_factor", "foresight_layernorm_eps")
        _require(self.n_action_steps <= self.chunk_size, f"{name}.n_action_steps",
                 f"cannot exceed chunk_size={self.chunk_size}")
        _require(0 <= self.rtc_training_max_delay < self.chunk_size, f"{name}.rtc_training_max_delay",
                 f"must lie in [0, {self.chunk_size - 1}] (chunk steps; 0: trained without training-time RTC)")
        _require(self.min_period < self.max_period, f"{name}.min_period", "must be below max_period")
        _require(self.attention_mask_value < -1e30, f"{name}.attention_mask_value", "must be a huge negative number")
        experts = {"und": self.und, "gen": self.gen, "act": self.act}
        for label, expert in experts.items():
            _require(expert.num_layers == self.und.num_layers, f"{name}.{label}.num_layers",
                     f"all experts share one attention per layer: {expert.num_layers} != {self.und.num_layers}")
            _require(expert.num_heads == self.und.num_heads and expert.num_kv_heads == self.und.num_kv_heads
                     and expert.head_dim == self.und.head_dim, f"{name}.{label}",
                     "heads / kv heads / head_dim must equal the und expert's (one shared attention)")
            _require(expert.mrope_section == self.und.mrope_section and expert.rope_theta == self.und.rope_theta,
                     f"{name}.{label}.mrope_section", "one RoPE is applied to all tokens; must match the und expert")
        _require(self.und.vocab_size is not None, f"{name}.und.vocab_size", "the und expert needs a vocabulary")
        _require(self.gen.vocab_size is None and self.act.vocab_size is None, f"{name}.gen.vocab_size",
                 "the generation / action experts have no token embedding")
        _require(self.gen.hidden_size == self.act.hidden_size, f"{name}.gen.hidden_size",
                 "the foresight and action heads are sized by one expert width")
        _require(self.act.hidden_size % 2 == 0, f"{name}.act.hidden_size",
                 "the sinusoidal time embedding needs an even width")
        _require(self.vision.out_hidden_size == self.und.hidden_size, f"{name}.vision.out_hidden_size",
                 f"the ViT merger must output und.hidden_size={self.und.hidden_size}")
        vocab = self.und.vocab_size or 0
        for token_field in fields(self.tokens):
            token_id = getattr(self.tokens, token_field.name)
            _require(0 <= token_id < vocab, f"{name}.tokens.{token_field.name}",
                     f"id {token_id} is outside the und vocabulary of {vocab}")
        patch = self.vision.patch_size * self.vision.spatial_merge_size
        for axis in self.vision_resolution:
            _require(axis % patch == 0, f"{name}.vision_resolution",
                     f"{self.vision_resolution} must be a multiple of patch x merge = {patch}")
        self._check_processor()
        token_stride = self.cosmos.spatial_compression * self.foresight_scale_factor
        for axis in self.cosmos_resolution:
            _require(axis % token_stride == 0, f"{name}.cosmos_resolution",
                     f"{self.cosmos_resolution} must be a multiple of compression x scale factor = {token_stride}")
        _require(self.cosmos.latent_channels == self.cosmos_latent_channels, f"{name}.cosmos_latent_channels",
                 f"the Cosmos tokenizer has {self.cosmos.latent_channels} latent channels")

    def _check_processor(self) -> None:
        """The image processor must cut the patches the ViT was built for."""
        name, processor, vision = type(self).__name__, self.processor, self.vision
        for label, ours, vits in (("patch_size", processor.patch_size, vision.patch_size),
                                  ("temporal_patch_size", processor.temporal_patch_size, vision.temporal_patch_size),
                                  ("merge_size", processor.merge_size, vision.spatial_merge_size)):
            _require(ours == vits, f"{name}.processor.{label}", f"{ours} differs from the ViT's {vits}")
        _require(vision.in_channels == RGB_CHANNELS, f"{name}.vision.in_channels",
                 f"the image processor feeds RGB ({RGB_CHANNELS} channels), got {vision.in_channels}")
        _require(self.vision_resolution == processor.processed_size, f"{name}.vision_resolution",
                 f"{self.vision_resolution} differs from the processor's resize of {self.image_resolution} "
                 f"to {processor.processed_size}")

    @property
    def image_resolution(self) -> tuple[int, int]:
        """Camera frames are letterboxed to this size before the image processor (224x224)."""
        return (self.processor.resize_height, self.processor.resize_width)

    # Token budget per block (prefix | generation | state | action).
    @property
    def vision_grid(self) -> tuple[int, int, int]:
        """(t, h, w) patch grid of one camera image as the ViT sees it (1, 16, 16)."""
        return self.processor.grid_thw

    @property
    def image_tokens_per_view(self) -> int:
        return self.processor.tokens_per_image

    @property
    def prefix_len(self) -> int:
        """Cameras as ``[vision_start] + image tokens + [vision_end]``, then the padded prompt."""
        return self.n_views * self.processor.tokens_per_camera + self.tokenizer_max_length

    @property
    def cosmos_latent_hw(self) -> tuple[int, int]:
        h, w = (axis // self.cosmos.spatial_compression for axis in self.cosmos_resolution)
        return (h, w)

    @property
    def foresight_tokens_per_frame(self) -> int:
        h, w = (axis // self.foresight_scale_factor for axis in self.cosmos_latent_hw)
        return h * w

    @property
    def generation_len(self) -> int:
        return self.n_views * self.frames_per_view * self.foresight_tokens_per_frame

    @property
    def suffix_len(self) -> int:
        """One state token, then the action chunk."""
        return 1 + self.chunk_size


# ---------------------------------------------------------------------------------------------
# Released size variants (InternVLA-A1-3B). config.json names them; the numbers live here only.
# ---------------------------------------------------------------------------------------------
QWEN3_VL_2B_VOCAB = 151936

UND_VARIANTS: dict[str, tuple[ExpertConfig, VisionConfig]] = {
    "qwen3_vl_28l": (
        ExpertConfig(hidden_size=2048, intermediate_size=6144, num_layers=28, num_heads=16, num_kv_heads=8,
                     head_dim=128, vocab_size=QWEN3_VL_2B_VOCAB),
        VisionConfig(depth=24, hidden_size=1024, intermediate_size=4096, num_heads=16, out_hidden_size=2048,
                     deepstack_visual_indexes=(5, 11, 17)),
    ),
}
EXPERT_VARIANTS: dict[str, ExpertConfig] = {
    "qwen3_28l": ExpertConfig(hidden_size=1024, intermediate_size=3072, num_layers=28, num_heads=16,
                              num_kv_heads=8, head_dim=128),
}


def internvla_a1_3b_config() -> InternVLAConfig:
    """The released 3B model (``qwen3_vl_28l`` + ``qwen3_28l`` experts, Cosmos CI8x8)."""
    und, vision = UND_VARIANTS["qwen3_vl_28l"]
    expert = EXPERT_VARIANTS["qwen3_28l"]
    return InternVLAConfig(und=und, gen=expert, act=expert, vision=vision, cosmos=CosmosConfig.ci8x8())


# ---------------------------------------------------------------------------------------------
# Reading a checkpoint directory.
# ---------------------------------------------------------------------------------------------
def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as err:
        raise ConfigError(f"{path}: file not found") from err
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(f"{path}: not readable JSON ({err})") from err
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object at the top level")
    return data


def _get(data: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in data:
        raise ConfigError(f"{where}: missing key {key!r}")
    return data[key]


def _pair(value: Any, where: str) -> tuple[int, int]:
    if not (isinstance(value, list | tuple) and len(value) == 2):
        raise ConfigError(f"{where}: expected [height, width], got {value!r}")
    return (int(value[0]), int(value[1]))


def _expert_from_arch(data: Mapping[str, Any], where: str, *, with_vocab: bool) -> ExpertConfig:
    rope = _get(data, "rope_scaling", where)
    return ExpertConfig(
        hidden_size=int(_get(data, "hidden_size", where)),
        intermediate_size=int(_get(data, "intermediate_size", where)),
        num_layers=int(_get(data, "num_hidden_layers", where)),
        num_heads=int(_get(data, "num_attention_heads", where)),
        num_kv_heads=int(_get(data, "num_key_value_heads", where)),
        head_dim=int(_get(data, "head_dim", where)),
        rms_norm_eps=float(_get(data, "rms_norm_eps", where)),
        rope_theta=float(_get(data, "rope_theta", where)),
        mrope_section=tuple(int(v) for v in _get(rope, "mrope_section", f"{where}.rope_scaling")),
        mrope_interleaved=bool(_get(rope, "mrope_interleaved", f"{where}.rope_scaling")),
        hidden_act=str(_get(data, "hidden_act", where)),
        attention_bias=bool(_get(data, "attention_bias", where)),
        vocab_size=int(_get(data, "vocab_size", where)) if with_vocab else None,
    )


def _vision_from_arch(und: Mapping[str, Any], where: str) -> VisionConfig:
    data = _get(und, "vision_config", where)
    where = f"{where}.vision_config"
    return VisionConfig(
        depth=int(_get(data, "depth", where)),
        hidden_size=int(_get(data, "hidden_size", where)),
        intermediate_size=int(_get(data, "intermediate_size", where)),
        num_heads=int(_get(data, "num_heads", where)),
        out_hidden_size=int(_get(data, "out_hidden_size", where)),
        hidden_act=str(_get(data, "hidden_act", where)),
        in_channels=int(_get(data, "in_channels", where)),
        patch_size=int(_get(data, "patch_size", where)),
        temporal_patch_size=int(_get(data, "temporal_patch_size", where)),
        spatial_merge_size=int(_get(data, "spatial_merge_size", where)),
        num_position_embeddings=int(_get(data, "num_position_embeddings", where)),
        deepstack_visual_indexes=tuple(int(i) for i in _get(data, "deepstack_visual_indexes", where)),
        layernorm_eps=float(und.get("vision_layernorm_eps", 1e-6)),
        rotary_theta=float(und.get("vision_rotary_theta", 10_000.0)),
    )


def _processor_from_arch(section: Mapping[str, Any], vision: VisionConfig, image_resolution: tuple[int, int] | None,
                         where: str) -> ImageProcessorConfig:
    """The image processor from ``arch.json``'s ``processor`` section (the layout of ``preprocessor_config.json``).

    Absent settings take the released values; the patch sizes default to the ViT's and the resize target
    to the policy's ``image_resolution``, which a stated ``resize_with_pad`` size must agree with.
    """
    size = section.get("size", {})
    pad = section.get("resize_with_pad", {})
    defaults = ImageProcessorConfig()
    resize = image_resolution or (defaults.resize_height, defaults.resize_width)
    stated = (pad.get("height", resize[0]), pad.get("width", resize[1]))
    if image_resolution is not None and stated != image_resolution:
        raise ConfigError(f"{where}.resize_with_pad: {stated[0]}x{stated[1]} differs from the policy's "
                          f"image_resolution {resize[0]}x{resize[1]}")
    try:
        return ImageProcessorConfig(
            resize_height=stated[0],
            resize_width=stated[1],
            pad_value=float(pad.get("pad_value", defaults.pad_value)),
            patch_size=section.get("patch_size", vision.patch_size),
            temporal_patch_size=section.get("temporal_patch_size", vision.temporal_patch_size),
            merge_size=section.get("merge_size", vision.spatial_merge_size),
            min_pixels=section.get("min_pixels", size.get("shortest_edge", defaults.min_pixels)),
            max_pixels=section.get("max_pixels", size.get("longest_edge", defaults.max_pixels)),
            image_mean=tuple(section.get("image_mean", defaults.image_mean)),
            image_std=tuple(section.get("image_std", defaults.image_std)),
        )
    except PreprocessingError as err:
        raise ConfigError(f"{where}: {err}") from err


def _policy_fields(policy: Mapping[str, Any]) -> dict[str, Any]:
    """Fields shared by config.json and arch.json["policy"] (same key names in both)."""
    out: dict[str, Any] = {}
    for key in ("chunk_size", "n_action_steps", "max_state_dim", "max_action_dim", "num_inference_steps",
                "tokenizer_max_length", "rtc_training_max_delay"):
        if key in policy:
            out[key] = int(policy[key])
    for key in ("min_period", "max_period"):
        if key in policy:
            out[key] = float(policy[key])
    for source, target in (("time_sampling_beta_alpha", "time_beta_alpha"), ("time_sampling_beta_beta",
                           "time_beta_beta"), ("time_sampling_scale", "time_scale"),
                           ("time_sampling_offset", "time_offset")):
        if source in policy:
            out[target] = float(policy[source])
    if "image_resolution" in policy:
        out["image_resolution"] = _pair(policy["image_resolution"], "image_resolution")
    if "scale_factor" in policy:
        out["foresight_scale_factor"] = int(policy["scale_factor"])
    return out


def _config_from_arch(arch: Mapping[str, Any], base: dict[str, Any], where: str) -> InternVLAConfig:
    und = _get(arch, "und_expert", where)
    policy = _get(arch, "policy", where)
    heads = arch.get("qwena1_heads", {})
    remap = None
    if "token_id_remap" in arch:
        remap = TokenIdRemap(int(_get(arch["token_id_remap"], "V", f"{where}.token_id_remap")))
    tokens = TokenIds(
        image=int(_get(und, "image_token_id", f"{where}.und_expert")),
        video=int(_get(und, "video_token_id", f"{where}.und_expert")),
        vision_start=int(_get(und, "vision_start_token_id", f"{where}.und_expert")),
        vision_end=int(_get(und, "vision_end_token_id", f"{where}.und_expert")),
        pad=remap(QWEN_TOKEN_IDS.pad) if remap is not None else QWEN_TOKEN_IDS.pad,
    )
    cosmos_data = dict(_get(arch, "cosmos_tokenizer", where))
    values = dict(base)
    values.update(_policy_fields(policy))
    vision = _vision_from_arch(und, f"{where}.und_expert")
    values.update(
        und=_expert_from_arch(_get(und, "text_config", f"{where}.und_expert"), f"{where}.und_expert.text_config",
                              with_vocab=True),
        gen=_expert_from_arch(_get(arch, "gen_expert", where), f"{where}.gen_expert", with_vocab=False),
        act=_expert_from_arch(_get(arch, "act_expert", where), f"{where}.act_expert", with_vocab=False),
        vision=vision,
        processor=_processor_from_arch(arch.get("processor", {}), vision, values.pop("image_resolution", None),
                                       f"{where}.processor"),
        cosmos=CosmosConfig.from_dict(cosmos_data),
        tokens=tokens,
        token_id_remap=remap,
    )
    if "n_views" in policy:
        values["n_views"] = int(policy["n_views"])
    if "frames_per_view_at_inference" in policy:
        values["frames_per_view"] = int(policy["frames_per_view_at_inference"])
    if "image_history_interval" in policy:
        values["image_history_interval"] = int(policy["image_history_interval"])
    if "attention_mask_value" in policy:
        values["attention_mask_value"] = float(policy["attention_mask_value"])
    if "cosmos_image_resolution" in policy:
        values["cosmos_resolution"] = _pair(policy["cosmos_image_resolution"], f"{where}.policy")
    if "input_resolution" in cosmos_data:
        values["cosmos_resolution"] = _pair(cosmos_data["input_resolution"], f"{where}.cosmos_tokenizer")
    if "vae_dim" in cosmos_data:
        values["cosmos_latent_channels"] = int(cosmos_data["vae_dim"])
    for key, value in heads.items():
        if key.startswith("scale_factor"):  # spelled "scale_factor(downsample_conv kernel=stride)" there
            values["foresight_scale_factor"] = int(value)
    config = InternVLAConfig(**values)
    stated = heads.get("middle_tokens_per_frame")
    if stated is not None and int(stated) != config.foresight_tokens_per_frame:
        raise ConfigError(f"{where}: qwena1_heads.middle_tokens_per_frame={stated} but the resolutions give "
                          f"{config.foresight_tokens_per_frame}")
    return config


def load_config(directory: str | Path) -> InternVLAConfig:
    """Read ``config.json`` (+ ``arch.json`` if present) of a checkpoint directory."""
    directory = Path(directory)
    config_path = directory / CONFIG_FILE
    raw = read_json(config_path)
    kind = raw.get("type")
    if kind != CHECKPOINT_TYPE:
        raise ConfigError(
            f"{config_path}: type {kind!r} is not supported; expected {CHECKPOINT_TYPE!r} (InternVLA-A1-3B)"
        )
    arch_path = directory / ARCH_FILE
    try:
        base = _policy_fields(raw)
        if arch_path.exists():
            return _config_from_arch(read_json(arch_path), base, str(arch_path))
        und_name = _get(raw, "qwen3_vl_variant", str(config_path))
        expert_name = _get(raw, "action_expert_variant", str(config_path))
        if und_name not in UND_VARIANTS:
            raise ConfigError(f"{config_path}: unknown qwen3_vl_variant {und_name!r}; known: {sorted(UND_VARIANTS)} "
                              f"(state other sizes in {ARCH_FILE})")
        if expert_name not in EXPERT_VARIANTS:
            raise ConfigError(f"{config_path}: unknown action_expert_variant {expert_name!r}; known: "
                              f"{sorted(EXPERT_VARIANTS)} (state other sizes in {ARCH_FILE})")
        und, vision = UND_VARIANTS[und_name]
        expert = EXPERT_VARIANTS[expert_name]
        processor = _processor_from_arch({}, vision, base.pop("image_resolution", None), str(config_path))
        return InternVLAConfig(und=und, gen=expert, act=expert, vision=vision, cosmos=CosmosConfig.ci8x8(),
                               processor=processor, **base)
    except (TypeError, ValueError, KeyError) as err:
        raise ConfigError(f"{directory}: malformed configuration ({err})") from err
