"""Replay every bag of a directory as Ray tasks and check each against its golden bag (``internvla regress``).

Usage examples::

    internvla regress bags/ --config conveyor_sorting.yaml --model models/default --record-golden
    internvla regress bags/ --config conveyor_sorting.yaml --model models/new --json regress.json
    internvla regress bags/ --config conveyor_sorting.yaml --model models/new --golden-dir /data/golden \\
        --address ray://head:10001

Bags: every directory in BAGS_DIR holding a rosbag2 (metadata.yaml, .mcap or .db3 files) and every .mcap or
.db3 file there. The golden of bag NAME is GOLDEN_DIR/NAME (default GOLDEN_DIR: BAGS_DIR/golden, which is
not a bag), an output bag of `internvla replay --out`, compared as `internvla replay --golden` does.
A bag without a golden fails ("no golden") and is not replayed; with --record-golden it is replayed and its
output written as its golden (bags that have one are compared as usual: delete a golden to re-record it).

Each bag is one Ray task with 1 CPU and 1 torch thread (a worker loads the model once for all its bags):
a local Ray on this machine by default; with --address, a running cluster, unchanged (the bags, goldens,
config and model must then be at the same paths on every node, with internvla_ros installed there).
A bag that cannot be replayed (damaged, missing topics, a crash) is that bag's failure, with the reason.

Exit codes: 0 every bag passed (or had its golden recorded), 1 a bag failed, 2 the run could not start.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from internvla_ros.cli.groups import add_noise_scale, add_verb
from internvla_ros.paths import config_path
from internvla_ros.replay.reader import METADATA_FILE, STORAGE_SUFFIXES
from internvla_ros.serve.regress_task import NO_GOLDEN, BagJob, BagResult, RegressSettings, crashed, replay_bag

EXIT_PASSED, EXIT_FAILED, EXIT_UNUSABLE = 0, 1, 2
DEFAULT_GOLDEN = "golden"
LOCAL = "local"  # a new Ray instance of our own, even when another one runs on this machine
LOCAL_OBJECT_STORE_BYTES = 128 * 1024**2  # results are a few KiB: keep the local store small
LOCAL_START_ATTEMPTS = 2


def find_bags(directory: Path, skip: Path) -> list[Path]:
    """Bag directories and single storage files directly under ``directory``, by name."""
    found = []
    for entry in sorted(directory.iterdir()):
        if entry.resolve() == skip.resolve():
            continue
        if _storage(entry) or (entry.is_dir() and (
                (entry / METADATA_FILE).is_file() or any(_storage(p) for p in entry.iterdir()))):
            found.append(entry)
    return found


def _storage(path: Path) -> bool:
    return path.is_file() and any(suffix in STORAGE_SUFFIXES for suffix in path.suffixes)


def bag_name(bag: Path) -> str:
    return bag.name if bag.is_dir() else bag.name.split(".")[0]


def regress(bags_dir: Path, settings: RegressSettings, golden_dir: Path | None = None, address: str | None = None,
            record_golden: bool = False, json_path: Path | None = None) -> int:
    """Replays every bag of ``bags_dir`` on Ray, prints the table, writes the JSON; the exit code."""
    started = time.monotonic()
    golden_dir = (golden_dir or bags_dir / DEFAULT_GOLDEN).resolve()
    problem = _check_inputs(bags_dir, settings)
    if problem:
        print(f"ERROR: {problem}", file=sys.stderr)
        return EXIT_UNUSABLE
    bags = find_bags(bags_dir, golden_dir)
    if not bags:
        print(f"ERROR: {bags_dir}: no bags (directories with {METADATA_FILE}, .mcap or .db3 files, or such files)",
              file=sys.stderr)
        return EXIT_UNUSABLE
    names = [bag_name(b) for b in bags]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        print(f"ERROR: {bags_dir}: several bags are named {', '.join(twice)} (a directory and a file?); the golden "
              "of each is GOLDEN_DIR/NAME, so rename one", file=sys.stderr)
        return EXIT_UNUSABLE
    if record_golden:
        golden_dir.mkdir(parents=True, exist_ok=True)
    jobs, results = [], {}
    for bag, name in zip(bags, names, strict=True):
        golden = golden_dir / name
        if golden.exists() or record_golden:
            jobs.append(BagJob(name, str(bag.resolve()), str(golden), record=not golden.exists()))
        else:
            results[name] = BagResult(name, str(bag.resolve()), None, NO_GOLDEN, None,
                                      reason=f"no golden at {golden}; --record-golden writes it")
    try:
        results |= _run_on_ray(jobs, settings, address)
    except (ConnectionError, RuntimeError, ValueError) as err:
        print(f"ERROR: Ray at {address or 'a new local instance'}: {err}", file=sys.stderr)
        return EXIT_UNUSABLE
    ordered = [results[n] for n in names]
    wall_s = time.monotonic() - started
    print("\n".join(table(ordered)))
    failed = [r for r in ordered if not r.ok]
    print(f"{len(ordered) - len(failed)} of {len(ordered)} bags passed in {wall_s:.1f} s"
          + (f"; FAILED: {', '.join(r.name for r in failed)}" if failed else ""))
    if json_path is not None:
        summary = {"ok": not failed, "bags_total": len(ordered), "bags_passed": len(ordered) - len(failed),
                   "bags_failed": len(failed), "wall_s": round(wall_s, 3), "address": address or LOCAL,
                   "config": settings.config, "model": settings.model, "golden_dir": str(golden_dir),
                   "bags": [_json_row(r) for r in ordered]}
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return EXIT_FAILED if failed else EXIT_PASSED


def _check_inputs(bags_dir: Path, settings: RegressSettings) -> str:
    """What is wrong with the run as a whole (every bag would fail the same way), or ''."""
    from internvla_ros.replay.errors import ReplayError
    from internvla_ros.replay.pipeline import load_config

    if not bags_dir.is_dir():
        return f"{bags_dir}: not a directory of bags"
    if not Path(settings.model).is_dir():
        return f"--model {settings.model}: not a checkpoint directory"
    if settings.tolerance and not Path(settings.tolerance).is_file():
        return f"--tolerance {settings.tolerance}: no such file"
    try:
        load_config(Path(settings.config))
    except ReplayError as err:
        return str(err)
    return ""


def _run_on_ray(jobs: list[BagJob], settings: RegressSettings, address: str | None) -> dict[str, BagResult]:
    """One task per job, results collected as they finish (a task that dies is that bag's failure)."""
    if not jobs:
        return {}
    import ray  # heavy: only once there is work

    own = not ray.is_initialized()
    if own:
        options: dict[str, object] = {"log_to_driver": False, "include_dashboard": False}
        if address is None:
            options["object_store_memory"] = LOCAL_OBJECT_STORE_BYTES
        _start_ray(ray, address, options)
    try:
        task = ray.remote(replay_bag).options(
            num_cpus=1, max_retries=0,
            runtime_env={"env_vars": {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}})
        pending = {task.remote(job, settings): job for job in jobs}
        results = {}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            job = pending.pop(done[0])
            try:
                result = ray.get(done[0])
            except Exception as err:  # the worker died or the result could not come back
                result = crashed(job, f"{type(err).__name__}: {_first_line(str(err))}")
            print(f"regress: {result.name}: {result.status} ({result.time_s:.1f} s)", file=sys.stderr, flush=True)
            results[job.name] = result
        return results
    finally:
        if own:
            ray.shutdown()


def _start_ray(ray: Any, address: str | None, options: dict[str, object]) -> None:
    """ray.init; a local start is tried twice (on a loaded machine the raylet may miss Ray's 30 s deadline)."""
    attempts = 1 if address else LOCAL_START_ATTEMPTS
    for attempt in range(1, attempts + 1):
        try:
            ray.init(address=address or LOCAL, **options)
            return
        except (ConnectionError, RuntimeError, ValueError):
            raise
        except Exception as err:  # Ray raises a bare Exception when its node does not come up in time
            if attempt == attempts:
                raise RuntimeError(f"Ray did not start: {err}") from err
            print(f"regress: Ray did not start ({err}); trying again", file=sys.stderr, flush=True)


def _first_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "(no message)"


def table(results: list[BagResult]) -> list[str]:
    """One row per bag: exit code as `internvla replay` gives it, worst joint deviation, task time."""
    width = max(12, *(len(r.name) + 2 for r in results))
    lines = [f"{'bag':<{width}}{'exit':>5}  {'result':<17}{'worst joint error':>30}{'time s':>9}  reason"]
    for r in results:
        code = "-" if r.exit_code is None else str(r.exit_code)
        worst = "-"
        if r.worst_joint is not None and r.worst_error is not None and math.isfinite(r.worst_error):
            worst = f"{r.worst_joint} {r.worst_error:.6f}"
        reason = r.reason or "; ".join(r.problems[:2])
        lines.append(f"{r.name:<{width}}{code:>5}  {r.status:<17}{worst:>30}{r.time_s:>9.1f}  {reason}")
    return lines


def _json_row(result: BagResult) -> dict[str, object]:
    row = asdict(result)
    row["ok"] = result.ok
    for key, value in row.items():
        if isinstance(value, float) and not math.isfinite(value):
            row[key] = None  # JSON has no NaN
    return row


def _run(args: argparse.Namespace) -> int:
    settings = RegressSettings(
        config=str(config_path(args.config).resolve()), model=str(Path(args.model).resolve()),
        tolerance=str(Path(args.tolerance).resolve()) if args.tolerance else None, instruction=args.instruction,
        seed=args.seed, noise_scale=args.noise_scale)
    return regress(Path(args.bags_dir), settings, Path(args.golden_dir) if args.golden_dir else None, args.address,
                   args.record_golden, Path(args.json) if args.json else None)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_verb(subparsers, "regress", "replay a directory of bags on Ray and check each against its golden",
                      __doc__)
    parser.add_argument("bags_dir", metavar="BAGS_DIR", help="directory of rosbag2 bags (directories or files)")
    parser.add_argument("--config", required=True, help="robot config YAML (a name in config/ or a path)")
    parser.add_argument("--model", required=True, help="checkpoint directory (with stats.json)")
    parser.add_argument("--golden-dir", metavar="DIR", help="golden bags, one per bag name (default BAGS_DIR/golden)")
    parser.add_argument("--record-golden", action="store_true",
                        help="replay bags without a golden and write their output as the golden (they pass)")
    parser.add_argument("--address", metavar="RAY_ADDRESS",
                        help="a running Ray cluster (e.g. ray://head:10001 or auto); default: a new local Ray")
    parser.add_argument("--json", metavar="PATH", help="write the summary as JSON here")
    parser.add_argument("--tolerance", metavar="FILE", help="tolerance YAML, as for `internvla replay --tolerance`")
    parser.add_argument("--instruction", default="",
                        help="the instruction for every bag (default: each bag's instruction topic)")
    parser.add_argument("--seed", type=int, default=0, help="the policy's noise seed (default 0)")
    add_noise_scale(parser)
    parser.set_defaults(func=_run)
