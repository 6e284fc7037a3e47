"""PyTorch backend: the pipeline over :class:`~internvla_ros.model.torch_stages.TorchStages`.

``torch`` reuses the prefix and generation K/V across the action steps (optionally ``torch.compile``-d);
``torch-uncached`` recomputes all blocks at every step, eager always: the baseline that shows what
the K/V reuse saves.
"""

from __future__ import annotations

from pathlib import Path

import torch

from internvla_ros.backends.errors import BackendError
from internvla_ros.model.checkpoint import TORCH_DTYPES, load_checkpoint
from internvla_ros.model.errors import ModelError
from internvla_ros.model.pipeline import InferencePipeline, cosmos_dtype
from internvla_ros.model.torch_stages import NAME, NAME_UNCACHED, torch_pipeline

__all__ = ["NAME", "NAME_UNCACHED", "create"]


def create(name: str, model_dir: Path, dtype: str, threads: int, compile: bool = False) -> InferencePipeline:
    """Load ``model_dir`` in ``dtype`` (Cosmos by :func:`cosmos_dtype`) on the CPU with ``threads`` threads."""
    if dtype not in TORCH_DTYPES:
        raise BackendError(f"unknown dtype {dtype!r}; choose one of {', '.join(TORCH_DTYPES)}")
    if name == NAME_UNCACHED and compile:
        raise BackendError(f"{NAME_UNCACHED} is the eager baseline; --compile applies to {NAME} only")
    torch.set_num_threads(threads)
    try:
        precision = TORCH_DTYPES[dtype]
        checkpoint = load_checkpoint(model_dir, dtype=precision, cosmos_dtype=cosmos_dtype(precision))
    except ModelError as err:
        raise BackendError(str(err)) from err
    return torch_pipeline(checkpoint.model, kv_reuse=name == NAME, compile=compile)
