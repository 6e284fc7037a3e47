"""``internvla demo``: the simulated cell and the policy node in a closed loop, recorded and summarised.

Usage examples::

    internvla demo                                  # dual-arm cell, 30 s, results in out/demo
    internvla demo --cell conveyor_sorting --duration 60 --out /tmp/conveyor
    internvla demo --stress 2                       # two CPU-burning processes beside the cell
    internvla demo --remote                         # the policy served by `internvla serve`, the node its client

Writes OUT/summary.json, OUT/recording/ (an mcap rosbag2 of inputs and commands), OUT/joints.png and
the two nodes' logs, replacing those of a previous run in OUT. Runs on a DDS domain of its own, kept on
this machine. Exits 1 when the sim saw the executed motion leave a limit (position, velocity or
acceleration) or a process crashed, 2 when the demo could not run.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from internvla_ros.cli.groups import add_verb
from internvla_ros.runtime.errors import PolicyRuntimeError

CELLS = ("dual_arm", "conveyor_sorting")


def command(args: argparse.Namespace) -> int:
    from internvla_ros.ros.demo import demo_failed, run_demo  # rclpy is needed only by this verb

    if args.stress < 0:
        print(f"ERROR: --stress takes a number of processes >= 0, got {args.stress}", file=sys.stderr)
        return 2
    try:
        summary = run_demo(args.cell, args.duration, args.out, model=args.model, domain_id=args.domain_id,
                           stress=args.stress, remote=args.remote)
    except (FileNotFoundError, RuntimeError, ValueError, PolicyRuntimeError) as err:
        print(f"ERROR: {err}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2))
    print(f"summary: {args.out / 'summary.json'}  recording: {args.out / 'recording'}  plot: {args.out / 'joints.png'}")
    return 1 if demo_failed(summary) else 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_verb(subparsers, "demo", "the simulated cell and the policy node in a closed loop", __doc__)
    parser.add_argument("--cell", choices=CELLS, default="dual_arm")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of closed loop after start-up")
    parser.add_argument("--out", type=Path, default=Path("out/demo"), help="output directory")
    parser.add_argument("--model", type=Path, default=None, help="checkpoint directory (default: models/default)")
    parser.add_argument("--domain-id", type=int, default=None, help="ROS_DOMAIN_ID (default: a free one in 1-100)")
    parser.add_argument("--stress", type=int, default=0, metavar="N",
                        help="run N CPU-burning processes beside the cell for the whole run (default: 0)")
    parser.add_argument("--remote", action="store_true",
                        help="serve the policy with `internvla serve` (started here) and make the node its client")
    parser.set_defaults(func=command)
