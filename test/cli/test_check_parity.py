"""``internvla check-parity`` on the reference fixture, on a perturbed copy, and on bad input."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from internvla_ros.cli.check_parity import DEFAULT_ACTIONS_ATOL
from internvla_ros.cli.main import main

torch.set_num_threads(1)

CASE_A = Path(__file__).resolve().parents[1] / "fixtures" / "internvla_a1_reference" / "case_a"
PERTURBATION = 1e-2
"""Added to action_out_proj.bias: far above the tolerance, far below a layout error."""


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[str], str]:
    code = main(["check-parity", *argv])
    captured = capsys.readouterr()
    return code, captured.out.splitlines(), captured.err


@pytest.fixture
def fixture_copy(tmp_path: Path) -> Path:
    for path in CASE_A.iterdir():
        if path.is_file():
            shutil.copy(path, tmp_path / path.name)
    return tmp_path


def test_fixture_passes(capsys: pytest.CaptureFixture[str]) -> None:
    code, lines, err = run(capsys, str(CASE_A))
    assert code == 0, "\n".join(lines) + err
    assert lines[-1].startswith("max_abs_diff=")
    assert float(lines[-1].split("=", 1)[1]) <= DEFAULT_ACTIONS_ATOL
    compared = {line.split()[0] for line in lines[:-1] if line.endswith(" ok")}
    assert {"actions", "prefix_out", "middle_out", "cosmos_latents", "v_t_all", "foresight_latent_pred",
            "prefix_position_ids", "middle_position_ids"} <= compared
    assert not any("FAIL" in line for line in lines)


def test_compiled_torch_passes_within_the_compiled_tolerances(capsys: pytest.CaptureFixture[str]) -> None:
    """``--compile`` checks what ``bench model --compile`` times: torch.compile's fused Cosmos kernels move the
    float32 latents by ~1e-4 (the tolerances of every compiled backend), the actions stay within 1e-4."""
    code, lines, err = run(capsys, str(CASE_A), "--compile")
    assert code == 0, "\n".join(lines) + err
    assert lines[0].startswith("backend: ") and "torch.compile" in lines[0]
    compared = {line.split()[0] for line in lines[1:-1] if line.endswith(" ok")}
    assert {"actions", "cosmos_latents", "middle_out", "foresight_latent_pred", "v_t_all"} <= compared
    assert float(lines[-1].split("=", 1)[1]) <= DEFAULT_ACTIONS_ATOL


def test_perturbed_weights_fail(capsys: pytest.CaptureFixture[str], fixture_copy: Path) -> None:
    weights = fixture_copy / "model.safetensors"
    tensors = load_file(weights)
    tensors["model.action_out_proj.bias"] += PERTURBATION
    save_file(tensors, weights)
    code, lines, _ = run(capsys, str(fixture_copy))
    assert code == 1
    assert any(line.startswith("actions ") and line.endswith("FAIL") for line in lines)
    assert float(lines[-1].split("=", 1)[1]) > DEFAULT_ACTIONS_ATOL


def test_atol_is_applied_to_actions(capsys: pytest.CaptureFixture[str]) -> None:
    code, lines, _ = run(capsys, str(CASE_A), "--atol", "1e-9")
    assert code == 1
    assert next(line for line in lines if line.startswith("actions ")).endswith("FAIL")


def test_bad_input_is_an_error(capsys: pytest.CaptureFixture[str], fixture_copy: Path, tmp_path: Path) -> None:
    code, _, err = run(capsys, str(tmp_path / "missing"))
    assert code == 2 and err.startswith("ERROR: ")
    (fixture_copy / "inputs.safetensors").unlink()
    code, _, err = run(capsys, str(fixture_copy))
    assert code == 2 and "inputs.safetensors" in err
    code, _, err = run(capsys, str(CASE_A), "--atol", "-1")
    assert code == 2 and err.startswith("ERROR: ")
