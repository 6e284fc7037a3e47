"""``internvla check-parity``: run a checkpoint on a recorded batch and compare with the recorded outputs.

Usage examples::

    internvla check-parity test/fixtures/internvla_a1_reference/case_a
    internvla check-parity DIR --dtype bfloat16 --atol 0.1
    internvla check-parity DIR --backend onnxruntime --cache /tmp/exports

``DIR`` is a checkpoint directory that also holds ``inputs.safetensors`` (the batch in the
reference's ``observation.*`` names plus the initial ``noise``) and ``outputs.safetensors`` (what the
reference returned). Every backend runs the one staged pipeline (what the node runs); a compiled one
runs an export of DIR (made in ``--cache`` when missing). The sampler trace, the Cosmos latents, the
foresight and the actions are compared for every backend, the hidden states for torch. Prints one
line per compared tensor, then ``max_abs_diff=<float>`` over the actions. Exit status: 0 all within
tolerance, 1 a mismatch, 2 bad input.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from internvla_ros.backends.errors import BackendError
from internvla_ros.backends.factory import BackendOptions, create_backend
from internvla_ros.cli.groups import add_verb
from internvla_ros.model.checkpoint import STATS_FILE
from internvla_ros.model.errors import ModelError
from internvla_ros.model.inputs import ModelInputs
from internvla_ros.model.normalization import NormalizationStats
from internvla_ros.model.pipeline import ChunkResult, InferencePipeline, SamplerTrace
from internvla_ros.model.preprocessing import default_camera_names
from internvla_ros.model.torch_stages import TorchGeneration, TorchPrefix, TorchStages

BACKENDS = ("torch", "torch-uncached", "onnxruntime", "tensorrt")
INPUTS_FILE = "inputs.safetensors"
OUTPUTS_FILE = "outputs.safetensors"
DEFAULT_ACTIONS_ATOL = 1e-4

DTYPES = ("float32", "bfloat16")
"""Expert precisions the tolerance table covers (a subset of ``TORCH_DTYPES``)."""

# Absolute tolerances for everything but the actions (those come from --atol). Float32 values follow
# the fixture's README (independent fp32 implementation: 1e-4, decoded images 5e-4, ids exact).
# bfloat16 experts drift from the float32 reference by ~5e-2 per hidden state; the table is loose
# enough for that and still catches a wrong layout (which moves values by O(1)). Cosmos runs in bf16
# then too (``cosmos_dtype``), which moves its latents by up to ~0.2 (fixture README) and the decoded
# images (values span about +-15) by ~0.7 on case_a: 1.5 is 10% of that span.
TOLERANCES: dict[str, dict[str, float]] = {
    "float32": {
        "prefix_position_ids": 0.0,
        "middle_position_ids": 0.0,
        "t_all": 0.0,
        "vit_image_embeds": 1e-4,
        "prefix_embs": 1e-4,
        "prefix_out": 1e-4,
        "cosmos_latents": 1e-4,
        "middle_embs": 1e-4,
        "middle_out": 1e-4,
        "x_t_all": 1e-4,
        "v_t_all": 1e-4,
        "v_t_step0": 1e-4,
        "foresight_latent_pred": 1e-4,
        "foresight_recon_images_view0": 5e-4,
        "actions_unnormalized": 5e-4,
        "actions_cosmos_bf16": 2e-2,
    },
    "bfloat16": {
        "prefix_position_ids": 0.0,
        "middle_position_ids": 0.0,
        "t_all": 0.0,
        "vit_image_embeds": 0.1,
        "prefix_embs": 0.1,
        "prefix_out": 0.3,
        "cosmos_latents": 0.3,
        "middle_embs": 0.3,
        "middle_out": 0.3,
        "x_t_all": 0.2,
        "v_t_all": 0.2,
        "v_t_step0": 0.2,
        "foresight_latent_pred": 0.3,
        "foresight_recon_images_view0": 1.5,
        "actions_unnormalized": 0.5,
        "actions_cosmos_bf16": 0.5,
    },
}
"""Which outputs are compared: a recorded name missing from this table is reported and skipped."""
COMPILED_TOLERANCES = {"cosmos_latents": 5e-4, "foresight_latent_pred": 5e-4, "foresight_recon_images_view0": 1e-3,
                       "middle_embs": 5e-4, "middle_out": 5e-4}
"""Compiled Cosmos convolutions (an export, or ``torch.compile``) sum in another order: float32 latents, and the
generation pass over them, move by ~1e-4 (actions far less)."""


def _load(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise ModelError(f"{path}: file not found")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise ModelError(f"{path}: not a readable safetensors file ({err})") from err


def _need(batch: dict[str, torch.Tensor], key: str, path: Path) -> torch.Tensor:
    if key not in batch:
        raise ModelError(f"{path}: missing tensor {key!r}")
    return batch[key]


def batch_to_inputs(batch: dict[str, torch.Tensor], n_views: int, path: Path) -> tuple[ModelInputs, torch.Tensor]:
    """The reference's ``observation.*`` batch (+ ``noise``) as :class:`ModelInputs`."""
    keys = [f"observation.images.{name}" for name in default_camera_names(n_views)]
    frames = torch.stack([_need(batch, key, path) for key in keys], dim=1)
    masks = torch.stack([_need(batch, f"{key}_mask", path) for key in keys], dim=1)
    inputs = ModelInputs(
        pixel_values=_need(batch, "observation.pixel_values", path),
        image_grid_thw=_need(batch, "observation.image_grid_thw", path),
        input_ids=_need(batch, "observation.input_ids", path),
        attention_mask=_need(batch, "observation.attention_mask", path),
        state=_need(batch, "observation.state", path),
        view_mask=masks.bool(),
        frames=frames,
    )
    return inputs, _need(batch, "noise", path)


