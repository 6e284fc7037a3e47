"""Export a checkpoint's inference path to ONNX graphs with fixed shapes (batch 1) + ``manifest.json``.

Graphs (see :mod:`internvla_ros.backends.graphs`): ViT, prefix pass (-> per-layer K/V), Cosmos
encode (one frame per view), generation pass (prefix K/V -> its own K/V + ``middle_out``), one
flow-matching step (all K/V + state + ``x_t`` + time -> ``v_t``), foresight head, Cosmos decode.
The Euler loop stays on the host, so one step graph serves every step.
"""

from __future__ import annotations

import importlib.metadata
import math
import os
import shutil
import warnings
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch._decomp import core_aten_decompositions
from torch.fx.experimental.proxy_tensor import make_fx
from torch.nn.attention import SDPBackend, sdpa_kernel

from internvla_ros.backends import graphs
from internvla_ros.backends.errors import BackendError
from internvla_ros.backends.graphs import Layout
from internvla_ros.backends.manifest import (
    FORMAT_VERSION,
    MANIFEST_FILE,
    GraphSpec,
    Manifest,
    TensorSpec,
    model_key,
    source_hashes,
)
from internvla_ros.model.checkpoint import TORCH_DTYPES, load_checkpoint
from internvla_ros.model.errors import ModelError
from internvla_ros.model.modeling import InternVLAModel
from internvla_ros.model.pipeline import cosmos_dtype

OPSET = 23
"""Emits native RMSNormalization / Attention ops (ONNX Runtime >= 1.23 runs them)."""
PLAIN_MEAN_MAX_VALUES = 4096
"""A last-axis mean of up to this many values exports as one ReduceMean (see :func:`accurate_mean`)."""
DTYPES = TORCH_DTYPES
"""Precisions an export can be made in: every one the model loads in."""
INLINE_LIMIT = 1 << 30
"""Graphs with more weight bytes than this keep them in a side file (protobuf stops at 2 GiB)."""
CACHE_ENV = "INTERNVLA_EXPORT_CACHE"


def default_cache_root() -> Path:
    """``$INTERNVLA_EXPORT_CACHE``, else ``$XDG_CACHE_HOME/internvla_ros/exports`` (~/.cache by default)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "internvla_ros" / "exports"


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _example(spec: TensorSpec) -> Tensor:
    dtype = getattr(torch, spec.dtype)
    if dtype == torch.bool:
        return torch.ones(spec.shape, dtype=dtype)
    return torch.zeros(spec.shape, dtype=dtype) if not dtype.is_floating_point else torch.rand(spec.shape).to(dtype)


def graph_io(layout: Layout, compute: torch.dtype) -> dict[str, tuple[list[TensorSpec], list[TensorSpec]]]:
    """Names, shapes and dtypes of every graph's inputs and outputs."""
    c = _dtype_name(compute)
    f32, i64, b = "float32", "int64", "bool"
    lay = layout
    views = lay.n_views
    prefix_kv, gen_kv, ctx_kv = lay.kv_shape(lay.prefix_len), lay.kv_shape(lay.generation_len), lay.kv_shape(
        lay.context_len)
    latents = (views, lay.latent_channels, *lay.latent_hw)
    image_embeds = TensorSpec("image_embeds", (views * lay.image_tokens_per_view, lay.und_hidden), c)
    chunk = (1, lay.chunk_size, lay.max_action_dim)
    return {
        graphs.VISION: ([TensorSpec("pixel_values", (views * lay.patches_per_view, lay.patch_values), f32)],
                        [image_embeds]),
        graphs.PREFIX: ([TensorSpec("input_ids", (1, lay.prefix_len), i64),
                         TensorSpec("attention_mask", (1, lay.prefix_len), i64), image_embeds,
                         TensorSpec("position_ids", (3, 1, lay.prefix_len), i64)],
                        [TensorSpec("prefix_keys", prefix_kv, c), TensorSpec("prefix_values", prefix_kv, c)]),
        graphs.COSMOS_ENCODE: ([TensorSpec("frames", (1, 3, *lay.frame_hw), f32)],  # one frame: only new ones
                               [TensorSpec("latents", (1, *latents[1:]), f32)]),
        graphs.GENERATION: (
            [TensorSpec("cosmos_latents", (1, views, lay.frames_per_view, *latents[1:]), f32),
             TensorSpec("view_mask", (1, views), b), TensorSpec("prefix_keys", prefix_kv, c),
             TensorSpec("prefix_values", prefix_kv, c), TensorSpec("prefix_valid", (1, lay.prefix_len), b),
             TensorSpec("prefix_positions", (3, 1, lay.prefix_len), i64)],
            [TensorSpec("middle_out", (1, lay.generation_len, lay.expert_hidden), c),
             TensorSpec("generation_keys", gen_kv, c), TensorSpec("generation_values", gen_kv, c),
             TensorSpec("generation_valid", (1, lay.generation_len), b),
             TensorSpec("generation_positions", (3, 1, lay.generation_len), i64)]),
        graphs.ACTION_STEP: (
            [TensorSpec("context_keys", ctx_kv, c), TensorSpec("context_values", ctx_kv, c),
             TensorSpec("context_valid", (1, lay.context_len), b),
             TensorSpec("context_positions", (3, 1, lay.context_len), i64),
             TensorSpec("state", (1, lay.max_state_dim), f32), TensorSpec("x_t", chunk, f32),
             TensorSpec("time", (1,), f32)],
            [TensorSpec("v_t", chunk, f32)]),
        graphs.GUIDANCE_STEP: (
            [TensorSpec("context_keys", ctx_kv, c), TensorSpec("context_values", ctx_kv, c),
             TensorSpec("context_valid", (1, lay.context_len), b),
             TensorSpec("context_positions", (3, 1, lay.context_len), i64),
             TensorSpec("state", (1, lay.max_state_dim), f32), TensorSpec("x_t", chunk, f32),
             TensorSpec("time", (1,), f32), TensorSpec("target", chunk, f32), TensorSpec("weights", chunk, f32)],
            [TensorSpec("v_t", chunk, f32), TensorSpec("guidance", chunk, f32)]),
        graphs.FORESIGHT: ([TensorSpec("middle_out", (1, lay.generation_len, lay.expert_hidden), c)],
                           [TensorSpec("foresight_latents", (1, *latents), f32)]),
        graphs.COSMOS_DECODE: ([TensorSpec("latents", latents, f32)],
                               [TensorSpec("images", (views, 3, *lay.cosmos_hw), f32)]),
    }


