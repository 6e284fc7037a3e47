"""``internvla bench runtime``: control-loop period jitter at 50 Hz while the default model infers nonstop.

Usage examples::

    internvla bench runtime                       # 60 s, prints a table, last line jitter_p99_ms=...
    internvla bench runtime --duration 20 --json out/bench_runtime.json

The layout is the policy node's: a control thread on an rclpy clock, an inference thread, and the model
in an inference worker process (pinned to --threads torch threads), on the same machine.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from internvla_ros.cli.bench_model import bench_verbs
from internvla_ros.cli.groups import add_verb
from internvla_ros.model.errors import ModelError
from internvla_ros.runtime.driver import DEFAULT_CONTROL_PRIORITY
from internvla_ros.runtime.errors import PolicyRuntimeError

TABLE_KEYS = ("control_rate_hz", "ticks", "jitter_p50_ms", "jitter_p99_ms", "jitter_max_ms", "missed_control_ticks",
              "chunks", "inference_rate_hz", "inference_latency_mean_ms", "inference_overruns", "inference_threads",
              "control_priority")


def command(args: argparse.Namespace) -> int:
    from internvla_ros.ros.bench_runtime import run_benchmark, write_json  # needs rclpy

    try:
        result = run_benchmark(args.duration, model=args.model, cell=args.cell, threads=args.threads,
                               control_priority=args.control_priority,
                               progress=lambda text: print(text, file=sys.stderr))
    except (ModelError, PolicyRuntimeError, OSError) as err:
        print(f"ERROR: {err}", file=sys.stderr)
        return 2
    for key in TABLE_KEYS:
        print(f"{key:>28}  {result[key]}")
    if args.json:
        write_json(result, args.json)
    print(f"jitter_p99_ms={result['jitter_p99_ms']}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_verb(bench_verbs(subparsers), "runtime", "control-loop jitter while the default model infers nonstop",
                      __doc__)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of measurement (default 60)")
    parser.add_argument("--json", type=Path, default=None, help="also write the result as JSON")
    parser.add_argument("--model", type=Path, default=None, help="checkpoint directory (default: models/default)")
    parser.add_argument("--cell", default="dual_arm", help="robot config in config/ (default dual_arm)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the inference worker")
    parser.add_argument("--control-priority", type=int, default=DEFAULT_CONTROL_PRIORITY,
                        help="SCHED_FIFO priority of the control thread, as policy_node's control_priority "
                             f"(default {DEFAULT_CONTROL_PRIORITY}; 0: normal scheduling)")
    parser.set_defaults(func=command)
