"""``internvla bench model``: per-stage latency of one observation -> action chunk, per backend.

Usage examples::

    internvla bench model --model test/fixtures/internvla_a1_reference/case_a
    internvla bench model --compare --repeats 20 --json bench.json
    internvla bench model --backend torch,onnxruntime --threads 2
    internvla bench model --dtype bfloat16 --reference-ms 2500

Stages: ViT, prefix pass, Cosmos encode (both frames, and the current frames only, with the t-15
frames encoded ahead of time), generation pass, K/V join, each action step, and the totals with and
without the t-15 frames pre-encoded. Medians after warm-up, thread counts pinned (torch and ONNX
Runtime intra-op threads = --threads). ``--compare`` runs the backends interleaved in one process
(default: torch, torch-uncached (no K/V reuse), onnxruntime) and prints each one's speed-up over
the first. Every backend runs the one staged pipeline the node runs; its stage hook gives the rows.
``--reference-ms X`` prints each backend's speed-up over a reference implementation's median X ms
for the same chunk (e.g. the public reference, timed with tools/reference_bench). The batch is DIR's
``inputs.safetensors`` when it has one, else a synthetic batch.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import torch

from internvla_ros.backends.errors import BackendError
from internvla_ros.backends.export import DTYPES
from internvla_ros.backends.factory import BACKEND_NAMES, BackendOptions, create_backend
from internvla_ros.backends.graphs import Layout
from internvla_ros.cli.check_parity import INPUTS_FILE, _load, batch_to_inputs
from internvla_ros.cli.groups import add_verb, verb_group
from internvla_ros.model.config import InternVLAConfig, load_config
from internvla_ros.model.errors import ModelError
from internvla_ros.model.inputs import ModelInputs
from internvla_ros.model.pipeline import STAGE_COSMOS, STAGE_TOTAL, InferencePipeline, StageTimings, step_stage
from internvla_ros.model.rtc import RtcGuidance, shift_chunk
from internvla_ros.paths import default_model_dir

GROUP = "bench"
BENCH_HELP = "measure latency and jitter"
"""Attribute of the ``bench`` group parser holding its verb table, so other modules can add verbs."""
COMPARE_DEFAULT = ("torch", "torch-uncached", "onnxruntime")
ENCODE_BOTH = "cosmos_encode (both frames)"
ENCODE_CURRENT = "cosmos_encode (current only)"
TOTAL_BOTH = "total (both frames encoded)"
TOTAL_PRE = "total (t-15 pre-encoded)"
STEPS_SUM = "action steps (sum)"
PROMPT_TOKENS = 13
"""Real prompt tokens of the synthetic batch (the rest of the prompt is padding)."""


def bench_verbs(subparsers: argparse._SubParsersAction) -> argparse._SubParsersAction:
    """The verb table of ``internvla bench``."""
    return verb_group(subparsers, GROUP, BENCH_HELP)


def synthetic_batch(config: InternVLAConfig, seed: int = 0) -> tuple[ModelInputs, torch.Tensor]:
    """A batch with the model's exact token layout and random pixels, frames, state and noise."""
    lay = Layout.of(config)
    gen = torch.Generator().manual_seed(seed)
    tokens = config.tokens
    camera = [tokens.vision_start, *[tokens.image] * lay.image_tokens_per_view, tokens.vision_end]
    prompt = [1 + i for i in range(PROMPT_TOKENS)] + [tokens.pad] * (config.tokenizer_max_length - PROMPT_TOKENS)
    ids = torch.tensor([camera * lay.n_views + prompt])
    mask = torch.ones_like(ids)
    mask[0, -(config.tokenizer_max_length - PROMPT_TOKENS):] = 0
    inputs = ModelInputs(
        pixel_values=torch.rand(1, lay.n_views * lay.patches_per_view, lay.patch_values, generator=gen) * 2 - 1,
        image_grid_thw=torch.tensor([[list(config.vision_grid)] * lay.n_views]),
        input_ids=ids, attention_mask=mask,
        state=torch.randn(1, config.max_state_dim, generator=gen),
        view_mask=torch.ones(1, lay.n_views, dtype=torch.bool),
        frames=torch.rand(1, lay.n_views, lay.frames_per_view, 3, *lay.frame_hw, generator=gen),
    )
    return inputs, torch.randn(1, config.chunk_size, config.max_action_dim, generator=gen)


def load_batch(model_dir: Path, config: InternVLAConfig) -> tuple[ModelInputs, torch.Tensor, str]:
    path = model_dir / INPUTS_FILE
    if path.is_file():
        inputs, noise = batch_to_inputs(_load(path), config.n_views, path)
        return inputs, noise, str(path)
    inputs, noise = synthetic_batch(config)
    return inputs, noise, "synthetic"


