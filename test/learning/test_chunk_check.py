"""`internvla model check-chunks`: sampled chunks against recorded ones, with and without an executed prefix."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from internvla_ros.cli import train as train_cli
from internvla_ros.cli.main import main
from internvla_ros.learning.chunk_check import ChunkCheckError, ChunkCheckOptions, check_chunks, chunk_report
from internvla_ros.learning.dataset_reader import open_dataset
from internvla_ros.learning.training import TrainingOptions
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