def _computed(pipeline: InferencePipeline, result: ChunkResult, trace: SamplerTrace,
              stats: NormalizationStats | None, inputs: ModelInputs,
              noise: torch.Tensor) -> dict[str, Callable[[], torch.Tensor]]:
    """Our value for every output name this backend can produce, computed lazily."""
    assert result.foresight_latents is not None and result.foresight_images is not None
    latents, images = result.foresight_latents, result.foresight_images

    def unnormalized() -> torch.Tensor:
        if stats is None:
            raise ModelError("actions_unnormalized needs stats.json next to the checkpoint")
        return torch.from_numpy(stats.unnormalize_actions(result.actions[0].float().numpy()))[None]

    ours: dict[str, Callable[[], torch.Tensor]] = {
        "actions": lambda: result.actions,
        "x_t_all": lambda: torch.stack(trace.x_t),
        "v_t_all": lambda: torch.stack(trace.v_t),
        "v_t_step0": lambda: trace.v_t[0],
        "t_all": lambda: torch.stack(trace.t),
        "foresight_latent_pred": lambda: latents,
        "foresight_recon_images_view0": lambda: images[:, 0],
        "actions_unnormalized": unnormalized,
    }
    if result.latents is not None:
        ours["cosmos_latents"] = lambda: result.latents  # type: ignore[return-value]
    prefix, generation, stages = result.prefix, result.generation, pipeline.stages
    if isinstance(prefix, TorchPrefix) and isinstance(generation, TorchGeneration) and isinstance(stages, TorchStages):
        ours.update({
            "prefix_out": lambda: prefix.out, "middle_out": lambda: generation.middle_out,
            "prefix_embs": lambda: prefix.block.embeds, "middle_embs": lambda: generation.block.embeds,
            "vit_image_embeds": lambda: prefix.image_embeds,
            "prefix_position_ids": lambda: prefix.block.positions,
            "middle_position_ids": lambda: generation.block.positions,
            "actions_cosmos_bf16": lambda: _with_bf16_cosmos(pipeline, stages, inputs, noise),
        })
    return ours


def _with_bf16_cosmos(pipeline: InferencePipeline, stages: TorchStages, inputs: ModelInputs,
                      noise: torch.Tensor) -> torch.Tensor:
    """The actions with Cosmos in bf16, as the reference runs it by default."""
    cosmos = stages.model.model.cosmos
    dtype = next(cosmos.parameters()).dtype
    cosmos.to(torch.bfloat16)
    try:
        return pipeline.run(inputs, noise).actions
    finally:
        cosmos.to(dtype)