def measure(backend: InferencePipeline, inputs: ModelInputs, noise: torch.Tensor, steps: int,
            rtc: bool = False) -> dict[str, int]:
    """One observation twice: every frame encoded on the critical path, then only the current ones
    (``rtc``: then twice more over the same latents, plain and with real-time chunking guidance)."""
    timings = StageTimings()
    backend.run(inputs, noise, hook=timings)
    timings[TOTAL_BOTH] = timings.pop(STAGE_TOTAL)
    if STAGE_COSMOS in timings:
        timings[ENCODE_BOTH] = timings.pop(STAGE_COSMOS)
    step_names = [step_stage(i) for i in range(steps)]
    if all(name in timings for name in step_names):
        timings[STEPS_SUM] = sum(timings[name] for name in step_names)
    if inputs.frames is None:
        raise BackendError("the benchmark batch needs camera frames to time the Cosmos encode")
    history = backend.encode_frames(inputs.frames[:, :, 0])  # ahead of time, off the critical path
    start = time.perf_counter_ns()
    current = backend.encode_frames(inputs.frames[:, :, -1])
    encoded = time.perf_counter_ns()
    latents = torch.stack([history, current], dim=2)
    backend.run(replace(inputs, frames=None, cosmos_latents=latents), noise)
    timings[ENCODE_CURRENT] = encoded - start
    timings[TOTAL_PRE] = time.perf_counter_ns() - start
    if rtc and hasattr(backend.stages, "guidance"):
        timings.update(measure_rtc(backend, replace(inputs, frames=None, cosmos_latents=latents), noise, step_names))
    return dict(timings)