def graph_modules(model: InternVLAModel, layout: Layout) -> dict[str, Callable[[], nn.Module]]:
    return {
        graphs.VISION: lambda: graphs.VisionGraph(model, layout),
        graphs.PREFIX: lambda: graphs.PrefixGraph(model),
        graphs.COSMOS_ENCODE: lambda: graphs.CosmosEncodeGraph(model),
        graphs.GENERATION: lambda: graphs.GenerationGraph(model, layout),
        graphs.ACTION_STEP: lambda: graphs.ActionStepGraph(model, layout),
        graphs.GUIDANCE_STEP: lambda: graphs.GuidanceStepGraph(model, layout),
        graphs.FORESIGHT: lambda: graphs.ForesightGraph(model),
        graphs.COSMOS_DECODE: lambda: graphs.CosmosDecodeGraph(model),
    }


def _versions() -> dict[str, str]:
    versions = {}
    for package in ("torch", "onnx", "onnxscript", "transformers"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = "missing"
    return versions


def accurate_mean(self: Any, dim: Any, keepdim: bool = False, dtype: int = -1) -> Any:
    """``aten.mean.dim`` as a mean plus the mean of the residuals (exported in place of one ReduceMean).

    ONNX Runtime's float32 ReduceMean over non-contiguous axes adds sequentially: over 65,536 values
    of 0.7 +- 1e-4 it is 4.5e-4 off (torch: 3e-9). In a GroupNorm of a near-constant group (an
    all-black, i.e. missing, camera frame) that error is then divided by a tiny standard deviation.
    The residuals are small, so their mean is exact enough to correct the first one. A mean over the
    last axis alone of at most :data:`PLAIN_MEAN_MAX_VALUES` values keeps one ReduceMean: an RMSNorm's
    mean of squares over a hidden vector (a contiguous, vectorised sum of positive terms), which ONNX
    Runtime then fuses into one RMSNormalization.
    """
    from onnxscript.onnx_opset import opset18 as op

    if len(self.shape) == 0:
        return self
    sizes = [self.shape[d] for d in dim]
    dims = op.Reshape(dim, op.Constant(value_ints=[-1]))
    first = op.ReduceMean(self, dims, keepdims=True)
    last_axis = list(dim) in ([-1], [len(self.shape) - 1])
    if last_axis and all(isinstance(n, int) for n in sizes) and math.prod(sizes) <= PLAIN_MEAN_MAX_VALUES:
        result = first
    else:
        result = op.Add(first, op.ReduceMean(op.Sub(self, first), dims, keepdims=True))
    if not keepdim:
        result = op.Squeeze(result, dims)
    if dtype != -1 and dtype is not None:
        result = op.Cast(result, to=dtype)
    return result


class _Traced(nn.Module):
    """A graph whose backward pass ``make_fx`` traced into plain aten ops (attention in its math form, every op
    decomposed: ONNX has no attention or SiLU backward), as a module to export."""

    def __init__(self, module: nn.Module, examples: tuple[Tensor, ...]) -> None:
        super().__init__()
        for parameter in module.parameters():  # the export's own checkpoint: only x_t is differentiated
            parameter.requires_grad_(False)
        with sdpa_kernel(SDPBackend.MATH):
            self.traced = make_fx(module.eval(), decomposition_table=core_aten_decompositions())(*examples)

    def forward(self, *args: Tensor) -> Any:
        return self.traced(*args)


def _export_one(module: nn.Module, inputs: list[TensorSpec], outputs: list[TensorSpec], path: Path,
                opset: int) -> None:
    examples = tuple(_example(spec) for spec in inputs)
    traced = getattr(module, "trace_autograd", False)
    if traced:
        module = _Traced(module, examples)
    try:  # a traced backward exports with grad mode on (under no_grad its weights fail to lift)
        with warnings.catch_warnings(), torch.set_grad_enabled(traced):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                module.eval(), examples, dynamo=True, opset_version=opset, verbose=False,
                input_names=[s.name for s in inputs], output_names=[s.name for s in outputs],
                custom_translation_table={torch.ops.aten.mean.dim: accurate_mean},
            )
        initializers = program.model.graph.initializers.values()
        weight_bytes = sum(v.const_value.nbytes for v in initializers if v.const_value is not None)
        program.save(str(path), external_data=weight_bytes > INLINE_LIMIT)
    except ImportError as err:
        raise BackendError(f"ONNX export needs onnx and onnxscript ({err}); install them next to torch") from err
    except Exception as err:  # torch.onnx raises many unrelated types; name the graph and re-raise as ours
        raise BackendError(f"exporting graph {path.stem!r} failed: {type(err).__name__}: {err}") from err


