"""TensorRT: cache keys everywhere; engines and parity only where tensorrt and a CUDA GPU exist."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from internvla_ros.backends import tensorrt_backend
from internvla_ros.backends.errors import BackendUnavailable
from internvla_ros.backends.factory import BackendOptions, create_backend
from internvla_ros.cli.bench_model import load_batch
from internvla_ros.model.config import load_config

HAVE_TENSORRT = importlib.util.find_spec("tensorrt") is not None
HAVE_CUDA = torch.cuda.is_available()
NEEDS_GPU = pytest.mark.skipif(not (HAVE_TENSORRT and HAVE_CUDA),
                               reason=f"needs the tensorrt module (installed: {HAVE_TENSORRT}) and a CUDA GPU "
                                      f"(available: {HAVE_CUDA})")
ACTIONS_ATOL = 1e-3
"""TensorRT picks its own float32 kernels (TF32 is off in strongly typed float32 networks)."""


def test_engine_key_separates_gpu_version_and_model() -> None:
    key = tensorrt_backend.engine_key("NVIDIA H100", "10.9.0", "abc")
    assert key == tensorrt_backend.engine_key("NVIDIA H100", "10.9.0", "abc")
    assert len({key, tensorrt_backend.engine_key("NVIDIA L4", "10.9.0", "abc"),
                tensorrt_backend.engine_key("NVIDIA H100", "10.10.0", "abc"),
                tensorrt_backend.engine_key("NVIDIA H100", "10.9.0", "abd")}) == 4


@pytest.mark.skipif(HAVE_TENSORRT and HAVE_CUDA, reason="tensorrt and a CUDA GPU are present here")
def test_unavailable_names_what_is_missing(model_dir: Path, engine_dir: Path) -> None:
    missing = "'tensorrt' is not installed" if not HAVE_TENSORRT else "no CUDA device"
    with pytest.raises(BackendUnavailable, match=missing):
        create_backend(["tensorrt"], BackendOptions(model_dir, engine_dir=engine_dir))


@NEEDS_GPU
def test_engines_match_torch_and_are_cached(model_dir: Path, engine_dir: Path) -> None:
    options = BackendOptions(model_dir, engine_dir=engine_dir)
    backend = create_backend(["tensorrt"], options).backend
    inputs, noise, _ = load_batch(model_dir, load_config(model_dir))
    eager = create_backend(["torch"], options).backend
    actions = backend.run(inputs, noise).actions.cpu()
    assert (actions - eager.run(inputs, noise).actions).abs().max().item() <= ACTIONS_ATOL
    engines = list((engine_dir / tensorrt_backend.NAME).rglob("*.engine"))
    assert len(engines) == 8  # one per exported graph, guidance_step included
    stamps = {path: path.stat().st_mtime_ns for path in engines}
    create_backend(["tensorrt"], options)
    assert {path: path.stat().st_mtime_ns for path in engines} == stamps