def measure_rtc(backend: InferencePipeline, inputs: ModelInputs, noise: torch.Tensor,
                step_names: list[str]) -> dict[str, int]:
    """The action steps and the chunk plain and with RTC guidance (d = H/10, s = H/5, beta 5, exp), same inputs."""
    chunk = noise.shape[1]
    previous = backend.run(inputs, noise.roll(1, dims=1)).actions[0].float().cpu().numpy()
    guidance = RtcGuidance.build(shift_chunk(previous, chunk // 5), chunk // 10, chunk // 5, beta=5.0)
    out = {}
    for suffix, rtc in (("plain", None), ("rtc", guidance)):
        timings = StageTimings()
        backend.run(inputs, noise, hook=timings, rtc=rtc)
        out[f"{STEPS_SUM} {suffix}"] = sum(timings[name] for name in step_names)
        out[f"total {suffix} (latents given)"] = timings[STAGE_TOTAL]
    return out


def stage_order(steps: int) -> list[str]:
    return ["vision", "prefix", ENCODE_BOTH, ENCODE_CURRENT, "generation", "context",
            *[step_stage(i) for i in range(steps)], STEPS_SUM, TOTAL_BOTH, TOTAL_PRE,
            *[name for suffix in ("plain", "rtc") for name in (f"{STEPS_SUM} {suffix}",
                                                                f"total {suffix} (latents given)")]]


def bench(model_dir: Path, names: Sequence[str], options: BackendOptions, repeats: int, warmup: int,
          interleave: bool, json_path: Path | None, reference_ms: float | None = None, rtc: bool = False) -> int:
    config = load_config(model_dir)
    inputs, noise, source = load_batch(model_dir, config)
    backends = [create_backend([name], options).backend for name in names]
    steps = config.num_inference_steps
    samples: dict[str, list[dict[str, int]]] = {b.name: [] for b in backends}
    rounds = [[b] * (warmup + repeats) for b in backends]
    if interleave:
        rounds = [list(backends)] * (warmup + repeats)
    for index, group in enumerate(rounds):
        for position, backend in enumerate(group):
            run = index if interleave else position
            timing = measure(backend, inputs, noise, steps, rtc)
            if run >= warmup:
                samples[backend.name].append(timing)
    medians = {name: {stage: statistics.median(s[stage] for s in runs) / 1e6 for stage in runs[0]}
               for name, runs in samples.items()}
    print(f"model: {model_dir}  batch: {source}  dtype: {options.dtype}  "
          f"threads: {options.threads} (torch + onnxruntime intra-op)  "
          f"warm-up: {warmup}  repeats: {repeats}  {'interleaved' if interleave else 'one backend after another'}")
    for backend in backends:
        print(f"  {backend.name}: {backend.description}")
    base = backends[0].name
    header = f"{'stage (median ms)':<30}" + "".join(f"{b.name:>16}" for b in backends)
    if interleave and len(backends) > 1:
        header += "".join(f"{'x ' + b.name:>22}" for b in backends[1:])
    print(header)
    speedups: dict[str, dict[str, float]] = {b.name: {} for b in backends[1:]}
    for stage in stage_order(steps):
        if not any(stage in m for m in medians.values()):
            continue
        row = f"{stage:<30}" + "".join(f"{medians[b.name][stage]:>16.2f}" if stage in medians[b.name]
                                       else f"{'-':>16}" for b in backends)
        if interleave:
            for b in backends[1:]:
                if stage in medians[b.name] and stage in medians[base] and medians[b.name][stage] > 0:
                    speedups[b.name][stage] = medians[base][stage] / medians[b.name][stage]
                    row += f"{speedups[b.name][stage]:>22.2f}"
                else:
                    row += f"{'-':>22}"
        print(row)
    if interleave and len(backends) > 1:
        print(f"x NAME = speed-up over {base} (its median / NAME's median), same process, interleaved")
    versus_reference = {}
    if reference_ms is not None:
        for b in backends:
            ours = medians[b.name][TOTAL_BOTH]
            versus_reference[b.name] = reference_ms / ours
            print(f"speed-up over the reference ({reference_ms:.2f} ms median, {TOTAL_BOTH}): {b.name} "
                  f"{ours:.2f} ms -> x {versus_reference[b.name]:.2f}")
    if json_path is not None:
        report = {
            "model": str(model_dir), "batch": source, "threads": options.threads, "warmup": warmup,
            "repeats": repeats, "interleaved": interleave,
            "backends": {b.name: {"description": b.description, "median_ms": medians[b.name],
                                  "samples_ns": samples[b.name]} for b in backends},
            "speedup_over": base if interleave else None, "speedup": speedups if interleave else {},
            "dtype": options.dtype, "reference_ms": reference_ms, "speedup_over_reference": versus_reference,
        }
        json_path.write_text(json.dumps(report, indent=1) + "\n")
    return 0


def command(args: argparse.Namespace) -> int:
    """Entry point of ``internvla bench model``."""
    names = [n.strip() for n in args.backend.split(",") if n.strip()] if args.backend else (
        list(COMPARE_DEFAULT) if args.compare else ["torch"])
    unknown = [n for n in names if n not in BACKEND_NAMES]
    bad_reference = args.reference_ms is not None and not args.reference_ms > 0
    if unknown or args.repeats < 1 or args.warmup < 0 or args.threads < 1 or bad_reference:
        problem = (f"unknown backend(s) {', '.join(unknown)}; choose from {', '.join(BACKEND_NAMES)}" if unknown
                   else f"--reference-ms must be a positive median in ms, got {args.reference_ms}" if bad_reference
                   else "--repeats and --threads must be >= 1, --warmup >= 0")
        print(f"ERROR: {problem}", file=sys.stderr)
        return 2
    model_dir = Path(args.model) if args.model else default_model_dir()
    torch.set_num_threads(args.threads)
    options = BackendOptions(model_dir, engine_dir=args.engine_dir, cache_root=args.cache, threads=args.threads,
                             compile=args.compile, dtype=args.dtype)
    try:
        with torch.no_grad():  # not the process-wide switch (commands also run inside other processes' tests)
            return bench(model_dir, names, options, args.repeats, args.warmup, args.compare, args.json,
                         args.reference_ms, args.rtc)
    except (ModelError, BackendError) as err:
        print(f"ERROR: {err}", file=sys.stderr)
        return 2


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_verb(bench_verbs(subparsers), "model", "per-stage latency of the model on one or more backends",
                      __doc__)
    parser.add_argument("--model", metavar="DIR", help="checkpoint directory (default: models/default)")
    parser.add_argument("--backend", help=f"comma-separated, from {', '.join(BACKEND_NAMES)} (default: torch; "
                                          f"with --compare: {','.join(COMPARE_DEFAULT)})")
    parser.add_argument("--compare", action="store_true", help="interleave the backends and print speed-ups")
    parser.add_argument("--repeats", type=int, default=10, help="measured runs per backend (default: 10)")
    parser.add_argument("--warmup", type=int, default=2, help="unmeasured runs first (default: 2)")
    parser.add_argument("--threads", type=int, default=1, help="torch and onnxruntime threads (default: 1)")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the medians and samples here")
    parser.add_argument("--engine-dir", type=Path, help="export to use (default: cached export of --model)")
    parser.add_argument("--cache", type=Path, help="export cache (default: ~/.cache/internvla_ros/exports)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the torch backend's stages")
    parser.add_argument("--rtc", action="store_true",
                        help="also time the chunk with real-time chunking guidance (backends that support it)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32",
                        help="expert precision (Cosmos follows it); default float32")
    parser.add_argument("--reference-ms", type=float, metavar="X",
                        help="a reference implementation's median ms per chunk: print our speed-up over it")
    parser.set_defaults(func=command)
