"""``internvla model compact``: a trained checkpoint with its token embedding stored in bfloat16.

Usage example::

    internvla model compact out/sorting/train --out models/sorting

The tied token embedding (151,936 rows) is most of a small model's file: in float32 it makes a sorting policy
87 MB, in bfloat16 48 MB. The loader turns it back into float32, so only the embedding's values are rounded
(at most 2^-9 of each value); every other tensor, config.json, arch.json, stats.json and the training record
are copied as they are; the optimiser state and caches are not. Say how the rounding changed the actions
before shipping the result (``internvla model check-chunks`` on both). Exit codes: 0 written, 2 refused.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from internvla_ros.cli.groups import add_verb
from internvla_ros.cli.model_info import model_verbs
from internvla_ros.learning.training_checkpoint import EMBEDDING_KEY
from internvla_ros.model.checkpoint import WEIGHTS_FILE, load_checkpoint, read_tensors
from internvla_ros.model.errors import ModelError

KEPT_SUFFIXES = (".json", ".png")  # config, arch, stats, training record, losses and their plot


def compact(model: Path, out: Path) -> str:
    """Writes ``out``; returns a one-line summary. Raises ModelError (the checkpoint) or OSError."""
    if out.exists() and any(out.iterdir()):
        raise ModelError(f"{out}: exists and is not empty; give a new directory")
    load_checkpoint(model)  # refuses what the node would refuse, before anything is written
    tensors = read_tensors(model / WEIGHTS_FILE)
    if EMBEDDING_KEY not in tensors:
        raise ModelError(f"{model / WEIGHTS_FILE}: no {EMBEDDING_KEY}; not an InternVLA-A1 checkpoint of this layout")
    embedding = tensors[EMBEDDING_KEY].float()
    tensors[EMBEDDING_KEY] = embedding.to(torch.bfloat16)
    change = (tensors[EMBEDDING_KEY].float() - embedding).abs().max().item()
    out.mkdir(parents=True, exist_ok=True)
    save_file({name: t.contiguous() for name, t in tensors.items()}, str(out / WEIGHTS_FILE),
              metadata={"format": "pt"})
    for path in sorted(model.iterdir()):
        if path.is_file() and path.suffix in KEPT_SUFFIXES:
            shutil.copyfile(path, out / path.name)
    before, after = ((d / WEIGHTS_FILE).stat().st_size / 1e6 for d in (model, out))
    return (f"{out / WEIGHTS_FILE}: {after:.1f} MB (was {before:.1f} MB); token embedding in bfloat16, "
            f"largest change {change:.3g}")


def command(args: argparse.Namespace) -> int:
    try:
        print(compact(Path(args.model), Path(args.out)))
    except (ModelError, OSError) as err:
        print(f"ERROR: {err}", file=sys.stderr)
        return 2
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_verb(model_verbs(subparsers), "compact", "store a checkpoint's token embedding in bfloat16",
                      __doc__)
    parser.add_argument("model", metavar="MODEL", help="checkpoint directory (left as it is)")
    parser.add_argument("--out", required=True, help="new checkpoint directory")
    parser.set_defaults(func=command)
