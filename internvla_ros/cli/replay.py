"""Run a recorded bag through the policy offline, in bag time, deterministically (``internvla replay``).

Usage examples::

    internvla replay out/demo/recording --config config/conveyor_sorting.yaml --model models/default
    internvla replay bags/sorting_01 --config config/conveyor_sorting.yaml --model models/default \\
        --out replays/sorting_01 --report replays/sorting_01_report
    internvla replay bags/sorting_01 --config conveyor_sorting.yaml --model models/default \\
        --golden replays/sorting_01 --tolerance tolerance.yaml     # regression check: exit 1 if it drifted
    internvla replay bags/cell_2 --config dual_arm.yaml --model models/default --namespace /cell_2 \\
        --remap joint_states:=/cell_2/robot/joint_states

The namespace is the one the bag holds every input topic under (said on stderr; several: choose with
--namespace); the instruction is the bag's instruction topic, each change at its bag time, unless
--instruction replaces it.

Exit codes: 0 ran (and within tolerance), 1 ran and out of tolerance, 2 unusable input or configuration.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from internvla_ros.cli.groups import add_backend, add_noise_scale, add_verb
from internvla_ros.paths import config_path
from internvla_ros.replay.driver import DEFAULT_BATCH, DEFAULT_INFERENCE_LATENCY_NS, DEFAULT_STATUS_PERIOD_NS
from internvla_ros.replay.errors import ReplayError
from internvla_ros.replay.reader import BagInfo
from internvla_ros.runtime.config import NS_PER_S

MS = 1_000_000
EXIT_OK, EXIT_OUT_OF_TOLERANCE, EXIT_UNUSABLE = 0, 1, 2


def command(bag: Path, config: Path, model: Path, out: Path | None = None, golden: Path | None = None,
            report: Path | None = None, tolerance: Path | None = None, namespace: str | None = None,
            remaps: tuple[str, ...] = (), inference_latency_ms: float = DEFAULT_INFERENCE_LATENCY_NS / MS,
            status_rate_hz: float = NS_PER_S / DEFAULT_STATUS_PERIOD_NS, instruction: str = "", seed: int = 0,
            dtype: str = "float32", tokenizer: Path | None = None, force: bool = False, progress: bool = True,
            batch: int = DEFAULT_BATCH, noise_scale: float = 1.0, backend: str = "torch") -> int:
    """Replays ``bag``; prints a summary, writes ``out``/``report``, compares with ``golden``.

    ``command(Path("bags/run_01"), Path("config/conveyor_sorting.yaml"), Path("models/default"),
    out=Path("replays/run_01"))`` writes the bag; adding ``golden=Path("replays/run_00")`` returns 1
    when a joint, the command timing or the chunk set moved beyond the tolerance.
    """
    from internvla_ros.replay.pipeline import ReplayRequest, run_replay  # torch: after argument parsing
    from internvla_ros.replay.report import summary_lines, write_report

    if inference_latency_ms < 0 or status_rate_hz <= 0:
        print("ERROR: --inference-latency-ms must be >= 0 and --status-rate-hz > 0", file=sys.stderr)
        return EXIT_UNUSABLE
    if not 0.0 <= noise_scale <= 1.0:
        print(f"ERROR: --noise-scale {noise_scale}: use 0 to 1 (1: as trained)", file=sys.stderr)
        return EXIT_UNUSABLE
    request = ReplayRequest(
        bag=bag, config=config, model=model, out=out, golden=golden, report=report, tolerance=tolerance,
        namespace=namespace, remaps=remaps, inference_latency_ns=round(inference_latency_ms * MS),
        status_period_ns=round(NS_PER_S / status_rate_hz), instruction=instruction, seed=seed, dtype=dtype,
        tokenizer=tokenizer, overwrite=force, batch=batch, noise_scale=noise_scale, backend=backend)
    console = Console(stderr=True)
    try:
        if progress and console.is_terminal:
            with Progress(TextColumn("replay"), BarColumn(), TextColumn("{task.fields[bag_s]}"), TimeElapsedColumn(),
                          console=console, transient=True) as bar:
                outcome = run_replay(request, progress=_progress(bar), announce=_announce)
        else:
            outcome = run_replay(request, announce=_announce)
        if report is not None:
            write_report(outcome, report)
    except ReplayError as err:
        print(f"ERROR: {err}", file=sys.stderr)
        return EXIT_UNUSABLE
    print("\n".join(summary_lines(outcome)))
    if outcome.comparison is not None and not outcome.comparison.ok:
        return EXIT_OUT_OF_TOLERANCE
    return EXIT_OK


def _announce(text: str) -> None:
    print(f"replay: {text}", file=sys.stderr, flush=True)


def _progress(bar: Progress) -> Callable[[BagInfo], Callable[[int], None]]:
    def start(bag: BagInfo) -> Callable[[int], None]:
        task = bar.add_task("replay", total=max(1, bag.duration_ns), bag_s="")

        def update(now_ns: int) -> None:
            done = now_ns - bag.start_ns
            bar.update(task, completed=done, bag_s=f"{done / NS_PER_S:.1f}/{bag.duration_ns / NS_PER_S:.1f} s bag")

        return update

    return start


def _run(args: argparse.Namespace) -> int:
    return command(
        bag=Path(args.bag), config=config_path(args.config), model=Path(args.model),
        out=Path(args.out) if args.out else None, golden=Path(args.golden) if args.golden else None,
        report=Path(args.report) if args.report else None, tolerance=Path(args.tolerance) if args.tolerance else None,
        namespace=args.namespace, remaps=tuple(args.remap), inference_latency_ms=args.inference_latency_ms,
        status_rate_hz=args.status_rate_hz, instruction=args.instruction, seed=args.seed, dtype=args.dtype,
        tokenizer=Path(args.tokenizer) if args.tokenizer else None, force=args.force,
        progress=not args.no_progress, batch=args.batch, noise_scale=args.noise_scale, backend=args.backend)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_verb(subparsers, "replay",
                      "run a recorded bag through the policy offline and check it against a golden bag", __doc__)
    parser.add_argument("bag", metavar="BAG", help="rosbag2 directory (mcap or sqlite3) or a single storage file")
    parser.add_argument("--config", required=True, help="robot config YAML (a name in config/ or a path)")
    parser.add_argument("--model", required=True, help="checkpoint directory (with stats.json)")
    parser.add_argument("--out", metavar="OUT_BAG", help="write the node's outputs to this new mcap bag")
    parser.add_argument("--golden", metavar="GOLDEN_BAG",
                        help="compare with this bag's command topics (a previous replay, or the input bag itself)")
    parser.add_argument("--tolerance", metavar="FILE", help="tolerance YAML for --golden (defaults are strict)")
    parser.add_argument("--report", metavar="DIR", help="write report.md and PNG plots here")
    parser.add_argument("--namespace", help="the node's namespace (default: the one namespace holding every input "
                        "topic the config expects, e.g. /demo)")
    parser.add_argument("--remap", action="append", default=[], metavar="FROM:=TO", help="topic remap, repeatable")
    parser.add_argument("--inference-latency-ms", type=float, default=DEFAULT_INFERENCE_LATENCY_NS / MS,
                        help="modelled observation-to-chunk latency in bag time (default %(default)s)")
    parser.add_argument("--status-rate-hz", type=float, default=NS_PER_S / DEFAULT_STATUS_PERIOD_NS,
                        help="PolicyStatus rate (default %(default)s, as the node)")
    parser.add_argument("--instruction", default="",
                        help="the instruction for the whole replay (default: the bag's instruction topic)")
    parser.add_argument("--seed", type=int, default=0, help="the policy's noise seed (default 0)")
    add_noise_scale(parser)
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--tokenizer", help="tokenizer directory (default: the packaged Qwen vocabulary)")
    parser.add_argument("--batch", type=int, default=DEFAULT_BATCH,
                        help="observations per inference batch, computed ahead in a second thread (default "
                        "%(default)s; 1: each inline when due, one thread). Chunks agree within 1e-5 either way")
    add_backend(parser)
    parser.add_argument("--force", action="store_true", help="replace an existing --out bag")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=_run)
