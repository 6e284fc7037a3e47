"""Model configuration: presets, checkpoint directories, arch.json, validation."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from internvla_ros.model.config import (
    EXPERT_VARIANTS,
    UND_VARIANTS,
    ExpertConfig,
    InternVLAConfig,
    TokenIdRemap,
    VisionConfig,
    internvla_a1_3b_config,
    load_config,
)
from internvla_ros.model.errors import ConfigError

torch.set_num_threads(1)

CASE_A = Path(__file__).resolve().parents[1] / "fixtures" / "internvla_a1_reference" / "case_a"


def config_only(tmp_path: Path, **changes: object) -> Path:
    """A checkpoint dir with only the fixture's config.json, edited."""
    raw = json.loads((CASE_A / "config.json").read_text())
    raw.update(changes)
    (tmp_path / "config.json").write_text(json.dumps(raw))
    return tmp_path


def test_fixture_config_comes_from_arch_json() -> None:
    config = load_config(CASE_A)
    assert config.und.hidden_size == 128 and config.und.vocab_size == 512
    assert (config.und.num_heads, config.und.num_kv_heads, config.und.head_dim) == (2, 1, 128)
    assert config.gen.hidden_size == config.act.hidden_size == 64
    assert config.gen.vocab_size is None
    assert config.vision.depth == 2 and config.vision.deepstack_visual_indexes == (0, 1)
    assert config.cosmos.channels == 32
    assert config.tokens.image == 498 and config.tokens.vision_start == 495 and config.tokens.pad == 486
    assert config.und.mrope_section == (24, 20, 20) and config.und.rope_theta == 5e6
    assert config.attention_mask_value == pytest.approx(-2.3819763e38)


def test_token_budget() -> None:
    for config in (load_config(CASE_A), internvla_a1_3b_config()):
        assert config.image_tokens_per_view == 64
        assert config.prefix_len == 246
        assert config.generation_len == 96
        assert config.suffix_len == 51


def test_3b_preset_sizes() -> None:
    config = internvla_a1_3b_config()
    assert (config.und.hidden_size, config.und.intermediate_size, config.und.num_layers) == (2048, 6144, 28)
    assert (config.gen.hidden_size, config.gen.intermediate_size, config.gen.num_layers) == (1024, 3072, 28)
    assert config.gen.q_width == config.und.q_width == 2048
    assert config.vision.depth == 24 and config.vision.deepstack_visual_indexes == (5, 11, 17)
    assert (config.chunk_size, config.max_state_dim, config.max_action_dim, config.num_inference_steps) == (
        50, 32, 32, 10)


def test_released_variants_without_arch_json(tmp_path: Path) -> None:
    config = load_config(config_only(tmp_path, qwen3_vl_variant="qwen3_vl_28l", action_expert_variant="qwen3_28l"))
    assert config == internvla_a1_3b_config()


def test_unknown_variant_lists_the_known_ones(tmp_path: Path) -> None:
    # The fixture's names would give 2 layers if parsed; without arch.json they must be refused.
    with pytest.raises(ConfigError, match="qwen3_vl_2l") as err:
        load_config(config_only(tmp_path))
    assert all(name in str(err.value) for name in UND_VARIANTS)
    with pytest.raises(ConfigError, match="qwen3_28l"):
        load_config(config_only(tmp_path, qwen3_vl_variant="qwen3_vl_28l", action_expert_variant="qwen3_600m"))
    assert "qwen3_28l" in EXPERT_VARIANTS


def test_other_checkpoint_type_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="'pi0'"):
        load_config(config_only(tmp_path, type="pi0"))


def test_missing_and_broken_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"config\.json: file not found"):
        load_config(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match=r"config\.json"):
        load_config(tmp_path)


def test_arch_json_missing_key_is_named(tmp_path: Path) -> None:
    shutil.copy(CASE_A / "config.json", tmp_path / "config.json")
    arch = json.loads((CASE_A / "arch.json").read_text())
    del arch["gen_expert"]["intermediate_size"]
    (tmp_path / "arch.json").write_text(json.dumps(arch))
    with pytest.raises(ConfigError, match=r"gen_expert: missing key 'intermediate_size'"):
        load_config(tmp_path)


def test_arch_json_takes_precedence(tmp_path: Path) -> None:
    config_only(tmp_path, chunk_size=10, n_action_steps=10)
    shutil.copy(CASE_A / "arch.json", tmp_path / "arch.json")
    assert load_config(tmp_path).chunk_size == 50


