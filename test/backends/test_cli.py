"""``internvla export``, ``internvla check-parity --backend onnxruntime`` and ``internvla bench model``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from internvla_ros.cli import bench_model, check_parity, export

from .conftest import copy_dir


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[str], str]:
    parser = argparse.ArgumentParser(prog="internvla")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for module in (check_parity, export, bench_model):
        module.register(subparsers)
    args = parser.parse_args(argv)
    code = int(args.func(args))
    captured = capsys.readouterr()
    return code, captured.out.splitlines(), captured.err


def test_check_parity_onnxruntime(capsys: pytest.CaptureFixture[str], model_dir: Path, export_cache: Path) -> None:
    if not (model_dir / "outputs.safetensors").is_file():
        pytest.skip(f"{model_dir} has no recorded outputs.safetensors to compare with")
    code, lines, err = run(capsys, "check-parity", str(model_dir), "--backend", "onnxruntime",
                           "--cache", str(export_cache))
    assert code == 0, "\n".join(lines) + err
    assert lines[0].startswith("backend: onnxruntime CPUExecutionProvider")
    assert any(line.startswith("actions ") and line.endswith(" ok") for line in lines)
    assert float(lines[-1].split("=", 1)[1]) <= check_parity.DEFAULT_ACTIONS_ATOL
    compared = {line.split()[0] for line in lines[1:-1] if line.endswith(" ok")}
    assert {"actions", "v_t_all", "x_t_all", "cosmos_latents", "foresight_latent_pred",
            "foresight_recon_images_view0"} <= compared
    assert not any("FAIL" in line for line in lines)


def test_export_errors(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run(capsys, "export", str(tmp_path / "missing"), "--out", str(tmp_path / "out"))
    assert code == 2 and err.startswith("ERROR: ") and "model.safetensors" in err


def test_stale_engine_dir_is_an_error(capsys: pytest.CaptureFixture[str], tmp_path: Path, model_dir: Path,
                                      engine_dir: Path) -> None:
    export_dir = copy_dir(engine_dir, tmp_path / "export")
    manifest = json.loads((export_dir / "manifest.json").read_text())
    manifest["source_files"]["config.json"] = "0" * 64
    (export_dir / "manifest.json").write_text(json.dumps(manifest))
    code, _, err = run(capsys, "bench", "model", "--model", str(model_dir), "--backend", "onnxruntime",
                       "--engine-dir", str(export_dir), "--repeats", "1")
    assert code == 2 and err.startswith("ERROR: ")
    assert "SHA-256 differs for config.json" in err and "internvla export" in err


def test_bench_compare(capsys: pytest.CaptureFixture[str], tmp_path: Path, model_dir: Path,
                       export_cache: Path) -> None:
    report = tmp_path / "bench.json"
    code, lines, err = run(capsys, "bench", "model", "--model", str(model_dir), "--backend",
                           "torch,torch-uncached,onnxruntime", "--compare", "--repeats", "1", "--warmup", "0",
                           "--cache", str(export_cache), "--json", str(report))
    assert code == 0, err
    assert "threads: 1" in lines[0]
    table = "\n".join(lines)
    for stage in ("vision", "prefix", bench_model.ENCODE_BOTH, bench_model.ENCODE_CURRENT, "generation",
                  "action_step_1", bench_model.TOTAL_BOTH, bench_model.TOTAL_PRE):
        assert stage in table
    data = json.loads(report.read_text())
    assert set(data["backends"]) == {"torch", "torch-uncached", "onnxruntime"}
    assert data["speedup_over"] == "torch"
    assert data["speedup"]["onnxruntime"][bench_model.TOTAL_BOTH] > 0
    assert bench_model.ENCODE_CURRENT in data["backends"]["onnxruntime"]["median_ms"]


def test_bench_reference_speedup(capsys: pytest.CaptureFixture[str], tmp_path: Path, model_dir: Path) -> None:
    report = tmp_path / "bench.json"
    code, lines, err = run(capsys, "bench", "model", "--model", str(model_dir), "--repeats", "1", "--warmup", "0",
                           "--reference-ms", "100000", "--json", str(report))
    assert code == 0, err
    assert "dtype: float32" in lines[0]
    data = json.loads(report.read_text())
    ours = data["backends"]["torch"]["median_ms"][bench_model.TOTAL_BOTH]
    assert data["speedup_over_reference"]["torch"] == pytest.approx(100000 / ours)
    assert any(line.startswith("speed-up over the reference") and "torch" in line for line in lines)
    code, _, err = run(capsys, "bench", "model", "--model", str(model_dir), "--reference-ms", "0")
    assert code == 2 and "--reference-ms" in err


def test_bench_bad_input(capsys: pytest.CaptureFixture[str], model_dir: Path) -> None:
    code, _, err = run(capsys, "bench", "model", "--model", str(model_dir), "--backend", "tvm")
    assert code == 2 and "unknown backend" in err


def test_synthetic_batch_has_the_model_layout(model_dir: Path) -> None:
    from internvla_ros.model.config import load_config

    config = load_config(model_dir)
    inputs, noise = bench_model.synthetic_batch(config)
    assert inputs.input_ids.shape == (1, config.prefix_len)
    assert int((inputs.input_ids == config.tokens.image).sum()) == config.n_views * config.image_tokens_per_view
    assert noise.shape == (1, config.chunk_size, config.max_action_dim)
