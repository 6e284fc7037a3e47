"""The InternVLA-A1 model against the reference fixture (case A), both inference paths, and precisions."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLTextDecoderLayer, Qwen3VLTextRotaryEmbedding

from internvla_ros.model.attention import (
    ACTION_BLOCK,
    GENERATION_BLOCK,
    MASKED_POSITION,
    PREFIX_BLOCK,
    STATE_BLOCK,
    block_attention_bias,
    mixed_layer,
    mrope_prefix_positions,
)
from internvla_ros.model.checkpoint import load_checkpoint
from internvla_ros.model.config import ExpertConfig
from internvla_ros.model.errors import ModelError, PreprocessingError
from internvla_ros.model.experts import hf_text_config
from internvla_ros.model.inputs import ModelInputs
from internvla_ros.model.modeling import InternVLAModel, Prediction
from internvla_ros.model.preprocessing import cosmos_frames

torch.set_num_threads(1)

CASE_A = Path(__file__).resolve().parents[1] / "fixtures" / "internvla_a1_reference" / "case_a"

ACTIONS_ATOL = 1e-4
"""Independent fp32 implementation vs the reference (fixture README); we measure ~1e-6."""
HIDDEN_ATOL = 1e-4
IMAGE_ATOL = 5e-4
PATHS_ATOL = 1e-5
"""Cached vs recompute-everything: same math, different reduction order only."""
BF16_ACTIONS_ATOL = 0.1
"""bf16 experts vs the fp32 reference: ~3e-2 measured; a layout error moves actions by O(1)."""
BF16_IMAGE_RTOL = 0.1
"""Relative L2 error of bf16 foresight images vs fp32 (values span +-15 here); ~4e-2 measured."""


@pytest.fixture(scope="module")
def reference() -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    return load_file(CASE_A / "inputs.safetensors"), load_file(CASE_A / "outputs.safetensors")


@pytest.fixture(scope="module")
def model() -> InternVLAModel:
    return load_checkpoint(CASE_A).model


def make_inputs(batch: dict[str, torch.Tensor]) -> ModelInputs:
    frames = torch.stack([batch[f"observation.images.image{k}"] for k in range(3)], dim=1)
    masks = torch.stack([batch[f"observation.images.image{k}_mask"] for k in range(3)], dim=1)
    return ModelInputs(
        pixel_values=batch["observation.pixel_values"],
        image_grid_thw=batch["observation.image_grid_thw"],
        input_ids=batch["observation.input_ids"],
        attention_mask=batch["observation.attention_mask"],
        state=batch["observation.state"],
        view_mask=masks,
        frames=frames,
    )


@pytest.fixture(scope="module")
def prediction(model: InternVLAModel, reference) -> Prediction:
    inputs, _ = reference
    return model.predict(make_inputs(inputs), inputs["noise"])


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item()


def test_actions_match_reference(prediction: Prediction, reference) -> None:
    _, outputs = reference
    assert prediction.actions.shape == (1, 50, 32)
    assert max_diff(prediction.actions, outputs["actions"]) <= ACTIONS_ATOL


@pytest.mark.parametrize(
    ("name", "atol"),
    [
        ("vit_image_embeds", HIDDEN_ATOL),
        ("prefix_embs", HIDDEN_ATOL),
        ("prefix_out", HIDDEN_ATOL),
        ("cosmos_latents", HIDDEN_ATOL),
        ("middle_embs", HIDDEN_ATOL),
        ("middle_out", HIDDEN_ATOL),
    ],
)
def test_intermediates_match_reference(prediction: Prediction, reference, name: str, atol: float) -> None:
    _, outputs = reference
    ours = getattr(prediction, name)
    assert ours.shape == outputs[name].shape
    assert max_diff(ours, outputs[name]) <= atol


def test_sampler_trace_matches_reference(prediction: Prediction, reference) -> None:
    _, outputs = reference
    assert torch.equal(torch.stack(prediction.trace.t), outputs["t_all"])
    assert max_diff(torch.stack(prediction.trace.x_t), outputs["x_t_all"]) <= ACTIONS_ATOL
    assert max_diff(torch.stack(prediction.trace.v_t), outputs["v_t_all"]) <= ACTIONS_ATOL


def test_position_ids_match_reference(prediction: Prediction, reference) -> None:
    _, outputs = reference
    assert torch.equal(prediction.prefix_position_ids, outputs["prefix_position_ids"])
    assert torch.equal(prediction.middle_position_ids, outputs["middle_position_ids"])


def test_foresight_matches_reference_fp32(model: InternVLAModel, prediction: Prediction, reference) -> None:
    _, outputs = reference
    latents = model.foresight_latents(prediction.middle_out)
    assert max_diff(latents, outputs["foresight_latent_pred"]) <= HIDDEN_ATOL
    with torch.no_grad():
        images = model.decode_foresight(latents)
    assert images.shape == (1, 3, 3, 256, 256)
    assert images.dtype == torch.float32
    assert max_diff(images[:, 0], outputs["foresight_recon_images_view0"]) <= IMAGE_ATOL


def test_cached_and_recompute_everything_agree(model: InternVLAModel, prediction: Prediction, reference) -> None:
    inputs, _ = reference
    full = model.predict_uncached(make_inputs(inputs), inputs["noise"])
    assert max_diff(full.actions, prediction.actions) <= PATHS_ATOL
    assert max_diff(full.middle_out, prediction.middle_out) <= PATHS_ATOL
    assert max_diff(full.prefix_out, prediction.prefix_out) <= PATHS_ATOL
    for ours, theirs in zip(full.trace.v_t, prediction.trace.v_t, strict=True):
        assert max_diff(ours, theirs) <= PATHS_ATOL


def test_generation_cache_is_reusable_across_chunks(model: InternVLAModel, reference) -> None:
    """Prefix and generation K/V computed once serve several chunks (new state, new noise)."""
    inputs, _ = reference
    batch = make_inputs(inputs)
    with torch.no_grad():
        prefix, _ = model.embed_prefix(batch.pixel_values, batch.image_grid_thw, batch.input_ids, batch.attention_mask)
        _, prefix_cache = model.run_prefix(prefix)
        generation = model.embed_generation(model.encode_frames(batch.frames), batch.view_mask, prefix.positions)
        _, generation_cache = model.run_generation(prefix_cache, generation)
        context = model.action_context(prefix_cache, generation_cache)
        for seed in (1, 2):
            noise = torch.randn(1, 50, 32, generator=torch.Generator().manual_seed(seed))
            state = batch.state + 0.1 * seed
            reused = model.sample_actions(context, state, noise)
            fresh = model.predict(replace(batch, state=state), noise).actions
            assert max_diff(reused, fresh) <= PATHS_ATOL


def test_precomputed_latents_equal_encoding_in_the_loop(model: InternVLAModel, prediction: Prediction,
                                                       reference) -> None:
    """The t-15 latents can be encoded ahead of time, one frame at a time."""
    inputs, _ = reference
    batch = make_inputs(inputs)
    with torch.no_grad():
        earlier = model.encode_frames(batch.frames[:, :, 0])
        current = model.encode_frames(batch.frames[:, :, 1])
    latents = torch.stack([earlier, current], dim=2)
    assert max_diff(latents, prediction.cosmos_latents) <= PATHS_ATOL
    again = model.predict(replace(batch, frames=None, cosmos_latents=latents), inputs["noise"])
    assert max_diff(again.actions, prediction.actions) <= PATHS_ATOL


def test_encode_frames_uses_the_cosmos_recipe(model: InternVLAModel, reference) -> None:
    inputs, _ = reference
    frames = inputs["observation.images.image0"][:, 1]
    with torch.no_grad():
        direct = model.model.cosmos.encode(cosmos_frames(frames))
        assert torch.equal(model.encode_frames(frames), direct.float())


def test_deepstack_mergers_never_run_and_cannot_change_actions(model: InternVLAModel, prediction: Prediction,
                                                               reference) -> None:
    inputs, _ = reference
    mergers = model.experts.visual.deepstack_merger_list
    assert len(mergers) == 2  # present, so their weights load

    def fail(*_: object) -> None:
        raise AssertionError("a DeepStack merger ran")

    handles = [m.register_forward_hook(fail) for m in mergers]
    saved = {k: v.clone() for k, v in mergers.state_dict().items()}
    try:
        with torch.no_grad():
            for p in mergers.parameters():
                p.add_(1.0)
        again = model.predict(make_inputs(inputs), inputs["noise"])
    finally:
        for h in handles:
            h.remove()
        mergers.load_state_dict(saved)
    assert torch.equal(again.actions, prediction.actions)


def test_missing_camera_is_masked(model: InternVLAModel, reference) -> None:
    """A masked camera's pixels and frames cannot move the actions; both paths agree."""
    inputs, _ = reference
    batch = make_inputs(inputs)
    image_tokens = 66
    mask = batch.attention_mask.clone()
    mask[:, 2 * image_tokens:3 * image_tokens] = 0
    view_mask = batch.view_mask.clone()
    view_mask[:, 2] = False
    missing = replace(batch, attention_mask=mask, view_mask=view_mask)
    base = model.predict(missing, inputs["noise"])
    pixels = batch.pixel_values.clone()
    pixels[:, 512:] = 0.3
    frames = batch.frames.clone()
    frames[:, 2] = 0.7
    changed = model.predict(replace(missing, pixel_values=pixels, frames=frames), inputs["noise"])
    assert torch.isfinite(base.actions).all()
    assert max_diff(base.actions, changed.actions) <= PATHS_ATOL
    full = model.predict_uncached(missing, inputs["noise"])
    assert max_diff(full.actions, base.actions) <= PATHS_ATOL


