"""``internvla model add-stats``: a dataset's normalisation statistics into a checkpoint's stats.json.

Usage examples::

    internvla model add-stats models/default --dataset datasets/my_arm --robot-type my_arm
    internvla model add-stats models/ft --dataset datasets/sort --robot-type franka --replace \\
        --config conveyor_sorting.yaml

The node normalises with ``stats.json[robot_type]`` (the config's ``robot_type``); a new arm needs an
entry before the node or the replay can run it. The state statistics are over every frame, the action
statistics over every frame's chunk as the model predicts it (deltas to the state on the config's delta
dims), as InternVLA-A1 computes them. Dimensions must fit the model (max_state_dim, max_action_dim), the
entry it replaces (unless --replace) and, with --config, the robot config. Exit codes: 0 written, 2 refused.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from internvla_ros.cli.groups import add_verb
from internvla_ros.cli.model_info import model_verbs
from internvla_ros.learning.dataset_layout import DatasetError, write_json
from internvla_ros.learning.dataset_reader import open_dataset
from internvla_ros.learning.dataset_stats import StatsError, dataset_model_stats, merge_robot_stats
from internvla_ros.model.checkpoint import STATS_FILE
from internvla_ros.model.config import load_config
from internvla_ros.model.errors import ModelError
from internvla_ros.paths import config_path
from internvla_ros.runtime.config import RuntimeConfig
from internvla_ros.runtime.errors import RuntimeConfigError
from internvla_ros.runtime.node_parameters import NOT_ROBOT_CONFIG


def add_stats(model: Path, dataset: Path, robot_type: str, replace: bool = False, config: Path | None = None) -> str:
    """Writes the entry; returns a one-line summary. Raises DatasetError, StatsError, ModelError, RuntimeConfigError."""
    model_config = load_config(model)
    data = open_dataset(dataset)
    if config is not None:
        robot = RuntimeConfig.from_yaml(config, ignore=NOT_ROBOT_CONFIG)
        if robot.joint_names != data.schema.joint_names:
            raise StatsError(f"{config}: joints {list(robot.joint_names)} differ from the dataset's "
                             f"{list(data.schema.joint_names)}; the statistics would normalise the wrong dims")
        if robot.robot_type != robot_type:
            raise StatsError(f"{config}: robot_type is {robot.robot_type!r}, not {robot_type!r}; the node looks "
                             "its statistics up by the config's robot_type")
    entry = dataset_model_stats(data, model_config.chunk_size)
    path = model / STATS_FILE
    existing = json.loads(path.read_text()) if path.is_file() else {}
    merged = merge_robot_stats(existing, robot_type, entry, model_config.max_state_dim, model_config.max_action_dim,
                               replace=replace)
    write_json(path, merged)
    return (f"{path}: {robot_type!r} statistics from {dataset} ({len(data)} frames, {data.schema.dim} dims; "
            f"actions as {model_config.chunk_size}-step chunks)")


def command(args: argparse.Namespace) -> int:
    try:
        print(add_stats(Path(args.model), Path(args.dataset), args.robot_type, args.replace,
                        config_path(args.config) if args.config else None))
    except (DatasetError, StatsError, ModelError, RuntimeConfigError, OSError, json.JSONDecodeError) as err:
        print(f"ERROR: {err}", file=sys.stderr)
        return 2
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_verb(model_verbs(subparsers), "add-stats", "write a dataset's statistics into a checkpoint", __doc__)
    parser.add_argument("model", metavar="MODEL", help="checkpoint directory (its stats.json is updated)")
    parser.add_argument("--dataset", required=True, help="LeRobot v3.0 dataset (internvla dataset from-bags)")
    parser.add_argument("--robot-type", required=True, help="the key: the robot config's robot_type")
    parser.add_argument("--replace", action="store_true", help="overwrite an entry of other dimensions")
    parser.add_argument("--config", default=None, help="robot config to check the joints and robot_type against")
    parser.set_defaults(func=command)
