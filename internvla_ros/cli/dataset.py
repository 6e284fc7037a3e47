"""``internvla dataset from-bags``: rosbag2 recordings -> a LeRobotDataset v3.0 for fine-tuning.

Usage examples::

    internvla dataset from-bags bags/sort_01 bags/sort_02 --config conveyor_sorting.yaml --out datasets/sort
    internvla dataset from-bags bags/teleop_* --config my_arm.yaml --out datasets/teleop \\
        --action-topic leader/joint_states --fps 30

observation.state comes from joint_states (the config's joints, in config order), each camera becomes
observation.images.<camera> (mp4), the task is the bag's instruction topic (or --instruction), and the
action is what the config's controllers executed from the recorded commands (or, for a teleoperated
robot, the --action-topic: a leader arm's JointState or a Float64MultiArray in config order). Frames
are sampled at --fps (default: the config's chunk_step_hz) and never paired with a later message; frames
without fresh data are dropped and counted. As LeRobot, data and video files are split at episode boundaries
once they reach --data-file-size-mb / --video-file-size-mb (100 / 200). Exit codes: 0 written, 2 unusable
input (the reason on stderr).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from internvla_ros.cli.groups import add_verb, verb_group
from internvla_ros.learning.dataset_convert import ConversionOptions, ConversionReport, convert_bags
from internvla_ros.learning.dataset_layout import DATA_FILES_SIZE_IN_MB, VIDEO_FILES_SIZE_IN_MB, DatasetError
from internvla_ros.learning.dataset_video import CODECS
from internvla_ros.paths import config_path
from internvla_ros.replay.errors import ReplayError

EXIT_OK, EXIT_UNUSABLE = 0, 2


def summary(report: ConversionReport, out: Path) -> list[str]:
    lines = [f"dataset: {out} (LeRobot v3.0, robot_type {report.info['robot_type']}, fps {report.info['fps']})",
             f"frames: {report.frames} in {report.episodes} episodes from {report.bags} bags "
             f"({report.bag_seconds:.1f} s of recording)",
             f"conversion: {report.wall_s:.1f} s, {report.frames_per_s:.1f} frames/s"]
    if report.dropped:
        lines.append("dropped frames: " + ", ".join(f"{k} {v}" for k, v in sorted(report.dropped.items())))
    invalid = {k: v for k, v in report.invalid.items() if v}
    if invalid:
        lines.append("refused inputs: " + ", ".join(f"{k} {v}" for k, v in sorted(invalid.items())))
    return lines


def command(bags: list[Path], config: Path, out: Path, options: ConversionOptions) -> int:
    """Converts ``bags`` to a dataset at ``out``; prints a summary; returns the exit code."""
    try:
        report = convert_bags(bags, config, out, options,
                              announce=lambda text: print(f"dataset: {text}", file=sys.stderr, flush=True))
    except (ReplayError, DatasetError) as err:
        print(f"ERROR: {err}", file=sys.stderr)
        return EXIT_UNUSABLE
    print("\n".join(summary(report, out)))
    return EXIT_OK


def _run(args: argparse.Namespace) -> int:
    options = ConversionOptions(fps=args.fps, action_topic=args.action_topic, namespace=args.namespace,
                                remaps=tuple(args.remap), instruction=args.instruction,
                                max_state_age_s=args.max_state_age, max_camera_age_s=args.max_camera_age,
                                max_action_age_s=args.max_action_age,
                                codec=args.codec, force=args.force, data_file_size_mb=args.data_file_size_mb,
                                video_file_size_mb=args.video_file_size_mb)
    return command([Path(b) for b in args.bags], config_path(args.config), Path(args.out), options)


def register(subparsers: argparse._SubParsersAction) -> None:
    verbs = verb_group(subparsers, "dataset", "make LeRobot v3.0 datasets from recordings")
    parser = add_verb(verbs, "from-bags", "rosbag2 recordings -> LeRobot v3.0 dataset", __doc__)
    parser.add_argument("bags", nargs="+", metavar="BAG", help="rosbag2 directories (or .mcap/.db3 files)")
    parser.add_argument("--config", required=True, help="robot config YAML (a name in config/ or a path)")
    parser.add_argument("--out", required=True, help="dataset directory to write")
    parser.add_argument("--fps", type=float, default=None, help="dataset rate (default: the config's chunk_step_hz)")
    parser.add_argument("--action-topic", default=None,
                        help="teleoperation: the leader arm's JointState (or Float64MultiArray) topic")
    parser.add_argument("--namespace", default=None, help="namespace of the robot's topics in the bags")
    parser.add_argument("--remap", action="append", default=[], metavar="FROM:=TO",
                        help="topic remap, e.g. joint_states:=/robot/joint_states (repeatable)")
    parser.add_argument("--instruction", default=None, help="task text for every frame (replaces the bag's)")
    parser.add_argument("--max-state-age", type=float, default=None, metavar="S",
                        help="oldest joint state a frame may use (default: safety.joint_state_max_age_s)")
    parser.add_argument("--max-camera-age", type=float, default=None, metavar="S",
                        help="oldest camera frame a frame may use (default: safety.camera_max_age_s)")
    parser.add_argument("--max-action-age", type=float, default=None, metavar="S",
                        help="oldest forward command / action-topic message (default: forward commands are "
                             "held as the controller holds them; the action topic: the joint-state age)")
    parser.add_argument("--codec", choices=sorted(CODECS), default="h264",
                        help="h264: 4:4:4 CRF 0, decoded within 2/255 (default); av1: LeRobot's default, lossy")
    parser.add_argument("--force", action="store_true", help="replace an existing dataset at --out")
    parser.add_argument("--data-file-size-mb", type=float, default=DATA_FILES_SIZE_IN_MB, metavar="MB",
                        help="start a new data file after an episode once the current one holds this much "
                             f"(default {DATA_FILES_SIZE_IN_MB}, as LeRobot)")
    parser.add_argument("--video-file-size-mb", type=float, default=VIDEO_FILES_SIZE_IN_MB, metavar="MB",
                        help="likewise for each camera's video files (default "
                             f"{VIDEO_FILES_SIZE_IN_MB}, as LeRobot)")
    parser.set_defaults(func=_run)
