"""``internvla bench gpu``: observation -> chunk latency per stage of InternVLA-A1-3B on a CUDA GPU.

Usage examples::

    scripts/gpu_bench.sh --out out/gpu_bench.json           # the 3B model, eager / CUDA graphs / compile
    internvla bench gpu --variants eager,compile --repeats 30
    internvla bench gpu --device cpu --tiny --repeats 3     # smoke run on the small default architecture

The model is the released 3B architecture with random weights of the released shapes (every key and shape
of the checkpoint manifest, test/fixtures/internvla_a1_3b_manifest.json, is checked first) in bfloat16; the
batch is one synthetic observation with the model's exact token layout. Each variant runs the one staged
pipeline: ``eager`` torch, ``cuda_graphs`` (each tensor stage replayed as a captured CUDA graph) and
``compile`` (torch.compile). Stage times come from runs that synchronise the device after every stage;
``total (end to end)`` from runs that synchronise once at the end. The whole run keeps within --budget-s
(8 minutes by default): each variant gets an equal share of what is left, and the JSON is rewritten after
every variant. Without a CUDA device the command exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from internvla_ros.cli.groups import add_verb, verb_group

VARIANTS = ("eager", "cuda_graphs", "compile")
DTYPES = ("bfloat16", "float16", "float32")
MANIFEST = Path(__file__).resolve().parents[2] / "test" / "fixtures" / "internvla_a1_3b_manifest.json"
BUDGET_S = 450.0  # 8 minutes, less a margin for start-up and writing
NO_CUDA = ("no CUDA device: torch {version} sees none. Run this on a CUDA machine with a CUDA build of torch, "
           "or use --device cpu --tiny for the smoke run")


def print_table(report: dict[str, Any]) -> None:
    done = {name: r for name, r in report["variants"].items() if "median_ms" in r}
    print(f"{report['model']} on {report['device']}, {report['dtype']}, torch {report['torch']}")
    if done:
        order = list(next(iter(done.values()))["median_ms"])
        print(f"{'stage (median ms)':<28}" + "".join(f"{name:>14}" for name in done))
        for stage in order:
            print(f"{stage:<28}" + "".join(f"{r['median_ms'].get(stage, float('nan')):>14.2f}" for r in done.values()))
    for name, r in report["variants"].items():
        extra = f"  eager stages: {r['eager_stages']}" if "eager_stages" in r else ""
        print(f"  {name}: {r.get('error') or r['description']}, {r.get('runs', 0)} runs{extra}")


def problem_with(args: argparse.Namespace, names: list[str], device: torch.device) -> str:
    """What is wrong with the request ("" when nothing is), found before the model stack is loaded."""
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown:
        return f"unknown variant(s) {unknown}; choose from {', '.join(VARIANTS)}"
    if args.repeats < 1 or not args.budget_s > 0:
        return "--repeats must be >= 1 and --budget-s > 0"
    if device.type == "cuda" and not torch.cuda.is_available():
        return NO_CUDA.format(version=torch.__version__)
    if "cuda_graphs" in names and device.type != "cuda":
        return "cuda_graphs needs --device cuda"
    return ""


def command(args: argparse.Namespace) -> int:
    """Entry point of ``internvla bench gpu``."""
    started = time.monotonic()
    device = torch.device(args.device)
    names = [n.strip() for n in args.variants.split(",") if n.strip()] if args.variants else (
        list(VARIANTS) if device.type == "cuda" else ["eager"])
    problem = problem_with(args, names, device)
    if problem:
        print(f"ERROR: {problem}", file=sys.stderr)
        return 2
    # Loaded only now: the model stack takes seconds to import, and a refusal should not wait for it.
    from internvla_ros.cli.gpu_bench_suite import Suite, run_suite
    from internvla_ros.model.errors import ModelError

    report: dict[str, Any] = {
        "model": "default-size architecture (tiny)" if args.tiny else "InternVLA-A1-3B architecture, random weights",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu", "dtype": args.dtype,
        "torch": torch.__version__, "cuda": torch.version.cuda, "batch": "synthetic, 1 observation",
        "budget_s": args.budget_s, "variants": {}}

    def write() -> None:
        report["elapsed_s"] = round(time.monotonic() - started, 1)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1) + "\n")

    suite = Suite(names, device, getattr(torch, args.dtype), args.tiny, args.manifest, args.warmup, args.repeats,
                  args.budget_s, started)
    try:
        ok = run_suite(suite, report, write)
    except ModelError as err:
        print(f"ERROR: {err}", file=sys.stderr)
        return 2
    print_table(report)
    print(f"wrote {args.out} ({report['elapsed_s']} s)")
    return 0 if ok else 1


def register(subparsers: argparse._SubParsersAction) -> None:
    # The bench group's help text is bench_model's BENCH_HELP (it registers first in `internvla`).
    verbs = verb_group(subparsers, "bench", "measure latency and jitter")
    parser = add_verb(verbs, "gpu", "per-stage latency of the 3B model on a CUDA GPU", __doc__)
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N, or cpu (with --tiny)")
    parser.add_argument("--tiny", action="store_true", help="the default model's small sizes instead of 3B")
    parser.add_argument("--variants", help=f"comma-separated from {','.join(VARIANTS)} (default: all on cuda, "
                                           "eager on cpu)")
    parser.add_argument("--repeats", type=int, default=20, help="measured runs per variant (default: 20)")
    parser.add_argument("--warmup", type=int, default=3, help="unmeasured runs first (at least 1; default: 3)")
    parser.add_argument("--budget-s", type=float, default=BUDGET_S, help=f"whole run (default: {BUDGET_S:.0f})")
    parser.add_argument("--dtype", choices=DTYPES, default="bfloat16", help="default: bfloat16")
    parser.add_argument("--manifest", type=Path, default=MANIFEST, help="key/shape manifest of the checkpoint")
    parser.add_argument("--out", type=Path, default=Path("out/gpu_bench.json"), help="the JSON report")
    parser.set_defaults(func=command)


def main(argv: list[str] | None = None) -> int:
    """``python -m internvla_ros.cli.gpu_bench ARGS`` = ``internvla bench gpu ARGS`` (scripts/gpu_bench.sh)."""
    parser = argparse.ArgumentParser(prog="internvla")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["bench", "gpu", *(sys.argv[1:] if argv is None else argv)])
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
