"""``internvla model check-chunks``: a checkpoint's sampled chunks against a dataset's recorded ones, offline.

Usage examples::

    internvla model check-chunks models/sorting --dataset out/sorting/dataset
    internvla model check-chunks models/sorting --dataset out/sorting/dataset --noise-scale 0 --json check.json
    internvla model check-chunks out/sorting/train_rtc --dataset out/sorting/dataset --prefix-delay 10

Seeded samples of the dataset, built as training builds them, are run through the inference pipeline
(torch) and compared with the recorded chunks in the normalised action space (standard deviations):
the error per chunk step, and how rough the sampled chunks are against the demonstrations. With
--prefix-delay D the first D recorded actions are given as the executed prefix (real-time chunking:
clean to a model trained with it, guided otherwise) and the error is taken after them. --instruction
TEXT measures how much the chunks change under another instruction, --attention where the action
tokens look (the share of their attention on the camera, prompt, foresight, state and action tokens,
beside an even spread's). Minutes, not
the hour of a closed-loop evaluation; it says nothing about closed-loop drift. Exit codes: 0 checked,
2 refused (the reason is printed).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from internvla_ros.cli.groups import add_noise_scale, add_verb
from internvla_ros.cli.model_info import model_verbs
from internvla_ros.learning.chunk_check import ChunkCheckError, ChunkCheckOptions, check_chunks, format_report
from internvla_ros.learning.dataset_layout import DatasetError
from internvla_ros.model.errors import ModelError


def command(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    options = ChunkCheckOptions(samples=args.samples, batch_size=args.batch_size, seed=args.seed,
                                noise_scale=args.noise_scale, prefix_delay=args.prefix_delay,
                                instruction=args.instruction, attention=args.attention)
    cache = Path(args.cache) if args.cache else Path(args.dataset) / "cache"
    try:
        report = check_chunks(Path(args.model), Path(args.dataset), cache, options)
    except (ChunkCheckError, DatasetError, ModelError, OSError) as err:
        print(f"ERROR: {err}", file=sys.stderr)
        return 2
    print(format_report(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_verb(model_verbs(subparsers), "check-chunks", "compare a checkpoint's chunks with a dataset's",
                      __doc__)
    parser.add_argument("model", metavar="MODEL", help="checkpoint directory")
    parser.add_argument("--dataset", required=True, help="LeRobot v3.0 dataset (internvla dataset from-bags)")
    parser.add_argument("--samples", type=int, default=256, help="samples drawn from the dataset (default 256)")
    parser.add_argument("--batch-size", type=int, default=16, help="samples per pipeline call (default 16)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the samples and the noise (default 0)")
    add_noise_scale(parser)
    parser.add_argument("--prefix-delay", type=int, default=0,
                        help="give the first D recorded actions as the executed prefix (default 0)")
    parser.add_argument("--instruction", default=None, metavar="TEXT",
                        help="also sample under this instruction and report how much the chunks change")
    parser.add_argument("--attention", action="store_true",
                        help="also report where the action tokens look (camera, prompt, foresight, state, action)")
    parser.add_argument("--cache", default=None, help="decoded frames (default: DATASET/cache, reused)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--json", default=None, metavar="PATH", help="write the report as JSON")
    parser.set_defaults(func=command)
