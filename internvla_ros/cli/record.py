"""``internvla record``: the scripted expert sorts parcels in the simulated cell, one rosbag2 per episode.

Usage examples::

    internvla record --cell conveyor_sorting --episodes 50 --seed 0 --out data/sorting_bags
    internvla record --episodes 2 --parcels 1 --out /tmp/bags       # a quick look
    internvla record --episodes 20 --perturb-px 30 --out data/recovery_bags  # with recoveries
    internvla record --episodes 20 --lanes-mm 12.5 37.5 --out data/near_bags  # the lanes nearest the arm

Runs sim_robot and expert_node over ROS (a DDS domain of their own, kept on this machine) and writes
OUT/episode_0000/ ... (mcap rosbag2: joint_states, every command on the controller topics, the
instruction, head and wrist cameras as JPEG at 10 Hz, task/state, task/outcome, task/summary in the
namespace /sorting), OUT/episodes.jsonl (one summary per episode) and the two nodes' logs in OUT/logs.
Episode i uses seed S + i and rule variant (S + i) % 2; ``--both-rules`` records each seed under both
rules instead (episodes 2k and 2k + 1 use seed S + k), so that only the instruction tells the bins
apart in the demonstrations. ``--red-share P`` recolours the same layouts so that each parcel is red with
probability P: with both rules and equal colours neither the word nor the colour alone tells the bin, and a
model without language knowledge was measured not to learn the rule from such data (see
``internvla_ros.learning.record``). Seeds from 1000000 on are held out for
`internvla eval` and refused here. Exits 1 when an episode sorted a parcel wrong, dropped or missed
one, 2 when the recording could not run, 130 when interrupted (Ctrl-C): the finished episodes' bags stay, and
the bag of the episode under way is renamed OUT/interrupted_episode_NNNN, out of `episode_*`'s way.
``--perturb-px P`` records recoveries: most approaches first go to a random point up to P head-camera pixels
off the intercept and then correct onto it (400 px = 1 m).
``--stop-belt`` records grasps at rest: the expert stops the belt once a parcel is well inside the pick
zone, grasps it where it lies and restarts the belt when it holds it. ``--lanes-mm MIN MAX`` moves the
same parcels across the belt to lie MIN..MAX mm from its centre line (+ toward the arm): more
demonstrations on the side where a policy fails (`internvla eval` reports success by lane).
``--aim centre-line`` makes the expert wait for every parcel with its gripper tip on the belt's centre line
instead of on the parcel's own lane: the grasp radius (5.5 cm) covers every lane (+-3.75 cm), so the
demonstrated waiting pose no longer depends on a lane offset that the head camera shows as a few pixels.
``--aim near-half`` does so only for the lanes nearer the arm than the centre line and meets the others on
their own lane (policies cloned from `lane` fail most near the arm, those from `centre-line` on the far side).
``--aim near-midway`` meets the near lanes halfway between their lane and the centre line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from internvla_ros.cli.groups import add_verb
from internvla_ros.runtime.errors import PolicyRuntimeError
from internvla_ros.sim.expert import AIMS


def command(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from internvla_ros.learning.record import check_training_seeds, episode_specs
    from internvla_ros.ros.episodes import EpisodesInterrupted, run_episodes, task_defaults  # rclpy only here

    try:
        if not 0.0 <= args.perturb_px <= 100.0:
            raise ValueError(f"--perturb-px {args.perturb_px}: give 0 (no perturbation) to 100 pixels")
        parcels = args.parcels or task_defaults(args.cell).parcels
        lanes_m = None if args.lanes_mm is None else (args.lanes_mm[0] / 1000.0, args.lanes_mm[1] / 1000.0)
        specs = episode_specs(args.seed, args.episodes, parcels, args.both_rules, args.red_share, lanes_m)
        check_training_seeds(args.seed, specs[-1].seed)
        existing = [p for p in (args.out / f"episode_{s.episode:04d}" for s in specs) if p.exists()]
        if existing:
            raise ValueError(f"{existing[0]} exists: choose another --out or remove the old recording")
        args.out.mkdir(parents=True, exist_ok=True)
        bar = tqdm(total=len(specs), unit="episode", desc="record")
        sorted_right = total = 0
        began = time.monotonic()
        with (args.out / "episodes.jsonl").open("w") as jsonl:
            def progress(summary: dict) -> None:
                nonlocal sorted_right, total
                sorted_right, total = sorted_right + summary["right"], total + summary["parcels"]
                jsonl.write(json.dumps(summary) + "\n")
                jsonl.flush()
                bar.set_postfix(right=f"{sorted_right}/{total}")
                bar.update()

            summaries = run_episodes(args.cell, specs, "expert", args.out / "logs", record_dir=args.out,
                                     progress=progress, show=bar.write, perturb_px=args.perturb_px,
                                     stop_belt=args.stop_belt, aim=args.aim)
        bar.close()
    except EpisodesInterrupted as stop:
        bar.close()
        print(f"interrupted after {len(stop.summaries)} of {len(specs)} episodes: {sorted_right}/{total} parcels "
              f"sorted right in the finished ones", file=sys.stderr)
        if stop.incomplete is not None and stop.incomplete.exists():
            kept = stop.incomplete.with_name(f"interrupted_{stop.incomplete.name}")
            stop.incomplete.rename(kept)
            print(f"the episode under way is kept as {kept}, out of episode_*", file=sys.stderr)
        return 130
    except (FileNotFoundError, RuntimeError, ValueError, PolicyRuntimeError) as err:
        print(f"ERROR: {err}", file=sys.stderr)
        return 2
    elapsed = time.monotonic() - began
    print(f"recorded {len(summaries)} episodes in {args.out} ({elapsed / len(summaries):.1f} s per episode): "
          f"{sorted_right}/{total} parcels sorted right")
    return 0 if sorted_right == total else 1


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_verb(subparsers, "record", "record scripted-expert episodes of the sorting task as rosbags", __doc__)
    parser.add_argument("--cell", choices=("conveyor_sorting",), default="conveyor_sorting")
    parser.add_argument("--episodes", type=int, default=10, help="number of episodes (default: 10)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first episode (default: 0)")
    parser.add_argument("--parcels", type=int, default=0, help="parcels per episode (default: the config's task)")
    parser.add_argument("--out", type=Path, required=True, help="output directory (one bag per episode)")
    parser.add_argument("--both-rules", action="store_true",
                        help="record each seed under both rules (an even --episodes; episodes 2k, 2k+1: seed S+k)")
    parser.add_argument("--red-share", type=float, default=None,
                        help="probability that a parcel is red, 0-1 (default: both colours equally likely)")
    parser.add_argument("--lanes-mm", type=float, nargs=2, default=None, metavar=("MIN", "MAX"),
                        help="parcels lie MIN..MAX mm from the belt's centre line, + toward the arm (default: the "
                        "task's lane spread, +-37.5 mm)")
    parser.add_argument("--perturb-px", type=float, default=0.0,
                        help="record recoveries: approaches first end up to this far off the intercept (default 0)")
    parser.add_argument("--stop-belt", action="store_true",
                        help="the expert stops the belt for each grasp and restarts it once it holds the parcel")
    parser.add_argument("--aim", choices=AIMS, default="lane",
                        help="where across the belt the expert meets a parcel: its own lane (default), the belt's "
                        "centre line (the grasp radius covers every lane), or the centre line for the lanes nearer "
                        "the arm only (near-half), or halfway to it for those lanes (near-midway)")
    parser.set_defaults(func=command)
