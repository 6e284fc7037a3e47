"""``internvla bench replay``: how much faster than real time a bag replays through the policy.

Usage examples::

    internvla bench replay out/demo/recording --config conveyor_sorting.yaml --model models/default
    internvla bench replay bags/run_01 --config conveyor_sorting.yaml --model models/default --json bench.json

Runs one full replay (as ``internvla replay``, writing nothing) and reports ``speed_x_real_time``
(bag seconds per wall second of the replay loop, model loading excluded), ``wall_s``, ``bag_s``,
``model_load_s``, ``max_rss_mb`` (peak resident memory of this process), the chunk count and the
median wall time of one inference request (with ``--batch`` > 1 most requests find their chunk computed
ahead, so this is the replay loop's wait, not the model's time). ``threads``: the replay loop, plus the
look-ahead thread that batches inference when ``batch`` > 1; every torch op runs on one thread (two
spin-wait on a shared CPU).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

from internvla_ros.cli.bench_model import bench_verbs
from internvla_ros.cli.groups import add_backend, add_verb
from internvla_ros.paths import config_path
from internvla_ros.replay.driver import DEFAULT_BATCH, DEFAULT_INFERENCE_LATENCY_NS
from internvla_ros.replay.errors import ReplayError
from internvla_ros.runtime.config import NS_PER_S

MS = 1_000_000
EXIT_OK, EXIT_UNUSABLE = 0, 2


def measure(bag: Path, config: Path, model: Path, dtype: str = "float32",
            inference_latency_ms: float = DEFAULT_INFERENCE_LATENCY_NS / MS, instruction: str = "",
            batch: int = DEFAULT_BATCH, backend: str = "torch") -> dict[str, Any]:
    """One replay of ``bag``; the figures ``bench replay`` prints (raises ReplayError for unusable input)."""
    from internvla_ros.replay.pipeline import ReplayRequest, run_replay  # torch-heavy

    request = ReplayRequest(bag=bag, config=config, model=model, dtype=dtype,
                            inference_latency_ns=round(inference_latency_ms * MS), instruction=instruction,
                            batch=batch, backend=backend)
    outcome = run_replay(request)
    latencies = outcome.stats.wall_latency_ns
    return {
        "bag": str(bag), "config": str(config), "model": str(model), "dtype": dtype, "backend": backend,
        "batch": outcome.batch, "threads": outcome.threads,
        "speed_x_real_time": round(outcome.speed, 3),
        "wall_s": round(outcome.wall_s, 3),
        "bag_s": round(outcome.bag.duration_ns / NS_PER_S, 3),
        "model_load_s": round(outcome.model_load_s, 3),
        "max_rss_mb": round(outcome.maxrss_mib, 1),
        "chunks": outcome.stats.chunks,
        "inferences": len(latencies),
        "precomputed": outcome.precomputed,
        "inference_ms_median": round(statistics.median(latencies) / MS, 2) if latencies else None,
    }


def command(args: argparse.Namespace) -> int:
    """Entry point of ``internvla bench replay``."""
    if args.inference_latency_ms < 0:
        print("ERROR: --inference-latency-ms must be >= 0", file=sys.stderr)
        return EXIT_UNUSABLE
    try:
        result = measure(Path(args.bag), config_path(args.config), Path(args.model), args.dtype,
                         args.inference_latency_ms, args.instruction, args.batch, args.backend)
    except ReplayError as err:
        print(f"ERROR: {err}", file=sys.stderr)
        return EXIT_UNUSABLE
    width = max(len(key) for key in result)
    for key, value in result.items():
        print(f"{key:<{width}}  {value}")
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return EXIT_OK


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_verb(bench_verbs(subparsers), "replay", "replay speed of a bag (times real time) and peak memory",
                      __doc__)
    parser.add_argument("bag", metavar="BAG", help="rosbag2 directory (mcap or sqlite3) or a single storage file")
    parser.add_argument("--config", required=True, help="robot config YAML (a name in config/ or a path)")
    parser.add_argument("--model", required=True, help="checkpoint directory (with stats.json)")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--inference-latency-ms", type=float, default=DEFAULT_INFERENCE_LATENCY_NS / MS,
                        help="modelled observation-to-chunk latency in bag time (default %(default)s)")
    parser.add_argument("--instruction", default="",
                        help="the instruction for the whole replay (default: the bag's instruction topic)")
    parser.add_argument("--batch", type=int, default=DEFAULT_BATCH,
                        help="observations per inference batch, computed ahead in a second thread (default "
                        "%(default)s; 1: each inline, one thread)")
    add_backend(parser)
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the figures here")
    parser.set_defaults(func=command)
