"""Backends by name; a fallback happens only when allowed, only for an unavailable backend, and is reported."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from internvla_ros.backends import onnxruntime_backend
from internvla_ros.backends.errors import BackendError, BackendUnavailable, ExportMismatchError
from internvla_ros.backends.factory import BackendOptions, create_backend
from internvla_ros.backends.manifest import MANIFEST_FILE

from .conftest import THREADS, copy_dir


def make_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing() -> None:
        raise BackendUnavailable("onnxruntime: Python module 'onnxruntime' is not installed")

    monkeypatch.setattr(onnxruntime_backend, "ort_module", missing)


def test_no_fallback_unless_allowed(monkeypatch: pytest.MonkeyPatch, model_dir: Path, engine_dir: Path) -> None:
    make_unavailable(monkeypatch)
    options = BackendOptions(model_dir, engine_dir=engine_dir, threads=THREADS)
    with pytest.raises(BackendUnavailable, match=r"fallback to the next backend is off.*onnxruntime"):
        create_backend(["onnxruntime", "torch"], options)


def test_fallback_is_reported(monkeypatch: pytest.MonkeyPatch, model_dir: Path, engine_dir: Path,
                              caplog: pytest.LogCaptureFixture) -> None:
    make_unavailable(monkeypatch)
    options = BackendOptions(model_dir, engine_dir=engine_dir, threads=THREADS, fallback=True)
    choice = create_backend(["onnxruntime", "torch"], options)
    assert choice.backend.name == "torch"
    assert [name for name, _ in choice.skipped] == ["onnxruntime"]
    assert "not installed" in choice.skipped[0][1]
    assert "falling back to torch" in caplog.text


def test_last_unavailable_backend_raises(monkeypatch: pytest.MonkeyPatch, model_dir: Path, engine_dir: Path) -> None:
    make_unavailable(monkeypatch)
    options = BackendOptions(model_dir, engine_dir=engine_dir, fallback=True)
    with pytest.raises(BackendUnavailable, match="no requested backend can run here"):
        create_backend(["onnxruntime"], options)


def test_other_errors_never_fall_back(tmp_path: Path, model_dir: Path, engine_dir: Path) -> None:
    export = copy_dir(engine_dir, tmp_path / "export")
    manifest = json.loads((export / MANIFEST_FILE).read_text())
    manifest["source_files"]["model.safetensors"] = "0" * 64
    (export / MANIFEST_FILE).write_text(json.dumps(manifest))
    options = BackendOptions(model_dir, engine_dir=export, fallback=True)
    with pytest.raises(ExportMismatchError):
        create_backend(["onnxruntime", "torch"], options)


def test_unknown_names_and_dtypes(model_dir: Path) -> None:
    with pytest.raises(BackendError, match="unknown backend 'tvm'"):
        create_backend(["tvm"], BackendOptions(model_dir))
    with pytest.raises(BackendError, match="unknown dtype"):
        create_backend(["torch"], BackendOptions(model_dir, dtype="int8"))
    with pytest.raises(BackendError, match="no backend named"):
        create_backend([], BackendOptions(model_dir))
