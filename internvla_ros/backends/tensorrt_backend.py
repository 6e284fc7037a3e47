"""TensorRT backend: engines built from the exported ONNX graphs, run with CUDA tensors from torch.

Engines and the timing cache are kept under ``ENGINE_DIR/tensorrt/<key>``, the key hashing the GPU
name, the TensorRT version and the export's model key, so a new driver stack, another GPU or a
changed model never reuses an engine. ``tensorrt`` is imported only when this backend is created.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from internvla_ros.backends.errors import BackendError, BackendUnavailable
from internvla_ros.backends.graph_stages import graph_pipeline
from internvla_ros.backends.manifest import Manifest, load_export
from internvla_ros.model.config import load_config
from internvla_ros.model.errors import ModelError
from internvla_ros.model.pipeline import InferencePipeline

NAME = "tensorrt"
TIMING_CACHE = "timing.cache"


def import_tensorrt() -> Any:
    """The ``tensorrt`` module and a CUDA device, or BackendUnavailable naming what is missing."""
    try:
        import tensorrt
    except ImportError as err:
        raise BackendUnavailable(
            f"{NAME}: Python module 'tensorrt' is not installed ({err}); install the TensorRT wheels "
            "matching your CUDA (pip install tensorrt-cu12) on a GPU machine") from err
    if not torch.cuda.is_available():
        raise BackendUnavailable(f"{NAME}: no CUDA device visible to torch (torch {torch.__version__}, "
                                 f"built for CUDA {torch.version.cuda}); TensorRT needs an NVIDIA GPU")
    return tensorrt


def engine_key(gpu_name: str, tensorrt_version: str, model_key: str) -> str:
    text = json.dumps({"gpu": gpu_name, "tensorrt": tensorrt_version, "model": model_key}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def build_engine(trt: Any, onnx_path: Path, timing_cache: Path) -> bytes:
    """Serialized engine of one ONNX graph (strongly typed: precision follows the exported dtypes)."""
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BackendError(f"{onnx_path}: TensorRT cannot parse this graph ({errors})")
    config = builder.create_builder_config()
    cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise BackendError(f"{onnx_path}: TensorRT failed to build an engine (see its log above)")
    timing_cache.write_bytes(memoryview(config.get_timing_cache().serialize()))
    return bytes(serialized)


class TensorRTRunner:
    """Executes engines on one CUDA stream; arrays are torch CUDA tensors."""

    def __init__(self, trt: Any, engines: dict[str, bytes], manifest: Manifest) -> None:
        self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engines = {name: self.runtime.deserialize_cuda_engine(data) for name, data in engines.items()}
        self.contexts = {name: engine.create_execution_context() for name, engine in self.engines.items()}
        self.outputs = {name: spec.outputs for name, spec in manifest.graphs.items()}
        self.stream = torch.cuda.Stream()
        self.device = torch.device("cuda")

    def run(self, graph: str, feeds: dict[str, Any]) -> list[Any]:
        context = self.contexts[graph]
        keep = {name: value.contiguous() for name, value in feeds.items()}
        for name, value in keep.items():
            context.set_tensor_address(name, value.data_ptr())
        outputs = [torch.empty(spec.shape, dtype=getattr(torch, spec.dtype), device=self.device)
                   for spec in self.outputs[graph]]
        for spec, value in zip(self.outputs[graph], outputs, strict=True):
            context.set_tensor_address(spec.name, value.data_ptr())
        self.stream.wait_stream(torch.cuda.current_stream())
        if not context.execute_async_v3(self.stream.cuda_stream):
            raise BackendError(f"TensorRT engine {graph!r} failed to execute")
        torch.cuda.current_stream().wait_stream(self.stream)
        return outputs

    def to_device(self, array: np.ndarray) -> Any:
        return torch.from_numpy(np.ascontiguousarray(array)).to(self.device)

    def to_host(self, value: Any) -> np.ndarray:
        return value.cpu().numpy()

    def concat(self, parts: list[Any], axis: int) -> Any:
        return torch.cat(parts, dim=axis)


def create(model_dir: Path, engine_dir: Path) -> InferencePipeline:
    """The TensorRT backend over the export in ``engine_dir``; engines are built on first use and cached."""
    trt = import_tensorrt()
    manifest = load_export(engine_dir, model_dir)
    try:
        config = load_config(model_dir)
    except ModelError as err:
        raise BackendError(str(err)) from err
    gpu = torch.cuda.get_device_name()
    cache_dir = engine_dir / NAME / engine_key(gpu, trt.__version__, manifest.key)
    cache_dir.mkdir(parents=True, exist_ok=True)
    engines = {}
    for name, spec in manifest.graphs.items():
        path = cache_dir / f"{name}.engine"
        if not path.is_file():
            path.write_bytes(build_engine(trt, engine_dir / spec.file, cache_dir / TIMING_CACHE))
        engines[name] = path.read_bytes()
    runner = TensorRTRunner(trt, engines, manifest)
    return graph_pipeline(NAME, f"{NAME} {trt.__version__} on {gpu}, {manifest.dtype}", config, runner)
