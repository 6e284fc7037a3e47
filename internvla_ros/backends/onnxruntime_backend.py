"""ONNX Runtime backend: one InferenceSession per exported graph, the best execution provider available."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from internvla_ros.backends.errors import BackendError, BackendUnavailable
from internvla_ros.backends.graph_stages import graph_pipeline
from internvla_ros.backends.manifest import Manifest, load_export
from internvla_ros.model.config import load_config
from internvla_ros.model.errors import ModelError
from internvla_ros.model.pipeline import InferencePipeline

NAME = "onnxruntime"
PROVIDER_PREFERENCE = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


def ort_module() -> Any:
    """The ``onnxruntime`` module, or BackendUnavailable naming how to install it."""
    try:
        import onnxruntime
    except ImportError as err:
        raise BackendUnavailable(f"{NAME}: Python module 'onnxruntime' is not installed ({err}); "
                                 "pip install onnxruntime (or onnxruntime-gpu)") from err
    return onnxruntime


def choose_providers(available: list[str]) -> list[str]:
    """The preferred providers this build of ONNX Runtime has, best first."""
    chosen = [p for p in PROVIDER_PREFERENCE if p in available]
    if not chosen:
        raise BackendUnavailable(f"{NAME}: none of {', '.join(PROVIDER_PREFERENCE)} is available "
                                 f"(this build offers {', '.join(available) or 'nothing'})")
    return chosen


def available_providers() -> list[str]:
    """The providers to run with here, best first; BackendUnavailable without onnxruntime or a usable provider."""
    return choose_providers(ort_module().get_available_providers())


def provider_options(providers: list[str], engine_dir: Path) -> list[str | tuple[str, dict[str, Any]]]:
    """TensorRT through ONNX Runtime keeps its engines next to the export instead of rebuilding them."""
    cache = str(engine_dir / "onnxruntime_tensorrt")
    tensorrt = {"trt_engine_cache_enable": True, "trt_engine_cache_path": cache, "trt_timing_cache_enable": True,
                "trt_timing_cache_path": cache}
    return [(p, tensorrt) if p == "TensorrtExecutionProvider" else p for p in providers]


def load_graph(path: Path, providers: list[str | tuple[str, dict[str, Any]]], threads: int) -> Any:
    """One graph file loaded for inference, or a BackendError naming the file and the fix."""
    ort = ort_module()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    # Idle pool threads would otherwise spin and steal the cores from whatever runs next (torch, ROS).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(str(path), options, providers=providers)
    except Exception as err:  # onnxruntime's pybind errors share no base class of their own
        raise BackendError(f"{path}: ONNX Runtime cannot load this graph ({type(err).__name__}: {err}); "
                           f"re-export with `internvla export MODEL_DIR --out {path.parent}`") from err


class OrtRunner:
    """Runs the manifest's graphs with numpy arrays on the host."""

    def __init__(self, engine_dir: Path, manifest: Manifest, providers: list[str], threads: int) -> None:
        options = provider_options(providers, engine_dir)
        self.loaded = {name: load_graph(engine_dir / spec.file, options, threads)
                       for name, spec in manifest.graphs.items()}
        self.outputs = {name: [o.name for o in spec.outputs] for name, spec in manifest.graphs.items()}

    @property
    def providers(self) -> dict[str, str]:
        """Graph -> the provider that runs it (the first one it accepted)."""
        return {name: graph.get_providers()[0] for name, graph in self.loaded.items()}

    def run(self, graph: str, feeds: dict[str, Any]) -> list[Any]:
        return self.loaded[graph].run(self.outputs[graph], feeds)

    def to_device(self, array: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(array)

    def to_host(self, value: np.ndarray) -> np.ndarray:
        return value

    def concat(self, parts: list[np.ndarray], axis: int) -> np.ndarray:
        return np.concatenate(parts, axis=axis)


def create(model_dir: Path, engine_dir: Path, threads: int = 1, batch_workers: int = 1) -> InferencePipeline:
    """The ONNX Runtime backend over the export in ``engine_dir`` of ``model_dir``.

    ``batch_workers``: a batch's observations run this many at once on the CPU provider (a session's
    runs may overlap and release the GIL); one after another on a GPU provider, which queues them anyway.
    """
    providers = available_providers()
    manifest = load_export(engine_dir, model_dir)
    if manifest.dtype == "bfloat16" and providers == ["CPUExecutionProvider"]:
        raise BackendUnavailable(f"{NAME}: the CPU provider has no bfloat16 kernels (Conv, MatMul) for {engine_dir}; "
                                 "export with --dtype float32 or float16, or run on CUDA / TensorRT")
    try:
        config = load_config(model_dir)
    except ModelError as err:
        raise BackendError(str(err)) from err
    runner = OrtRunner(engine_dir, manifest, providers, threads)
    used = sorted(set(runner.providers.values()))
    workers = batch_workers if used == ["CPUExecutionProvider"] else 1
    parallel = f", batch elements {workers} at once" if workers > 1 else ""
    return graph_pipeline(NAME, f"{NAME} {'+'.join(used)}, {threads} thread(s){parallel}, {manifest.dtype}", config,
                          runner, workers)
