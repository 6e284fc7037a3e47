"""``internvla model info``: sizes, precision, token budget and compute of a checkpoint.

Usage examples::

    internvla model info test/fixtures/internvla_a1_reference/case_a
    internvla model info /data/InternVLA-A1-3B

Reads only ``config.json`` (+ ``arch.json``) and the safetensors header: the tensor names and shapes
are checked strictly against the model, no weights are loaded. The FLOP count is analytic (see
:mod:`internvla_ros.model.cost`): one chunk with the prefix and generation K/V computed once.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

from internvla_ros.cli.groups import add_verb, verb_group
from internvla_ros.model.checkpoint import WEIGHTS_FILE, build_empty, check_shapes, expected_shapes, read_header
from internvla_ros.model.config import CONFIG_FILE, load_config, read_json
from internvla_ros.model.cost import chunk_flops, parameter_groups
from internvla_ros.model.errors import ModelError


def model_verbs(subparsers: argparse._SubParsersAction) -> argparse._SubParsersAction:
    """The verb table of ``internvla model``."""
    return verb_group(subparsers, "model", "inspect and make model checkpoints")


def _count(value: int) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= scale:
            return f"{value:>15,d} ({value / scale:.2f}{unit})"
    return f"{value:>15,d}"


def model_info(directory: Path) -> int:
    config = load_config(directory)
    declared = read_json(directory / CONFIG_FILE).get("dtype", "unknown")
    model = build_empty(config)
    header = read_header(directory / WEIGHTS_FILE)
    check_shapes(expected_shapes(model), {name: shape for name, (shape, _) in header.items()},
                 str(directory / WEIGHTS_FILE))
    dtypes = Counter(dtype for _, dtype in header.values())

    print(f"checkpoint: {directory}")
    print(f"weights: {WEIGHTS_FILE}, {len(header)} tensors, stored as "
          + ", ".join(f"{d} x{n}" for d, n in dtypes.most_common()) + f"; config.json dtype: {declared}")
    print("parameters:")
    groups = parameter_groups(model)
    for name, value in groups.items():
        print(f"  {name:<34}{_count(value)}")
    print(f"  {'total':<34}{_count(sum(groups.values()))}")
    views, image_tokens = config.n_views, config.image_tokens_per_view
    print("tokens per block:")
    print(f"  prefix      {config.prefix_len:>4}  ({views} cameras x ({image_tokens} image + 2) + "
          f"{config.tokenizer_max_length} prompt)")
    print(f"  generation  {config.generation_len:>4}  ({views} views x {config.frames_per_view} frames x "
          f"{config.foresight_tokens_per_frame})")
    print(f"  state       {1:>4}")
    print(f"  action      {config.chunk_size:>4}")
    print(f"  total       {config.prefix_len + config.generation_len + config.suffix_len:>4}")
    flops = chunk_flops(config)
    frames = views * config.frames_per_view
    print("FLOPs per chunk (analytic, multiply-add = 2, K/V reused across steps):")
    rows = [
        ("vision (ViT)", flops.vision),
        ("prefix (und LM)", flops.prefix),
        (f"cosmos encode ({frames} frames)", flops.cosmos_encode),
        ("generation pass", flops.generation),
        (f"action step (x{flops.action_steps})", flops.action_step),
        ("total", flops.total),
    ]
    for name, value in rows:
        print(f"  {name:<34}{value / 1e9:>12.2f} GFLOP")
    return 0


def command(args: argparse.Namespace) -> int:
    """Entry point of ``internvla model info``."""
    try:
        return model_info(Path(args.directory))
    except ModelError as err:
        print(f"ERROR: {err}", file=sys.stderr)
        return 2


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_verb(model_verbs(subparsers), "info",
                      "parameter counts, dtype, token budget and FLOPs of a checkpoint", __doc__)
    parser.add_argument("directory", metavar="DIR", help="checkpoint directory (config.json + model.safetensors)")
    parser.set_defaults(func=command)