@pytest.fixture(scope="module")
def bf16_model() -> InternVLAModel:
    return load_checkpoint(CASE_A, dtype=torch.bfloat16, cosmos_dtype=torch.bfloat16).model


def test_bf16_end_to_end(bf16_model: InternVLAModel, prediction: Prediction, reference) -> None:
    inputs, _ = reference
    layer = bf16_model.experts.act_expert.layers[0]
    assert layer.self_attn.q_proj.weight.dtype == torch.bfloat16
    assert layer.input_layernorm.weight.dtype == torch.float32
    assert layer.self_attn.q_norm.weight.dtype == torch.float32
    assert bf16_model.model.action_out_proj.weight.dtype == torch.float32
    assert bf16_model.experts.rotary.inv_freq.dtype == torch.float32
    result = bf16_model.predict(make_inputs(inputs), inputs["noise"])
    assert result.actions.dtype == torch.float32
    assert torch.isfinite(result.actions).all()
    assert max_diff(result.actions, prediction.actions) <= BF16_ACTIONS_ATOL
    full = bf16_model.predict_uncached(make_inputs(inputs), inputs["noise"])
    assert max_diff(full.actions, result.actions) <= BF16_ACTIONS_ATOL


def test_foresight_decode_bf16(bf16_model: InternVLAModel, reference) -> None:
    inputs, outputs = reference
    result = bf16_model.predict(make_inputs(inputs), inputs["noise"])
    with torch.no_grad():
        images = bf16_model.decode_foresight(bf16_model.foresight_latents(result.middle_out))
    assert images.dtype == torch.float32
    assert torch.isfinite(images).all()
    expected = outputs["foresight_recon_images_view0"]
    assert ((images[:, 0] - expected).norm() / expected.norm()).item() <= BF16_IMAGE_RTOL


