"""``internvla check-parity``: run a checkpoint on a recorded batch and compare with the recorded outputs.

Usage examples::

    internvla check-parity test/fixtures/internvla_a1_reference/case_a
    internvla check-parity DIR --dtype bfloat16 --atol 0.1

``DIR`` is a checkpoint directory that also holds ``inputs.safetensors`` (the batch in the
reference's ``observation.*`` names plus the initial ``noise``) and ``outputs.safetensors`` (what the
reference returned). Prints one line per compared tensor, then ``max_abs_diff=<float>`` over the
actions. Exit status: 0 all within tolerance, 1 a mismatch, 2 bad input.
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
from internvla_ros.cli.groups import add_verb
from internvla_ros.model.checkpoint import TORCH_DTYPES, load_checkpoint
from internvla_ros.model.errors import ModelError
from internvla_ros.model.inputs import ModelInputs
from internvla_ros.model.modeling import InternVLAModel, Prediction
from internvla_ros.model.normalization import NormalizationStats
from internvla_ros.model.preprocessing import default_camera_names

INPUTS_FILE = "inputs.safetensors"
OUTPUTS_FILE = "outputs.safetensors"
DEFAULT_ACTIONS_ATOL = 1e-4

DTYPES = ("float32", "bfloat16")
"""Expert precisions the tolerance table covers (a subset of ``TORCH_DTYPES``)."""

# Absolute tolerances for everything but the actions (those come from --atol). Float32 values follow
# the fixture's README (independent fp32 implementation: 1e-4, decoded images 5e-4, ids exact).
# bfloat16 experts drift from the float32 reference by ~5e-2 per hidden state; the table is loose
# enough for that and still catches a wrong layout (which moves values by O(1)). Cosmos and the
# projection heads stay float32 here, so the latents and foresight tokens keep the tight bound.
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
        "cosmos_latents": 1e-4,
        "middle_embs": 1e-4,
        "middle_out": 0.3,
        "x_t_all": 0.2,
        "v_t_all": 0.2,
        "v_t_step0": 0.2,
        "foresight_latent_pred": 0.3,
        "foresight_recon_images_view0": 0.5,
        "actions_unnormalized": 0.5,
    },
}
"""Which outputs are compared: a recorded name missing from this table is reported and skipped."""


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


def _computed(model: InternVLAModel, prediction: Prediction, stats: NormalizationStats | None,
              inputs: ModelInputs, noise: torch.Tensor) -> dict[str, Callable[[], torch.Tensor]]:
    """Our value for every output name we can produce, computed lazily."""
    foresight: list[torch.Tensor] = []

    def latent_pred() -> torch.Tensor:
        if not foresight:
            foresight.append(model.foresight_latents(prediction.middle_out))
        return foresight[0]

    def unnormalized() -> torch.Tensor:
        if stats is None:
            raise ModelError("actions_unnormalized needs stats.json next to the checkpoint")
        return torch.from_numpy(stats.unnormalize_actions(prediction.actions[0].float().numpy()))[None]

    def cosmos_bf16_actions() -> torch.Tensor:
        model.model.cosmos.to(torch.bfloat16)
        try:
            return model.predict(inputs, noise).actions
        finally:
            model.model.cosmos.float()

    return {
        "actions": lambda: prediction.actions,
        "prefix_out": lambda: prediction.prefix_out,
        "middle_out": lambda: prediction.middle_out,
        "prefix_embs": lambda: prediction.prefix_embs,
        "middle_embs": lambda: prediction.middle_embs,
        "vit_image_embeds": lambda: prediction.vit_image_embeds,
        "cosmos_latents": lambda: prediction.cosmos_latents,
        "prefix_position_ids": lambda: prediction.prefix_position_ids,
        "middle_position_ids": lambda: prediction.middle_position_ids,
        "x_t_all": lambda: torch.stack(prediction.trace.x_t),
        "v_t_all": lambda: torch.stack(prediction.trace.v_t),
        "v_t_step0": lambda: prediction.trace.v_t[0],
        "t_all": lambda: torch.stack(prediction.trace.t),
        "foresight_latent_pred": latent_pred,
        "foresight_recon_images_view0": lambda: model.decode_foresight(latent_pred())[:, 0],
        "actions_unnormalized": unnormalized,
        "actions_cosmos_bf16": cosmos_bf16_actions,
    }


def _single_robot(stats_path: Path | None) -> NormalizationStats | None:
    if stats_path is None:
        return None
    try:
        robots = list(json.loads(stats_path.read_text()))
    except (OSError, json.JSONDecodeError) as err:
        raise ModelError(f"{stats_path}: not readable JSON ({err})") from err
    return NormalizationStats.load(stats_path, robots[0]) if len(robots) == 1 else None


def check_parity(directory: Path, dtype: str, atol: float) -> int:
    """Compare; print the report; return the exit status (0 ok, 1 mismatch)."""
    checkpoint = load_checkpoint(directory, dtype=TORCH_DTYPES[dtype], cosmos_dtype=torch.float32)
    inputs_path, outputs_path = directory / INPUTS_FILE, directory / OUTPUTS_FILE
    inputs, noise = batch_to_inputs(_load(inputs_path), checkpoint.config.n_views, inputs_path)
    recorded = _load(outputs_path)
    _need(recorded, "actions", outputs_path)
    model = checkpoint.model
    prediction = model.predict(inputs, noise)
    ours = _computed(model, prediction, _single_robot(checkpoint.stats_path), inputs, noise)
    tolerances = {**TOLERANCES[dtype], "actions": atol}
    failed = False
    actions_diff = float("nan")
    for name in ["actions", *sorted(set(recorded) - {"actions"})]:
        if name not in ours or name not in tolerances:
            print(f"{name} {tuple(recorded[name].shape)} skipped (not compared at {dtype})")
            continue
        value, reference = ours[name](), recorded[name]
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
    torch.set_grad_enabled(False)
    try:
        if args.backend != "torch":
            from internvla_ros.cli.backend_parity import check_backend_parity  # imports this module

            return check_backend_parity(Path(args.directory), args.backend, args.dtype, args.atol, args.cache)
        return check_parity(Path(args.directory), args.dtype, args.atol)
    except (ModelError, BackendError) as err:
        print(f"ERROR: {err}", file=sys.stderr)
        return 2


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_verb(subparsers, "check-parity", "compare a checkpoint's outputs with recorded reference outputs",
                      __doc__)
    parser.add_argument("directory", metavar="DIR", help="checkpoint dir with inputs/outputs.safetensors")
    parser.add_argument("--backend", choices=["torch", "onnxruntime", "tensorrt"], default="torch",
                        help="inference backend (default: torch); the others run an export of DIR")
    parser.add_argument("--cache", type=Path, default=None,
                        help="where --backend onnxruntime/tensorrt keeps exports "
                             "(default: ~/.cache/internvla_ros/exports)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32", help="expert precision")
    parser.add_argument("--atol", type=float, default=DEFAULT_ACTIONS_ATOL,
                        help=f"absolute tolerance on the actions (default: {DEFAULT_ACTIONS_ATOL})")
    parser.set_defaults(func=command)
