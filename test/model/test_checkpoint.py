"""Strict checkpoint loading and the released 3B layout."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from internvla_ros.model.checkpoint import TIED_KEYS, WEIGHTS_FILE, build_empty, load_checkpoint
from internvla_ros.model.config import internvla_a1_3b_config
from internvla_ros.model.cost import parameter_groups
from internvla_ros.model.errors import CheckpointError

torch.set_num_threads(1)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
CASE_A = FIXTURES / "internvla_a1_reference" / "case_a"
MANIFEST_3B = FIXTURES / "internvla_a1_3b_manifest.json"
EMBED_KEY, LM_HEAD_KEY = next(iter(TIED_KEYS.items()))


@pytest.fixture
def checkpoint_dir(tmp_path: Path) -> Path:
    """A writable copy of the fixture checkpoint (without the large parity tensors)."""
    for name in ("config.json", "arch.json", "stats.json", WEIGHTS_FILE):
        shutil.copy(CASE_A / name, tmp_path / name)
    return tmp_path


def rewrite(directory: Path, edit) -> None:
    tensors = load_file(directory / WEIGHTS_FILE)
    edit(tensors)
    save_file(tensors, directory / WEIGHTS_FILE)


def test_3b_layout_matches_the_released_manifest() -> None:
    manifest = json.loads(MANIFEST_3B.read_text())
    expected = {entry["key"]: tuple(entry["shape"]) for entry in manifest["tensors"]}
    model = build_empty(internvla_a1_3b_config())
    ours = {name: tuple(t.shape) for name, t in model.state_dict().items() if name not in TIED_KEYS}
    assert sorted(set(expected) - set(ours)) == []
    assert sorted(set(ours) - set(expected)) == []
    assert {k: v for k, v in ours.items() if expected[k] != v} == {}
    assert len(ours) == manifest["num_tensors"]
    assert sum(parameter_groups(model).values()) == manifest["total_params"]
    by_component = manifest["params_by_component"]
    groups = parameter_groups(model)
    assert groups["gen expert"] == by_component["gen_expert"]
    assert groups["act expert"] == by_component["act_expert"]
    assert groups["Cosmos encoder"] == by_component["cosmos._enc_model"]
    assert groups["Cosmos decoder"] == by_component["cosmos._dec_model"]
    assert groups["ViT DeepStack mergers (unused)"] == by_component[
        "und_expert.visual.deepstack_merger_list (unused at inference)"]


def test_fixture_loads_with_the_tied_embedding() -> None:
    checkpoint = load_checkpoint(CASE_A)
    model = checkpoint.model
    und = model.experts.und_expert
    assert und.model.language_model.embed_tokens.weight is und.lm_head.weight
    stored = load_file(CASE_A / WEIGHTS_FILE)
    state = model.state_dict()
    assert all(torch.equal(state[name], tensor) for name, tensor in stored.items())
    assert not model.training
    assert checkpoint.stats_path == CASE_A / "stats.json"


def test_missing_extra_and_misshaped_tensors_are_all_named(checkpoint_dir: Path) -> None:
    def edit(tensors: dict[str, torch.Tensor]) -> None:
        del tensors["model.state_proj.bias"]
        tensors["model.surplus.weight"] = torch.zeros(2)
        tensors["model.action_out_proj.weight"] = torch.zeros(32, 65)

    rewrite(checkpoint_dir, edit)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(checkpoint_dir)
    message = str(err.value)
    assert WEIGHTS_FILE in message
    assert "missing: model.state_proj.bias" in message
    assert "unexpected: model.surplus.weight" in message
    assert "model.action_out_proj.weight (32, 65) != (32, 64)" in message


def test_stored_embedding_must_equal_its_tied_twin(checkpoint_dir: Path) -> None:
    rewrite(checkpoint_dir, lambda t: t.update({EMBED_KEY: t[LM_HEAD_KEY].clone()}))
    load_checkpoint(checkpoint_dir)  # both stored and equal: accepted
    rewrite(checkpoint_dir, lambda t: t.update({EMBED_KEY: t[LM_HEAD_KEY] + 1}))
    with pytest.raises(CheckpointError, match="tied"):
        load_checkpoint(checkpoint_dir)


def test_lm_head_is_required(checkpoint_dir: Path) -> None:
    rewrite(checkpoint_dir, lambda t: t.pop(LM_HEAD_KEY))
    with pytest.raises(CheckpointError, match=r"missing: model\.qwen3_vl_with_expert\.und_expert\.lm_head\.weight"):
        load_checkpoint(checkpoint_dir)


def test_truncated_weights_name_the_file(checkpoint_dir: Path) -> None:
    path = checkpoint_dir / WEIGHTS_FILE
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"model\.safetensors"):
        load_checkpoint(checkpoint_dir)
    path.write_bytes(b"\x08garbage")
    with pytest.raises(CheckpointError, match=r"model\.safetensors"):
        load_checkpoint(checkpoint_dir)


@pytest.mark.parametrize("name", [WEIGHTS_FILE, "config.json"])
def test_missing_files_are_named(checkpoint_dir: Path, name: str) -> None:
    (checkpoint_dir / name).unlink()
    with pytest.raises(CheckpointError, match=re.escape(f"{name}: file not found")):
        load_checkpoint(checkpoint_dir)


def test_not_a_directory(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not a directory"):
        load_checkpoint(tmp_path / "nothing")