def test_token_remap_reproduces_the_fixture_ids() -> None:
    config = load_config(CASE_A)
    assert config.token_id_remap is not None
    full = load_file(CASE_A / "aux_inputs.safetensors")["aux.input_ids_full_vocab"]
    tiny = load_file(CASE_A / "inputs.safetensors")["observation.input_ids"]
    assert [config.token_id_remap(int(i)) for i in full[0]] == tiny[0].tolist()


@pytest.mark.parametrize(
    ("factory", "field"),
    [
        (lambda: ExpertConfig(64, 128, 2, num_heads=3, num_kv_heads=2, head_dim=128), "num_kv_heads"),
        (lambda: ExpertConfig(64, 128, 2, 2, 1, head_dim=64), "mrope_section"),
        (lambda: ExpertConfig(64, 128, 0, 2, 1, 128), "num_layers"),
        (lambda: ExpertConfig(64, 128, 2, 2, 1, 128, hidden_act="gelu"), "hidden_act"),
        (lambda: VisionConfig(2, 64, 128, 3, 128), "num_heads"),
        (lambda: VisionConfig(2, 64, 128, 2, 128, deepstack_visual_indexes=(2,)), "deepstack_visual_indexes"),
        (lambda: VisionConfig(2, 64, 128, 2, 128, num_position_embeddings=2300), "num_position_embeddings"),
        (lambda: TokenIdRemap(10), "vocab_size"),
    ],
)
def test_part_validation_names_the_field(factory, field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        factory()


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"chunk_size": 0}, "chunk_size"),
        ({"n_action_steps": 60}, "n_action_steps"),
        ({"min_period": 5.0}, "min_period"),
        ({"num_inference_steps": 0}, "num_inference_steps"),
        ({"cosmos_resolution": (250, 256)}, "cosmos_resolution"),
        ({"vision_resolution": (250, 256)}, "vision_resolution"),
        ({"vision_resolution": (512, 512)}, "vision_resolution"),
    ],
)
def test_model_validation_names_the_field(changes: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        dataclasses.replace(load_config(CASE_A), **changes)


def test_experts_must_share_the_attention() -> None:
    config = load_config(CASE_A)
    with pytest.raises(ConfigError, match=r"gen\.num_layers"):
        dataclasses.replace(config, gen=dataclasses.replace(config.gen, num_layers=3))
    with pytest.raises(ConfigError, match="act"):
        dataclasses.replace(config, act=dataclasses.replace(config.act, num_kv_heads=2))
    with pytest.raises(ConfigError, match=r"tokens\.image"):
        dataclasses.replace(config, tokens=dataclasses.replace(config.tokens, image=600))
    with pytest.raises(ConfigError, match=r"vision\.out_hidden_size"):
        dataclasses.replace(config, vision=dataclasses.replace(config.vision, out_hidden_size=64))


def test_image_processor_comes_from_arch_json_and_matches_the_vit(tmp_path: Path) -> None:
    config = load_config(CASE_A)
    assert config.processor == internvla_a1_3b_config().processor
    assert config.image_resolution == (224, 224) and config.vision_resolution == (256, 256)
    with pytest.raises(ConfigError, match=r"processor\.patch_size"):
        dataclasses.replace(config, processor=dataclasses.replace(config.processor, patch_size=14, min_pixels=784))
    shutil.copy(CASE_A / "config.json", tmp_path / "config.json")
    arch = json.loads((CASE_A / "arch.json").read_text())
    arch["processor"]["resize_with_pad"]["height"] = 256
    (tmp_path / "arch.json").write_text(json.dumps(arch))
    with pytest.raises(ConfigError, match="image_resolution 224x224"):
        load_config(tmp_path)
    arch["processor"]["resize_with_pad"]["height"] = 224
    arch["processor"]["patch_size"] = 0
    (tmp_path / "arch.json").write_text(json.dumps(arch))
    with pytest.raises(ConfigError, match="patch_size must be a positive integer"):
        load_config(tmp_path)


def test_config_is_frozen() -> None:
    config: InternVLAConfig = load_config(CASE_A)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.chunk_size = 10  # type: ignore[misc]


def test_arch_json_token_count_must_agree(tmp_path: Path) -> None:
    shutil.copy(CASE_A / "config.json", tmp_path / "config.json")
    arch = json.loads((CASE_A / "arch.json").read_text())
    arch["qwena1_heads"]["middle_tokens_per_frame"] = 64
    (tmp_path / "arch.json").write_text(json.dumps(arch))
    with pytest.raises(ConfigError, match="middle_tokens_per_frame"):
        load_config(tmp_path)
