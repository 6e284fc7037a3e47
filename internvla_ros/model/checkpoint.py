"""Strict loading of a released InternVLA-A1 checkpoint directory (safetensors only).

A directory holds ``model.safetensors``, ``config.json``, optionally ``arch.json`` (explicit sizes)
and ``stats.json`` (normalisation statistics, read by :mod:`internvla_ros.model.normalization`).
Every tensor must match the model by name and shape; all problems are reported in one error.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from internvla_ros.model.config import CONFIG_FILE, InternVLAConfig, load_config
from internvla_ros.model.errors import CheckpointError
from internvla_ros.model.modeling import InternVLAModel

WEIGHTS_FILE = "model.safetensors"
STATS_FILE = "stats.json"
TORCH_DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
"""Precision names -> torch dtypes (``load_checkpoint``'s ``dtype``); callers may accept a subset."""
MAX_LISTED = 20
"""How many names of each kind of problem an error message lists before summarising."""

# Tied word embedding: the reference save path de-duplicates shared tensors and keeps only
# lm_head.weight; embed_tokens.weight is the same tensor. This is the only key allowed to be absent.
TIED_KEYS: dict[str, str] = {
    "model.qwen3_vl_with_expert.und_expert.model.language_model.embed_tokens.weight":
        "model.qwen3_vl_with_expert.und_expert.lm_head.weight",
}


@dataclass(frozen=True)
class Checkpoint:
    """A loaded checkpoint: configuration, model (eval mode) and where it came from."""

    directory: Path
    config: InternVLAConfig
    model: InternVLAModel
    stats_path: Path | None


def expected_shapes(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    """Names and shapes the checkpoint must provide (tied copies left out)."""
    return {name: tuple(t.shape) for name, t in model.state_dict().items() if name not in TIED_KEYS}


def _list(names: list[str]) -> str:
    shown = ", ".join(names[:MAX_LISTED])
    return shown + (f" (+{len(names) - MAX_LISTED} more)" if len(names) > MAX_LISTED else "")


def _open(path: Path) -> safe_open:
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    try:
        return safe_open(str(path), framework="pt", device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"{path}: not a readable safetensors file ({err})") from err


def read_header(path: Path) -> dict[str, tuple[tuple[int, ...], str]]:
    """Name -> (shape, dtype) of every tensor in a safetensors file, without reading the data."""
    with _open(path) as handle:
        slices = {name: handle.get_slice(name) for name in handle.keys()}  # noqa: SIM118
        return {name: (tuple(s.get_shape()), s.get_dtype()) for name, s in slices.items()}


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of one safetensors file, or a CheckpointError naming the file."""
    with _open(path) as handle:
        try:
            return {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
        except (SafetensorError, OSError, ValueError, RuntimeError) as err:
            raise CheckpointError(f"{path}: not a readable safetensors file ({err})") from err


def check_shapes(expected: dict[str, tuple[int, ...]], found: dict[str, tuple[int, ...]], source: str) -> None:
    """Raise one CheckpointError listing every missing, unexpected and mis-shaped tensor."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected) - set(TIED_KEYS))
    wrong = sorted(
        f"{name} {found[name]} != {expected[name]}"
        for name in set(expected) & set(found)
        if found[name] != expected[name]
    )
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing: {_list(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected: {_list(unexpected)}")
    if wrong:
        problems.append(f"{len(wrong)} with the wrong shape: {_list(wrong)}")
    if problems:
        raise CheckpointError(f"{source}: " + "; ".join(problems))


def build_empty(config: InternVLAConfig) -> InternVLAModel:
    """The model on the meta device (no memory, no random init); fill it with :func:`load_state`."""
    with torch.device("meta"):
        return InternVLAModel(config)


def load_state(model: InternVLAModel, tensors: dict[str, torch.Tensor], source: str) -> InternVLAModel:
    """Strictly assign ``tensors`` to a model built by :func:`build_empty`."""
    check_shapes(expected_shapes(model), {name: tuple(t.shape) for name, t in tensors.items()}, source)
    for tied, twin in TIED_KEYS.items():
        if tied in tensors and not torch.equal(tensors[tied], tensors[twin]):
            raise CheckpointError(f"{source}: {tied} differs from its tied twin {twin}")
    state = {name: t for name, t in tensors.items() if name not in TIED_KEYS}
    # Not strict only because of the tied key, which is re-tied right below; anything else is an error.
    result = model.load_state_dict(state, strict=False, assign=True)
    if set(result.missing_keys) - set(TIED_KEYS) or result.unexpected_keys:
        raise CheckpointError(f"{source}: missing {_list(sorted(result.missing_keys))}, "
                              f"unexpected {_list(sorted(result.unexpected_keys))}")
    und = model.experts.und_expert
    und.model.language_model.embed_tokens.weight = und.lm_head.weight
    model.experts.reset_rotary(model.config)
    left = [name for name, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise CheckpointError(f"{source}: no value for {_list(left)}")
    return model.eval()


def load_checkpoint(
    directory: str | Path, dtype: torch.dtype = torch.float32, cosmos_dtype: torch.dtype | None = None
) -> Checkpoint:
    """Load a checkpoint directory strictly; the model is returned in eval mode on the CPU."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: not a directory")
    for required in (CONFIG_FILE, WEIGHTS_FILE):
        if not (directory / required).is_file():
            raise CheckpointError(f"{directory / required}: file not found")
    config = load_config(directory)
    weights = directory / WEIGHTS_FILE
    tensors = read_tensors(weights)
    model = load_state(build_empty(config), tensors, str(weights))
    model.to_precision(dtype, cosmos_dtype)
    stats = directory / STATS_FILE
    return Checkpoint(directory, config, model, stats if stats.is_file() else None)
