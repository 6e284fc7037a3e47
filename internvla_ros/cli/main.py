"""The `internvla` command: one parser, one sub-command module per verb.

Each module in COMMAND_MODULES exposes ``register(subparsers)``, which adds its parser and sets
``func`` to a callable taking the parsed namespace and returning the exit code.
"""

from __future__ import annotations

import argparse
import importlib
import sys

DESCRIPTION = "internvla_ros tools: parity checks, models, the closed-loop demo, benchmarks, ONNX export, bag replay"

COMMAND_MODULES = [
    "internvla_ros.cli.check_parity",
    "internvla_ros.cli.model_info",
    "internvla_ros.cli.make_default",
    "internvla_ros.cli.demo",
    "internvla_ros.cli.bench_runtime",
    "internvla_ros.cli.bench_model",
    "internvla_ros.cli.gpu_bench",
    "internvla_ros.cli.export",
    "internvla_ros.cli.replay",
    "internvla_ros.cli.serve",
    "internvla_ros.cli.dataset",
    "internvla_ros.cli.model_stats",
    "internvla_ros.cli.model_compact",
    "internvla_ros.cli.model_check",
    "internvla_ros.cli.train",
    "internvla_ros.cli.regress",
    "internvla_ros.cli.bench_serve",
    "internvla_ros.cli.bench_replay",
    "internvla_ros.cli.record",
    "internvla_ros.cli.eval",
    "internvla_ros.cli.eval_table",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="internvla", description=DESCRIPTION)
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
