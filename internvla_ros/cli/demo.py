"""``internvla demo``: the simulated cell and the policy node in a closed loop, recorded and summarised.

Usage examples::

    internvla demo                                  # dual-arm cell, 30 s, results in out/demo
    internvla demo --cell conveyor_sorting --duration 60 --out /tmp/conveyor

Writes OUT/summary.json, OUT/recording/ (an mcap rosbag2 of inputs and commands), OUT/joints.png and
the two nodes' logs. Runs on a DDS domain of its own, kept on this machine.
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
    from internvla_ros.ros.demo import run_demo  # rclpy is needed only by this verb

    try:
        summary = run_demo(args.cell, args.duration, args.out, model=args.model, domain_id=args.domain_id)
    except (FileNotFoundError, FileExistsError, RuntimeError, PolicyRuntimeError) as err:
        print(f"ERROR: {err}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2))
    print(f"summary: {args.out / 'summary.json'}  recording: {args.out / 'recording'}  plot: {args.out / 'joints.png'}")
    return 0 if summary["limit_violations"] == 0 else 1


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_verb(subparsers, "demo", "the simulated cell and the policy node in a closed loop", __doc__)
    parser.add_argument("--cell", choices=CELLS, default="dual_arm")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of closed loop after start-up")
    parser.add_argument("--out", type=Path, default=Path("out/demo"), help="output directory")
    parser.add_argument("--model", type=Path, default=None, help="checkpoint directory (default: models/default)")
    parser.add_argument("--domain-id", type=int, default=None, help="ROS_DOMAIN_ID (default: a random one in 1-100)")
    parser.set_defaults(func=command)
