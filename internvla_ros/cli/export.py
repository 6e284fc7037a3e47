"""``internvla export``: write a checkpoint's inference path as ONNX graphs + ``manifest.json``.

Usage examples::

    internvla export test/fixtures/internvla_a1_reference/case_a --out /tmp/case_a.onnx
    internvla export /data/InternVLA-A1-3B --out /data/InternVLA-A1-3B.onnx --dtype bfloat16

The manifest records every graph's inputs and outputs (names, shapes, dtypes), the opset, the
exporter and library versions, and the SHA-256 of the model files; a backend loading ENGINE_DIR for a
model whose files differ refuses it. Exit status: 0 exported, 2 bad input or export failure.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from internvla_ros.backends.errors import BackendError
from internvla_ros.backends.export import DTYPES, OPSET, export_model
from internvla_ros.cli.groups import add_verb


def export(model_dir: Path, out_dir: Path, dtype: str, opset: int) -> int:
    start = time.perf_counter_ns()
    manifest = export_model(model_dir, out_dir, dtype, opset)
    seconds = (time.perf_counter_ns() - start) / 1e9
    print(f"exported {model_dir} ({manifest.dtype}, opset {manifest.opset}) to {out_dir} in {seconds:.1f} s")
    for spec in manifest.graphs.values():
        ins = ", ".join(f"{t.name}{list(t.shape)}" for t in spec.inputs)
        outs = ", ".join(f"{t.name}{list(t.shape)}" for t in spec.outputs)
        print(f"  {spec.file:<20} {spec.bytes / 1e6:>9.1f} MB  ({ins}) -> ({outs})")
    return 0


def command(args: argparse.Namespace) -> int:
    """Entry point of ``internvla export``."""
    torch.set_num_threads(args.threads)
    try:
        return export(Path(args.directory), Path(args.out), args.dtype, args.opset)
    except BackendError as err:
        print(f"ERROR: {err}", file=sys.stderr)
        return 2


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_verb(subparsers, "export",
                      "export a checkpoint to ONNX graphs for the onnxruntime / tensorrt backends", __doc__)
    parser.add_argument("directory", metavar="MODEL_DIR", help="checkpoint directory (config.json + model.safetensors)")
    parser.add_argument("--out", required=True, metavar="ENGINE_DIR", help="directory for the graphs and manifest")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32",
                        help="precision of the experts and the ViT (default: float32)")
    parser.add_argument("--opset", type=int, default=OPSET,
                        help=f"ONNX opset (default: {OPSET}; 19 decomposes Attention/RMSNormalization)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads while exporting (default: 1)")
    parser.set_defaults(func=command)
