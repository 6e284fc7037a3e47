"""Checkpoints of a fine-tuning run: the released format, plus what resuming needs.

The model files are what the node, the replay and check-parity load (``model.safetensors`` with the tied
embedding stored once, ``config.json``, ``arch.json`` copied from the initial checkpoint, ``stats.json``
with the dataset's statistics under its robot type, ``train_config.json``). ``training_state.pt`` holds
the step, the optimizer, every random generator and the loss history, so ``--resume`` continues the run
exactly where it stopped. Files are written under temporary names and renamed when complete.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from internvla_ros.learning.dataset_layout import write_json
from internvla_ros.learning.dataset_stats import merge_robot_stats
from internvla_ros.model.checkpoint import STATS_FILE, TIED_KEYS, WEIGHTS_FILE
from internvla_ros.model.config import ARCH_FILE, CONFIG_FILE, InternVLAConfig
from internvla_ros.model.modeling import InternVLAModel

STATE_FILE = "training_state.pt"
TRAIN_CONFIG_FILE = "train_config.json"
LOSSES_FILE = "losses.json"
EMBEDDING_KEY = "model.qwen3_vl_with_expert.und_expert.lm_head.weight"  # the tied token embedding, stored once


@dataclass
class TrainingState:
    step: int
    optimizer: dict[str, Any]
    torch_rng: torch.Tensor
    cuda_rng: list[torch.Tensor]
    generator: torch.Tensor  # batch order and noise
    order: torch.Tensor  # the current pass over the dataset
    position: int  # next index into ``order``
    losses: list[dict[str, float]]


def trained_steps(model: Path) -> int | None:
    """Training steps behind a checkpoint, counted from the random weights (a continuation's
    ``total_steps``; ``step`` in files written before it existed); None for one not trained here."""
    path = Path(model) / TRAIN_CONFIG_FILE
    if not path.is_file():
        return None
    config = json.loads(path.read_text())
    step = config.get("total_steps", config.get("step"))
    return None if step is None else int(step)


def stats_with(init: Path, robot_type: str, entry: dict[str, Any], config: InternVLAConfig) -> dict[str, Any]:
    """The initial checkpoint's stats.json with the dataset's entry under ``robot_type`` (replacing any)."""
    path = init / STATS_FILE
    existing = json.loads(path.read_text()) if path.is_file() else {}
    return merge_robot_stats(existing, robot_type, entry, config.max_state_dim, config.max_action_dim, replace=True)


def save_model(model: InternVLAModel, out: Path, init: Path, stats: dict[str, Any],
               train_config: dict[str, Any], bf16: tuple[str, ...] = (),
               config_updates: dict[str, Any] | None = None) -> None:
    """The released format; the tensors named in ``bf16`` stored as bf16 (the loader makes them float32);
    ``config_updates``: keys of the initial checkpoint's config.json that this run changes."""
    out.mkdir(parents=True, exist_ok=True)
    state = {name: t.detach().to(torch.bfloat16 if name in bf16 else torch.float32).cpu().contiguous()
             for name, t in model.state_dict().items() if name not in TIED_KEYS}
    partial = out / f"{WEIGHTS_FILE}.partial"
    save_file(state, str(partial), metadata={"format": "pt"})
    partial.replace(out / WEIGHTS_FILE)
    for name in (CONFIG_FILE, ARCH_FILE):
        if (init / name).is_file() and init.resolve() != out.resolve():
            shutil.copyfile(init / name, out / name)
    if config_updates:
        config = json.loads((out / CONFIG_FILE).read_text())
        write_json(out / CONFIG_FILE, {**config, **config_updates})
    write_json(out / STATS_FILE, stats)
    write_json(out / TRAIN_CONFIG_FILE, train_config)


def save_state(state: TrainingState, out: Path) -> None:
    partial = out / f"{STATE_FILE}.partial"
    torch.save(state.__dict__, partial)
    partial.replace(out / STATE_FILE)
    write_json(out / LOSSES_FILE, state.losses)


def load_state(out: Path) -> TrainingState:
    path = out / STATE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no training state to resume from; run without --resume first")
    return TrainingState(**torch.load(path, weights_only=True))
