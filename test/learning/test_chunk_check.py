"""`internvla model check-chunks`: sampled chunks against recorded ones, with and without an executed prefix."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from internvla_ros.cli import train as train_cli
from internvla_ros.cli.main import main
from internvla_ros.learning.attention_check import KEY_GROUPS, ActionAttention, format_attention
from internvla_ros.learning.chunk_check import ChunkCheckError, ChunkCheckOptions, check_chunks, chunk_report
from internvla_ros.learning.dataset_reader import open_dataset
from internvla_ros.learning.training import TrainingOptions
from internvla_ros.learning.training_data import TrainingSamples
from internvla_ros.model.attention import (
    ACTION_BLOCK,
    GENERATION_BLOCK,
    PREFIX_BLOCK,
    STATE_BLOCK,
    AttentionWeights,
    record_attention,
)
from internvla_ros.model.checkpoint import STATS_FILE, load_checkpoint
from internvla_ros.model.normalization import NormalizationStats
from internvla_ros.model.pipeline import InferencePipeline
from internvla_ros.model.preprocessing import load_tokenizer
from internvla_ros.model.torch_stages import TorchStages
from test.learning.conftest import TINY_MODEL

OPTIONS = TrainingOptions(steps=1, batch_size=2, lr=2e-3, seed=7, save_every=100, device="cpu")
CHECK = ChunkCheckOptions(samples=6, batch_size=4, seed=3)
DELAY = 6


@pytest.fixture(scope="module")
def models(dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Checkpoints holding the dataset's statistics: a plain one and one trained with training-time RTC."""
    root = tmp_path_factory.mktemp("check")
    out = {"plain": root / "plain", "rtc": root / "rtc"}
    assert train_cli.command(dataset, TINY_MODEL, out["plain"], OPTIONS, progress=False) == 0
    assert train_cli.command(dataset, TINY_MODEL, out["rtc"], replace(OPTIONS, rtc_max_delay=8), progress=False) == 0
    return out


def test_report_measures_error_per_step_and_roughness_against_the_recording() -> None:
    recorded = np.zeros((2, 5, 1))
    recorded[:, :, 0] = [0.0, 1.0, 4.0, 9.0, 16.0]  # second differences 2
    predicted = recorded.copy()
    predicted[:, 4, 0] += 2.0  # the last step off by 2: its second difference 4 instead of 2
    report = chunk_report(predicted, recorded)
    assert report["rmse_by_step"] == [0.0, 0.0, 0.0, 0.0, 2.0]
    assert report["rmse"] == pytest.approx(np.sqrt(4 / 5))
    assert report["roughness"] == pytest.approx((2 + 2 + 4) / 3 / 2)
    last = chunk_report(predicted, recorded, prefix_delay=4)
    assert last["rmse"] == pytest.approx(2.0) and last["roughness"] is None


def test_per_joint_error_is_in_the_joints_own_unit_and_leaves_out_joints_that_never_move() -> None:
    recorded = np.zeros((2, 10, 3))
    recorded[:, :, 0] = np.linspace(0.0, 1.0, 10)  # moves; dim 1 never moves; dim 2 moves
    recorded[1, :, 2] = 0.5
    predicted = recorded.copy()
    predicted[:, 4, 0] += 0.1  # step 5 of the first joint off by 0.1 std
    predicted[:, :, 1] += 0.2  # a still joint predicted off: in the averages, not in the per-joint table
    report = chunk_report(predicted, recorded, joint_scale={"shoulder": 2.0, "wrist": 1.0, "gripper": 1.0})
    assert set(report["rmse_by_joint"]) == {"shoulder", "gripper"}
    assert report["rmse_by_joint"]["shoulder"] == {"1": 0.0, "5": pytest.approx(0.2), "10": 0.0}
    assert report["rmse_by_joint"]["gripper"]["5"] == 0.0
    assert chunk_report(predicted, recorded)["rmse_by_joint"] == {}

