"""scripts/gpu_bench.sh: the CPU smoke run end to end, the refusal without CUDA, the manifest check and the
CUDA-graph argument trees (the GPU runs themselves need a CUDA machine)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from internvla_ros.cli.cuda_graphs import flatten, unflatten
from internvla_ros.cli.gpu_bench import MANIFEST
from internvla_ros.cli.gpu_bench_suite import END_TO_END, PREFIX_SUM, STEPS_SUM, released_shapes
from internvla_ros.model.attention import LayerKV
from internvla_ros.model.checkpoint import build_empty
from internvla_ros.model.config import internvla_a1_3b_config
from internvla_ros.model.errors import ModelError

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "gpu_bench.sh"


def run_script(*args: str, timeout_s: float = 900.0) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=timeout_s)


@pytest.mark.slow
def test_cpu_smoke_run_reports_every_stage(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    result = run_script("--device", "cpu", "--tiny", "--dtype", "float32", "--repeats", "2", "--warmup", "1",
                        "--out", str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(out.read_text())
    assert report["device"] == "cpu" and list(report["variants"]) == ["eager"]
    eager = report["variants"]["eager"]
    assert eager["runs"] == 2 and len(eager["end_to_end_ms"]) == 2
    median = eager["median_ms"]
    steps = [f"action_step_{i}" for i in range(1, 11)]
    for stage in ["vision", "prefix", "cosmos_encode", "generation", "context", *steps, END_TO_END]:
        assert median[stage] > 0, stage
    assert median[STEPS_SUM] == pytest.approx(sum(median[s] for s in steps))
    assert median[PREFIX_SUM] == pytest.approx(median["vision"] + median["prefix"])
    assert END_TO_END in result.stdout and f"wrote {out}" in result.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_without_cuda_it_exits_2_and_says_why(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    result = run_script("--out", str(out), timeout_s=300.0)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "no CUDA device" in result.stderr and "--device cpu --tiny" in result.stderr
    assert not out.exists()


def test_cuda_graphs_on_cpu_are_refused(tmp_path: Path) -> None:
    result = run_script("--device", "cpu", "--tiny", "--variants", "eager,cuda_graphs", "--out",
                        str(tmp_path / "x.json"), timeout_s=300.0)
    assert result.returncode == 2 and "cuda_graphs needs --device cuda" in result.stderr


def test_the_3b_architecture_is_checked_against_the_release_manifest(tmp_path: Path) -> None:
    model = build_empty(internvla_a1_3b_config())
    manifest = json.loads(MANIFEST.read_text())
    assert len(released_shapes(model, MANIFEST)) == manifest["num_tensors"]
    entry = manifest["tensors"][0]
    entry["shape"] = [entry["shape"][0] + 1, *entry["shape"][1:]]
    changed = tmp_path / "manifest.json"
    changed.write_text(json.dumps(manifest))
    with pytest.raises(ModelError, match=r"differs from .* at 1 keys") as error:
        released_shapes(model, changed)
    assert entry["key"] in str(error.value)


@dataclass(frozen=True)
class Block:
    embeds: torch.Tensor
    layers: tuple[LayerKV, ...]
    note: str


def test_stage_arguments_flatten_to_tensors_and_rebuild_with_new_ones() -> None:
    tree = (Block(torch.zeros(2, 3), (LayerKV(torch.ones(1), torch.ones(2)),), "prefix"), {"t": torch.zeros(4)}, 7)
    leaves, layout = flatten(tree)
    assert [tuple(t.shape) for t in leaves] == [(2, 3), (1,), (2,), (4,)]
    fresh = [torch.full_like(t, float(i)) for i, t in enumerate(leaves)]
    rebuilt = unflatten(layout, fresh)
    assert isinstance(rebuilt[0], Block) and isinstance(rebuilt[0].layers[0], LayerKV)
    assert rebuilt[0].note == "prefix" and rebuilt[2] == 7 and rebuilt[1]["t"] is fresh[3]
    assert rebuilt[0].layers[0].values is fresh[2]
    _, other_layout = flatten((Block(torch.zeros(2, 4), (), "prefix"), {}, 7))
    assert repr(other_layout) != repr(layout)  # another shape or structure: another capture