def _single_robot(stats_path: Path | None) -> NormalizationStats | None:
    if stats_path is None:
        return None
    try:
        robots = list(json.loads(stats_path.read_text()))
    except (OSError, json.JSONDecodeError) as err:
        raise ModelError(f"{stats_path}: not readable JSON ({err})") from err
    return NormalizationStats.load(stats_path, robots[0]) if len(robots) == 1 else None


def check_parity(directory: Path, dtype: str, atol: float, backend: str = "torch", cache: Path | None = None,
                 compile: bool = False) -> int:
    """Compare; print the report; return the exit status (0 ok, 1 mismatch)."""
    pipeline = create_backend([backend], BackendOptions(directory, cache_root=cache, dtype=dtype, compile=compile,
                                                        threads=torch.get_num_threads())).backend
    print(f"backend: {pipeline.description}")
    inputs_path, outputs_path = directory / INPUTS_FILE, directory / OUTPUTS_FILE
    inputs, noise = batch_to_inputs(_load(inputs_path), pipeline.config.n_views, inputs_path)
    recorded = _load(outputs_path)
    _need(recorded, "actions", outputs_path)
    trace = SamplerTrace()
    result = pipeline.run(inputs, noise, foresight=True, decode=True, trace=trace)
    stats = _single_robot(directory / STATS_FILE if (directory / STATS_FILE).is_file() else None)
    ours = _computed(pipeline, result, trace, stats, inputs, noise)
    tolerances = {**TOLERANCES[dtype], "actions": atol}
    if not isinstance(pipeline.stages, TorchStages) or pipeline.stages.compiled:
        tolerances.update({k: max(v, tolerances[k]) for k, v in COMPILED_TOLERANCES.items()})
    failed = False
    actions_diff = float("nan")
    for name in ["actions", *sorted(set(recorded) - {"actions"})]:
        if name not in ours or name not in tolerances:
            print(f"{name} {tuple(recorded[name].shape)} skipped (not compared for {backend} at {dtype})")
            continue
        value, reference = ours[name]().cpu(), recorded[name]
        if tuple(value.shape) != tuple(reference.shape):
            print(f"{name} {tuple(reference.shape)} FAIL shape {tuple(value.shape)}")
            failed = True
            continue
        diff = (value.double() - reference.double()).abs().max().item() if reference.numel() else 0.0
        ok = diff <= tolerances[name]
        failed |= not ok
        if name == "actions":
            actions_diff = diff
        print(f"{name} {tuple(reference.shape)} max_abs_diff={diff:.3e} tol={tolerances[name]:.1e} "
              f"{'ok' if ok else 'FAIL'}")
    print(f"max_abs_diff={actions_diff:.6e}")
    return 1 if failed else 0


def command(args: argparse.Namespace) -> int:
    """Entry point of ``internvla check-parity``."""
    if args.atol < 0:
        print(f"ERROR: --atol must be >= 0, got {args.atol}", file=sys.stderr)
        return 2
    try:
        with torch.no_grad():  # not the process-wide switch: a caller's later training must still get gradients
            return check_parity(Path(args.directory), args.dtype, args.atol, args.backend, args.cache, args.compile)
    except (ModelError, BackendError) as err:
        print(f"ERROR: {err}", file=sys.stderr)
        return 2


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_verb(subparsers, "check-parity", "compare a checkpoint's outputs with recorded reference outputs",
                      __doc__)
    parser.add_argument("directory", metavar="DIR", help="checkpoint dir with inputs/outputs.safetensors")
    parser.add_argument("--backend", choices=BACKENDS, default="torch",
                        help="inference backend (default: torch); onnxruntime and tensorrt run an export of DIR")
    parser.add_argument("--cache", type=Path, default=None,
                        help="where --backend onnxruntime/tensorrt keeps exports "
                             "(default: ~/.cache/internvla_ros/exports)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32", help="expert precision")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the torch backend's stages (what `bench model --compile` times)")
    parser.add_argument("--atol", type=float, default=DEFAULT_ACTIONS_ATOL,
                        help=f"absolute tolerance on the actions (default: {DEFAULT_ACTIONS_ATOL})")
    parser.set_defaults(func=command)
