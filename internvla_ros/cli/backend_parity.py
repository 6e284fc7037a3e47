"""``internvla check-parity DIR --backend onnxruntime|tensorrt``: a compiled backend against the recorded outputs.

The checkpoint is exported to the export cache (``--cache``, default ``~/.cache/internvla_ros/exports``)
unless a current export is already there; the actions and the foresight latents are compared.
"""

from __future__ import annotations

from pathlib import Path

from internvla_ros.backends.factory import BackendOptions, create_backend
from internvla_ros.cli.check_parity import INPUTS_FILE, OUTPUTS_FILE, _load, _need, batch_to_inputs
from internvla_ros.model.config import load_config

FORESIGHT_ATOL = 5e-4
"""Compiled Cosmos convolutions sum in another order: the float32 latents move by ~1e-4 (actions far less)."""


def check_backend_parity(directory: Path, backend: str, dtype: str, atol: float, cache: Path | None) -> int:
    """Compare; print the report; return the exit status (0 ok, 1 mismatch)."""
    config = load_config(directory)
    inputs_path, outputs_path = directory / INPUTS_FILE, directory / OUTPUTS_FILE
    inputs, noise = batch_to_inputs(_load(inputs_path), config.n_views, inputs_path)
    recorded = _load(outputs_path)
    _need(recorded, "actions", outputs_path)
    choice = create_backend([backend], BackendOptions(directory, cache_root=cache, dtype=dtype))
    print(f"backend: {choice.backend.description}")
    result = choice.backend.predict(inputs, noise, foresight=True)
    ours = {"actions": (result.actions, atol), "foresight_latent_pred": (result.foresight_latents, FORESIGHT_ATOL)}
    failed = False
    for name, (value, tolerance) in ours.items():
        if name not in recorded or value is None:
            continue
        reference = recorded[name]
        if tuple(value.shape) != tuple(reference.shape):
            print(f"{name} {tuple(reference.shape)} FAIL shape {tuple(value.shape)}")
            failed = True
            continue
        diff = (value.double() - reference.double()).abs().max().item()
        ok = diff <= tolerance
        failed |= not ok
        print(f"{name} {tuple(reference.shape)} max_abs_diff={diff:.3e} tol={tolerance:.1e} {'ok' if ok else 'FAIL'}")
    actions_diff = (result.actions.double() - recorded["actions"].double()).abs().max().item()
    print(f"max_abs_diff={actions_diff:.6e}")
    return 1 if failed else 0