def test_wrong_noise_and_state_shapes_are_rejected(model: InternVLAModel, reference) -> None:
    inputs, _ = reference
    batch = make_inputs(inputs)
    with pytest.raises(ModelError, match="noise"):
        model.predict(batch, torch.zeros(1, 49, 32))
    with pytest.raises(PreprocessingError, match="state"):
        model.predict(replace(batch, state=torch.zeros(1, 40)), inputs["noise"])
    with pytest.raises(PreprocessingError, match="frames or cosmos_latents"):
        model.predict(replace(batch, frames=None), inputs["noise"])


def test_block_mask_layout() -> None:
    blocks = torch.tensor([PREFIX_BLOCK, PREFIX_BLOCK, GENERATION_BLOCK, STATE_BLOCK, ACTION_BLOCK, ACTION_BLOCK])
    valid = torch.tensor([[True, False, True, True, True, True]])
    bias = block_attention_bias(blocks, valid, blocks, valid, -1e38, torch.float32)[0, 0]
    allowed = bias == 0
    expected = torch.tensor([
        [1, 0, 0, 0, 0, 0],  # prefix: itself, not the pad, not later blocks
        [0, 0, 0, 0, 0, 0],  # pad query: nothing of its own block
        [1, 0, 1, 0, 0, 0],  # generation: prefix + itself
        [1, 0, 1, 1, 0, 0],  # state: + itself, not the actions
        [1, 0, 1, 1, 1, 1],  # actions: everything valid
        [1, 0, 1, 1, 1, 1],
    ], dtype=torch.bool)
    assert torch.equal(allowed, expected)
    assert torch.isinf(bias[0, 2]) and bias[0, 1] == -1e38  # later block vs padding


def test_mrope_positions_skip_a_masked_camera() -> None:
    image, start, end, text = 9, 7, 8, 3
    grid = torch.tensor([[[1, 4, 4], [1, 4, 4]]])
    ids = torch.tensor([[start, *[image] * 4, end, start, *[image] * 4, end, text, text]])
    mask = torch.ones_like(ids)
    mask[0, :6] = 0  # camera 0 missing
    pos = mrope_prefix_positions(ids, mask, grid, image, spatial_merge_size=2)
    assert (pos[:, 0, :6] == MASKED_POSITION).all()
    assert pos[:, 0, 6].tolist() == [0, 0, 0]
    assert pos[:, 0, 7:11].tolist() == [[1, 1, 1, 1], [1, 1, 2, 2], [1, 2, 1, 2]]
    assert pos[:, 0, 11:].tolist() == [[3, 4, 5], [3, 4, 5], [3, 4, 5]]


