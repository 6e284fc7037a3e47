"""``internvla eval``: closed-loop success rate of a policy on held-out sorting episodes, over ROS.

Usage examples::

    internvla eval --cell conveyor_sorting --model models/sorting --episodes 20 --json out/eval.json
    internvla eval --policy expert --episodes 5        # the scripted expert's baseline
    internvla eval --policy random --episodes 5        # the random baseline
    internvla eval --model models/sorting --execution rtc --added-latency-ms 200   # RTC against 200 ms more delay

Runs sim_robot with the policy node (`--policy internvla`, the model from `--model`, actuation on) or with
expert_node (`expert`, `random`) as processes on a DDS domain of their own, on seeds S, S+1, ... (default S =
1000000: the held-out range that `internvla record` never uses). Prints each episode's outcomes, the success
rate (parcels sorted into the right bin / parcels) and parcels sorted right per minute; `--json PATH` writes
them with `success_rate`, `episodes`, `parcels`, `parcels_per_minute` and `per_episode`. `--execution MODE`
runs the policy node in that execution mode (one of the config's execution modes; default: the cell's config)
and `--added-latency-ms L` holds every chunk L ms after its inference before the runtime takes it (the node's
`added_latency_ms`), as a slower model or network would: the measured delay, which delay compensation and
real-time chunking use, includes it. `--backend NAME` runs the node's inference on that backend
(`onnxruntime`: the model's ONNX export, made on first use and cached). `--noise-scale S` scales the
flow-matching sampler's starting noise (the node's `noise_scale`; 0: every chunk from the noise's mean). All
four are recorded in the report. With the policy node, the report's `node` holds its counters over the
episodes (chunks computed and dropped, stale inputs, overruns, clamped commands, inference latency p50), each
episode's own in its entry. `--record DIR` writes one rosbag2 per episode, as `internvla record` does: the
inputs a policy saw and the commands it sent, e.g. for a replay regression bag. Exits 0 when it ran, 2 when it
could not, 130 when interrupted (Ctrl-C): the episodes finished by then are still reported (and written to
`--json`, with `"interrupted": true`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from internvla_ros.cli.groups import add_noise_scale, add_verb
from internvla_ros.runtime.errors import PolicyRuntimeError


def command(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from internvla_ros.learning.eval import aggregate, format_report, model_identity
    from internvla_ros.learning.record import EVAL_SEED_START, episode_specs
    from internvla_ros.paths import config_path
    from internvla_ros.ros.episodes import EpisodesInterrupted, run_episodes, task_defaults  # rclpy only here
    from internvla_ros.sim.render import wrist_tip_at_from_yaml

    interrupted = False
    try:
        overrides = policy_overrides(args)
        parcels = args.parcels or task_defaults(args.cell).parcels
        specs = episode_specs(args.seed, args.episodes, parcels)
        if args.seed < EVAL_SEED_START:
            print(f"note: seeds below {EVAL_SEED_START} are the training recordings' range", file=sys.stderr)
        bar = tqdm(total=len(specs), unit="episode", desc=f"eval {args.policy}")
        summaries = run_episodes(args.cell, specs, args.policy, args.logs, record_dir=args.record, model=args.model,
                                 progress=lambda _: bar.update(), show=bar.write, policy_parameters=overrides)
        bar.close()
    except EpisodesInterrupted as stop:
        bar.close()
        summaries, interrupted = stop.summaries, True
        print(f"interrupted after {len(summaries)} of {len(specs)} episodes", file=sys.stderr)
        if not summaries:
            return 130
    except (FileNotFoundError, RuntimeError, ValueError, PolicyRuntimeError) as err:
        print(f"ERROR: {err}", file=sys.stderr)
        return 2
    model = args.model if args.policy == "internvla" and args.model else None
    report = aggregate(summaries, cell=args.cell, policy=args.policy, model=str(model) if model else None,
                       **({"model_identity": model_identity(model)} if model else {}), seed=args.seed,
                       backend=args.backend, execution=args.execution, added_latency_ms=args.added_latency_ms,
                       noise_scale=args.noise_scale,
                       wrist_tip_at=wrist_tip_at_from_yaml(config_path(f"{args.cell}.yaml")),
                       **({"interrupted": True} if interrupted else {}))
    print(format_report(report))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 130 if interrupted else 0


def policy_overrides(args: argparse.Namespace) -> list[str]:
    """The policy node parameters ``--backend``, ``--execution``, ``--added-latency-ms`` and ``--noise-scale`` ask
    for (checked here)."""
    from internvla_ros.backends.factory import BACKEND_NAMES
    from internvla_ros.runtime.config import EXECUTION_MODES

    overrides = []
    if args.backend is not None:
        if args.backend not in BACKEND_NAMES:
            raise ValueError(f"--backend {args.backend}: use one of {', '.join(BACKEND_NAMES)}")
        overrides.append(f"backend:={args.backend}")
    if args.execution is not None:
        if args.execution not in EXECUTION_MODES:
            raise ValueError(f"--execution {args.execution}: use one of {', '.join(EXECUTION_MODES)}")
        overrides.append(f"execution.mode:={args.execution}")
    if args.added_latency_ms:
        if not 0.0 <= args.added_latency_ms <= 5000.0:
            raise ValueError(f"--added-latency-ms {args.added_latency_ms}: use 0 to 5000")
        overrides.append(f"added_latency_ms:={float(args.added_latency_ms)}")
    if args.noise_scale is not None:  # range checked by its argparse type
        overrides.append(f"noise_scale:={float(args.noise_scale)}")
    if overrides and args.policy != "internvla":
        raise ValueError(f"--backend, --execution, --added-latency-ms and --noise-scale apply to --policy internvla, "
                         f"not {args.policy}")
    return overrides


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_verb(subparsers, "eval", "closed-loop success rate on held-out sorting episodes", __doc__)
    parser.add_argument("--cell", choices=("conveyor_sorting",), default="conveyor_sorting")
    parser.add_argument("--model", type=Path, default=None, help="checkpoint directory (default: models/default)")
    parser.add_argument("--policy", choices=("internvla", "expert", "random"), default="internvla")
    parser.add_argument("--episodes", type=int, default=10, help="number of episodes (default: 10)")
    parser.add_argument("--seed", type=int, default=1_000_000, help="seed of the first episode (default: 1000000)")
    parser.add_argument("--parcels", type=int, default=0, help="parcels per episode (default: the config's task)")
    parser.add_argument("--backend", default=None, help="inference backend of the policy node: torch, "
                        "onnxruntime, ... (default: the node's, torch)")
    parser.add_argument("--execution", default=None, help="execution mode of the policy node, e.g. "
                        "delay_compensated or rtc (default: the cell config's)")
    parser.add_argument("--added-latency-ms", type=float, default=0.0,
                        help="hold each chunk this long after inference (default: 0)")
    add_noise_scale(parser, default=None)
    parser.add_argument("--json", type=Path, default=None, help="write the report here")
    parser.add_argument("--record", type=Path, default=None, metavar="DIR",
                        help="also record each episode as a rosbag2 in DIR/episode_NNNN (as `internvla record`)")
    parser.add_argument("--logs", type=Path, default=Path("out/eval"), help="the nodes' logs (default: out/eval)")
    parser.set_defaults(func=command)
