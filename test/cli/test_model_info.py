"""``internvla model info`` on the reference fixture."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from internvla_ros.cli.main import main

CASE_A = Path(__file__).resolve().parents[1] / "fixtures" / "internvla_a1_reference" / "case_a"


def test_model_info_reports_sizes_tokens_and_flops(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["model", "info", str(CASE_A)]) == 0
    out = capsys.readouterr().out
    assert "327 tensors" in out and "F32" in out
    assert "2,330,448" in out  # total parameters, README of the fixture
    for block, count in (("prefix", 246), ("generation", 96), ("state", 1), ("action", 50)):
        assert any(line.split()[:2] == [block, str(count)] for line in out.splitlines())
    assert "GFLOP" in out and "action step (x10)" in out


def test_model_info_checks_the_weights_strictly(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    for name in ("config.json", "arch.json", "model.safetensors"):
        shutil.copy(CASE_A / name, tmp_path / name)
    tensors = load_file(tmp_path / "model.safetensors")
    del tensors["model.state_proj.bias"]
    save_file(tensors, tmp_path / "model.safetensors")
    assert main(["model", "info", str(tmp_path)]) == 2
    assert "model.state_proj.bias" in capsys.readouterr().err