def test_model_package_does_not_import_rclpy() -> None:
    code = ("import sys, internvla_ros.model.modeling, internvla_ros.model.checkpoint; "
            "sys.exit('rclpy' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_training_losses_use_the_same_velocity(model: InternVLAModel, reference) -> None:
    """forward() (joint pass) sees the velocity that a cached denoise step computes at the same x_t."""
    inputs, outputs = reference
    batch = make_inputs(inputs)
    generator = torch.Generator().manual_seed(3)
    actions = torch.randn(1, 50, 14, generator=generator)
    noise = inputs["noise"]
    time = torch.tensor([0.3])
    with torch.no_grad():
        losses = model(batch, actions, outputs["foresight_latent_pred"], noise, time)
        prefix, _ = model.embed_prefix(batch.pixel_values, batch.image_grid_thw, batch.input_ids, batch.attention_mask)
        _, prefix_cache = model.run_prefix(prefix)
        generation = model.embed_generation(model.encode_frames(batch.frames), batch.view_mask, prefix.positions)
        _, generation_cache = model.run_generation(prefix_cache, generation)
        padded = torch.nn.functional.pad(actions, (0, 18))
        x_t = time * noise + (1 - time) * padded
        v_t = model.denoise_step(model.action_context(prefix_cache, generation_cache), batch.state, x_t, time)
    assert losses.action.shape == (1, 50, 32)
    assert max_diff(losses.action, (v_t - (noise - padded)) ** 2) <= 1e-3
    assert losses.foresight.item() <= HIDDEN_ATOL  # its target is the reference's own prediction


def test_training_times_follow_the_configured_beta(model: InternVLAModel) -> None:
    torch.manual_seed(0)
    times = model.sample_time(1000)
    assert times.dtype == torch.float32
    assert times.min() >= model.config.time_offset
    assert times.max() <= model.config.time_offset + model.config.time_scale
    assert 0.55 < times.mean().item() < 0.65  # Beta(1.5, 1) has mean 0.6


def test_stale_generation_cache_can_serve_a_new_prefix(model: InternVLAModel, reference) -> None:
    """Foresight refreshed at a lower rate: last chunk's generation K/V with this chunk's prefix."""
    inputs, _ = reference
    batch = make_inputs(inputs)
    with torch.no_grad():
        old_prefix, _ = model.embed_prefix(batch.pixel_values, batch.image_grid_thw, batch.input_ids,
                                           batch.attention_mask)
        _, old_cache = model.run_prefix(old_prefix)
        generation = model.embed_generation(model.encode_frames(batch.frames), batch.view_mask, old_prefix.positions)
        _, generation_cache = model.run_generation(old_cache, generation)
        new_prefix, _ = model.embed_prefix(batch.pixel_values * 0.9, batch.image_grid_thw, batch.input_ids,
                                           batch.attention_mask)
        _, new_cache = model.run_prefix(new_prefix)
        actions = model.sample_actions(model.action_context(new_cache, generation_cache), batch.state,
                                       inputs["noise"])
    assert actions.shape == (1, 50, 32) and torch.isfinite(actions).all()


def test_mixed_layer_equals_a_transformers_decoder_layer_with_gqa() -> None:
    """One expert through mixed_layer == transformers' own Qwen3-VL decoder layer (eager, 4 heads / 2 kv)."""
    torch.manual_seed(0)
    expert = ExpertConfig(hidden_size=48, intermediate_size=96, num_layers=1, num_heads=4, num_kv_heads=2,
                          head_dim=32, mrope_section=(6, 5, 5))
    hf = hf_text_config(expert)
    hf._attn_implementation = "eager"
    layer = Qwen3VLTextDecoderLayer(hf, 0).eval()
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.1 * torch.randn_like(p))
    length = 9
    hidden = torch.randn(1, length, 48)
    positions = torch.stack([torch.arange(length), torch.arange(length) % 3, torch.arange(length) // 3])[:, None]
    rope = Qwen3VLTextRotaryEmbedding(hf)(hidden, positions)
    blocks = torch.tensor([0] * 4 + [1] * 5)
    valid = torch.ones(1, length, dtype=torch.bool)
    valid[0, 2] = False
    bias = block_attention_bias(blocks, valid, blocks, valid, -2.3819763e38, torch.float32)
    with torch.no_grad():
        (ours,), _ = mixed_layer([layer], [hidden], rope, bias, None)
        theirs = layer(hidden, position_embeddings=rope, attention_mask=bias)
    assert max_diff(ours, theirs) <= 1e-5