def test_a_prefix_is_given_clean_to_an_rtc_model_and_guides_a_plain_one(models: dict[str, Path], dataset: Path,
                                                                       tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    rtc = check_chunks(models["rtc"], dataset, cache, replace(CHECK, prefix_delay=DELAY))
    assert rtc["prefix"] == "clean (training-time RTC)"
    assert rtc["rmse_by_step"][:DELAY] == [0.0] * DELAY and rtc["rmse_by_step"][DELAY] > 0

    free = check_chunks(models["plain"], dataset, cache, CHECK)
    guided = check_chunks(models["plain"], dataset, cache, replace(CHECK, prefix_delay=DELAY))
    assert guided["prefix"].startswith("guided") and free["prefix"] == "none"
    assert len(free["rmse_by_step"]) == 50 and free["samples"] == CHECK.samples
    # same samples and noise: guidance pulls the first steps towards the recorded ones
    assert np.mean(guided["rmse_by_step"][:DELAY]) < 0.5 * np.mean(free["rmse_by_step"][:DELAY])


def test_noise_scale_zero_is_deterministic_and_differs_from_noisy_sampling(models: dict[str, Path], dataset: Path,
                                                                        tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    a = check_chunks(models["plain"], dataset, cache, replace(CHECK, noise_scale=0.0))
    b = check_chunks(models["plain"], dataset, cache, replace(CHECK, noise_scale=1.0))
    assert a["rmse_by_step"] != b["rmse_by_step"]
    assert a == check_chunks(models["plain"], dataset, cache, replace(CHECK, noise_scale=0.0))


def test_cli_writes_json_and_refuses_a_prefix_as_long_as_the_chunk(models: dict[str, Path], dataset: Path,
                                                                   tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture) -> None:
    args = ["model", "check-chunks", str(models["plain"]), "--dataset", str(dataset), "--samples", "2",
            "--cache", str(tmp_path / "cache")]
    assert main([*args, "--json", str(tmp_path / "r.json")]) == 0
    assert json.loads((tmp_path / "r.json").read_text())["samples"] == 2
    assert "rmse (action std units)" in capsys.readouterr().out
    assert main([*args, "--prefix-delay", "50"]) == 2
    assert "--prefix-delay 50 must lie in [0, 49]" in capsys.readouterr().err


def test_another_instruction_changes_the_chunks_and_the_episodes_own_is_refused(models: dict[str, Path],
                                                                                dataset: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    base = check_chunks(models["plain"], dataset, cache, replace(CHECK, noise_scale=0.0))
    other = check_chunks(models["plain"], dataset, cache,
                         replace(CHECK, noise_scale=0.0, instruction="stack the blue cubes on the shelf"))
    assert other["instruction_samples"] == CHECK.samples
    assert 0 < other["instruction_effect"] <= other["instruction_effect_max"]
    assert {k: v for k, v in other.items() if not k.startswith("instruction")} == base  # the rest is unchanged
    own = open_dataset(dataset).episodes[0].task
    with pytest.raises(ChunkCheckError, match="already has the instruction"):
        check_chunks(models["plain"], dataset, cache, replace(CHECK, instruction=own))


def test_recorded_attention_is_the_layers_own_and_leaves_the_chunks_unchanged(models: dict[str, Path],
                                                                              dataset: Path, tmp_path: Path) -> None:
    checkpoint = load_checkpoint(models["plain"])
    config, model = checkpoint.config, checkpoint.model.eval()
    data = open_dataset(dataset)
    stats = NormalizationStats.load(models["plain"] / STATS_FILE, data.schema.robot_type)
    samples = TrainingSamples(data, config, stats, load_tokenizer(None), tmp_path / "cache")
    batch = samples.batch([0, 5, 11])
    pipeline = InferencePipeline(TorchStages(model), config)
    noise = torch.randn(3, config.chunk_size, config.max_action_dim, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        plain = pipeline.run(batch.inputs, noise).actions
        with record_attention() as records:
            recorded = pipeline.run(batch.inputs, noise).actions
    assert torch.equal(plain, recorded)
    layers = config.und.num_layers
    assert len(records) == layers * (2 + config.num_inference_steps)  # prefix, foresight, each denoising step
    for record in records:
        assert torch.allclose(record.weights.sum(-1), torch.ones(()), atol=1e-5)
        later = record.key_blocks[None, :] > record.query_blocks[:, None]
        assert torch.all(record.weights[:, :, later] == 0)  # no query reads a later block
        if bool((record.query_blocks >= STATE_BLOCK).all()):  # an action pass: no padding key is read
            padding = ~record.key_valid.bool()  # (B, Lk): the prompt's padding, the missing camera
            assert bool(padding.any()) and float(record.weights.transpose(1, 3)[padding].max()) < 1e-6
    attention = ActionAttention(config.tokenizer_max_length)
    attention.add(records)
    report = attention.report()
    assert set(report) == {"first", "last"} and set(report["first"]) == {str(i + 1) for i in range(layers)}
    for step in report.values():
        for groups in step.values():
            shares = np.sum([groups[g] for g in KEY_GROUPS], axis=0)
            even = np.sum([groups[f"even_{g}"] for g in KEY_GROUPS], axis=0)
            assert np.allclose(shares, 1.0, atol=1e-3) and np.allclose(even, 1.0, atol=1e-3)
            assert all(v > 0 for v in groups["even_prompt"])
    with pytest.raises(ValueError, match="no action pass"):
        ActionAttention(config.tokenizer_max_length).add(records[:layers])


def test_action_attention_splits_the_mass_by_key_group() -> None:
    blocks = torch.tensor([PREFIX_BLOCK] * 4 + [GENERATION_BLOCK] * 2 + [STATE_BLOCK] + [ACTION_BLOCK] * 2)
    weights = torch.zeros(1, 2, 3, 9)  # queries: the state token and two action tokens
    weights[0, 0, 1:, 3] = 0.75  # head 1: the last prefix key (the prompt) ...
    weights[0, 0, 1:, 4] = 0.25  # ... and a foresight key
    weights[0, 1, 1:, 0] = 1.0  # head 2: a camera key
    weights[0, :, 0, 6] = 1.0  # the state query: not counted
    valid = torch.ones(1, 9)
    valid[0, 2] = 0  # a padded prompt key: the prompt's even share is 1 of 8 valid keys
    record = AttentionWeights(0, blocks[6:], blocks, valid, weights)
    attention = ActionAttention(prompt_tokens=2)
    attention.add([record])
    first = attention.report()["first"]["1"]
    assert first["prompt"] == [0.75, 0.0] and first["foresight"] == [0.25, 0.0] and first["camera"] == [0.0, 1.0]
    assert first["state"] == [0.0, 0.0] and first["action"] == [0.0, 0.0]
    assert first["even_prompt"] == [0.125, 0.125] and first["even_camera"] == [0.25, 0.25]
    assert "first step, layer 1: camera 0.500 [0.250]  prompt 0.375 [0.125]" in format_attention(attention.report())


def test_cli_reports_attention_and_refuses_it_with_a_prefix(models: dict[str, Path], dataset: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture) -> None:
    args = ["model", "check-chunks", str(models["plain"]), "--dataset", str(dataset), "--samples", "3",
            "--cache", str(tmp_path / "cache"), "--attention"]
    assert main([*args, "--json", str(tmp_path / "r.json")]) == 0
    assert set(json.loads((tmp_path / "r.json").read_text())["attention"]) == {"first", "last"}
    assert "attention of the action tokens" in capsys.readouterr().out
    assert main([*args, "--prefix-delay", "4"]) == 2
    assert "--attention is measured on plain sampling" in capsys.readouterr().err