def export_model(model_dir: Path, out_dir: Path, dtype: str = "float32", opset: int = OPSET) -> Manifest:
    """Export ``model_dir`` into ``out_dir`` (replacing any export there); returns the manifest written.

    ``dtype`` is the precision of the experts and the ViT (norms and heads stay float32, as in
    :meth:`InternVLAModel.to_precision`); Cosmos follows :func:`~internvla_ros.model.pipeline.cosmos_dtype`,
    its GroupNorms exported in two passes (:class:`~internvla_ros.backends.graphs.TwoPassGroupNorm`).
    A lower ``opset`` (e.g. 19, for TensorRT parsers without the opset-23 Attention / RMSNormalization
    ops) decomposes those ops.
    """
    if dtype not in DTYPES:
        raise BackendError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    hashes = source_hashes(model_dir)
    try:
        checkpoint = load_checkpoint(model_dir, dtype=DTYPES[dtype], cosmos_dtype=cosmos_dtype(DTYPES[dtype]))
    except ModelError as err:
        raise BackendError(f"cannot export {model_dir}: {err}") from err
    graphs.stabilize_group_norms(checkpoint.model.model.cosmos)  # this checkpoint serves the export only
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / MANIFEST_FILE).unlink(missing_ok=True)
    for stale in out_dir.glob("*.onnx.data"):
        stale.unlink()
    layout = Layout.of(checkpoint.config)
    io = graph_io(layout, DTYPES[dtype])
    specs = {}
    for name, build in graph_modules(checkpoint.model, layout).items():
        inputs, outputs = io[name]
        path = out_dir / f"{name}.onnx"
        _export_one(build(), inputs, outputs, path, opset)
        data = path.with_name(path.name + ".data")
        data_file, data_bytes = (data.name, data.stat().st_size) if data.is_file() else (None, 0)
        specs[name] = GraphSpec(path.name, path.stat().st_size, tuple(inputs), tuple(outputs), data_file, data_bytes)
    manifest = Manifest(
        format=FORMAT_VERSION, dtype=dtype, opset=opset, exporter="torch.onnx.export(dynamo=True)",
        versions=_versions(), source_dir=str(model_dir.resolve()), source_files=hashes,
        layout={key: list(v) if isinstance(v, tuple) else v for key, v in asdict(layout).items()}, graphs=specs,
    )
    manifest.write(out_dir)
    return manifest


def ensure_export(model_dir: Path, dtype: str = "float32", cache_root: Path | None = None) -> Path:
    """A current export of ``model_dir`` under ``cache_root/<model key>``, exported first if there is none.

    The key hashes the model files, so a changed model gets a new directory (never a stale one).
    """
    key = model_key(source_hashes(model_dir), dtype)
    target = (cache_root or default_cache_root()) / key
    if (target / MANIFEST_FILE).is_file():
        manifest = Manifest.read(target)
        if manifest.key == key:
            return target
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    export_model(model_dir, partial, dtype)
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)
    return target
