"""An export is refused when it does not belong to the model it is loaded for, or is damaged."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from internvla_ros.backends import graphs
from internvla_ros.backends.errors import BackendError, ExportMismatchError
from internvla_ros.backends.export import OPSET
from internvla_ros.backends.manifest import FORMAT_VERSION, MANIFEST_FILE, Manifest, load_export
from internvla_ros.backends.onnxruntime_backend import create, load_graph
from internvla_ros.model.config import load_config

from .conftest import copy_dir


def flip_last_byte(path: Path) -> None:
    """Changes one weight value and keeps the safetensors file readable."""
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))


def rewrite_manifest(engine_dir: Path, **changes: object) -> None:
    path = engine_dir / MANIFEST_FILE
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def test_manifest_describes_the_graphs(engine_dir: Path, model_dir: Path) -> None:
    manifest = Manifest.read(engine_dir)
    config = load_config(model_dir)
    assert set(manifest.graphs) == set(graphs.GRAPH_NAMES)
    assert manifest.opset == OPSET and manifest.format == FORMAT_VERSION and manifest.dtype == "float32"
    assert {"torch", "onnx", "onnxscript"} <= set(manifest.versions)
    assert {"model.safetensors", "config.json"} <= set(manifest.source_files)
    assert manifest.layout["prefix_len"] == config.prefix_len
    assert manifest.layout["generation_len"] == config.generation_len
    assert manifest.layout["suffix_len"] == config.suffix_len
    step = manifest.graphs[graphs.ACTION_STEP]
    assert [t.name for t in step.inputs] == ["context_keys", "context_values", "context_valid", "context_positions",
                                             "state", "x_t", "time"]
    keys = step.inputs[0]
    assert keys.shape == (config.und.num_layers, 1, config.und.num_kv_heads,
                          config.prefix_len + config.generation_len, config.und.head_dim)
    assert [(t.name, t.shape, t.dtype) for t in step.outputs] == [
        ("v_t", (1, config.chunk_size, config.max_action_dim), "float32")]
    for spec in manifest.graphs.values():
        assert (engine_dir / spec.file).stat().st_size == spec.bytes


def test_stale_export_is_refused(tmp_path: Path, model_dir: Path, engine_dir: Path) -> None:
    model = copy_dir(model_dir, tmp_path / "model")
    export = copy_dir(engine_dir, tmp_path / "export")
    rewrite_manifest(export, source_dir=str(model.resolve()))
    load_export(export, model)  # same files: accepted
    flip_last_byte(model / "model.safetensors")
    with pytest.raises(ExportMismatchError, match=r"is stale.*model\.safetensors.*internvla export"):
        load_export(export, model)


def test_export_of_another_model_is_refused(tmp_path: Path, model_dir: Path, engine_dir: Path) -> None:
    other = copy_dir(model_dir, tmp_path / "other")
    config = json.loads((other / "config.json").read_text())
    config["n_action_steps"] = config.get("n_action_steps", 50) - 1
    (other / "config.json").write_text(json.dumps(config))
    with pytest.raises(ExportMismatchError, match=r"made from another model.*config\.json"):
        create(other, engine_dir)


def test_damaged_graph_is_refused(tmp_path: Path, model_dir: Path, engine_dir: Path) -> None:
    export = copy_dir(engine_dir, tmp_path / "export")
    vision = export / f"{graphs.VISION}.onnx"
    size = vision.stat().st_size
    vision.write_bytes(b"\0" * size)  # same size: only loading it can tell
    with pytest.raises(BackendError, match=r"vision\.onnx: ONNX Runtime cannot load this graph"):
        create(model_dir, export)
    vision.write_bytes(b"\0" * (size // 2))
    with pytest.raises(ExportMismatchError, match=r"vision\.onnx.*manifest says"):
        create(model_dir, export)
    with pytest.raises(BackendError, match="cannot load"):
        load_graph(tmp_path / "missing.onnx", ["CPUExecutionProvider"], 1)


def test_missing_or_foreign_manifest_is_refused(tmp_path: Path, engine_dir: Path) -> None:
    with pytest.raises(BackendError, match=r"no export here.*internvla export"):
        Manifest.read(tmp_path)
    export = copy_dir(engine_dir, tmp_path / "export")
    rewrite_manifest(export, format=FORMAT_VERSION + 1)
    with pytest.raises(ExportMismatchError, match="export format"):
        Manifest.read(export)
    (export / MANIFEST_FILE).write_text("{")
    with pytest.raises(BackendError, match="not a valid export manifest"):
        Manifest.read(export)
