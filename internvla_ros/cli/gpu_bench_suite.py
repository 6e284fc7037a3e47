"""The measurements of ``internvla bench gpu`` (see internvla_ros/cli/gpu_bench.py): the model with random
weights of the released shapes, and each variant's warm-up and timed runs of the staged pipeline."""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from internvla_ros.cli.bench_model import synthetic_batch
from internvla_ros.cli.cuda_graphs import graph_stages
from internvla_ros.model.checkpoint import build_empty, expected_shapes, load_state
from internvla_ros.model.config import ARCH_FILE, CONFIG_FILE, InternVLAConfig, internvla_a1_3b_config, load_config
from internvla_ros.model.default_model import DEFAULT_ARCH, DEFAULT_CONFIG
from internvla_ros.model.errors import ModelError
from internvla_ros.model.modeling import InternVLAModel
from internvla_ros.model.pipeline import STAGE_TOTAL, InferencePipeline, StageTimings, cosmos_dtype, step_stage
from internvla_ros.model.torch_stages import torch_pipeline

END_TO_END = "total (end to end)"
PREFIX_SUM = "vision + prefix"
STEPS_SUM = "action steps (sum)"
SYNCED_STAGES = ("encode_frames", "vision", "prefix", "generation", "context", "velocity", "foresight", "decode")


class Synchronized:
    """A pipeline's stages that wait for the device after every call, so each stage's time is its own."""

    def __init__(self, stages: Any, sync: Callable[[], None]) -> None:
        self._stages, self._sync = stages, sync

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._stages, name)
        if name not in SYNCED_STAGES:
            return value

        def call(*args: Any) -> Any:
            result = value(*args)
            self._sync()
            return result

        return call


def bench_config(tiny: bool) -> InternVLAConfig:
    """The released 3B sizes, or the default model's tiny ones (same architecture)."""
    if not tiny:
        return internvla_a1_3b_config()
    with tempfile.TemporaryDirectory() as directory:
        (Path(directory) / ARCH_FILE).write_text(json.dumps(DEFAULT_ARCH))
        (Path(directory) / CONFIG_FILE).write_text(json.dumps(DEFAULT_CONFIG))
        return load_config(directory)


def released_shapes(model: InternVLAModel, manifest: Path) -> dict[str, tuple[int, ...]]:
    """The manifest's keys and shapes, refused unless they are exactly the model's."""
    try:
        entries = json.loads(manifest.read_text())["tensors"]
    except (OSError, ValueError, KeyError) as err:
        raise ModelError(f"{manifest}: not a checkpoint manifest ({err}); pass --manifest PATH") from err
    released = {entry["key"]: tuple(entry["shape"]) for entry in entries}
    ours = expected_shapes(model)
    problems = sorted(set(released) ^ set(ours)) + sorted(k for k in released if k in ours and released[k] != ours[k])
    if problems:
        raise ModelError(f"the 3B architecture differs from {manifest} at {len(problems)} keys, e.g. {problems[:5]}")
    return released


def random_model(config: InternVLAConfig, device: torch.device, dtype: torch.dtype, manifest: Path | None,
                 seed: int = 0) -> InternVLAModel:
    """Random weights (N(0, 1/fan_in), norm scales 1, small biases) of the released keys and shapes."""
    model = build_empty(config)
    shapes = released_shapes(model, manifest) if manifest is not None else expected_shapes(model)
    generator = torch.Generator(device=device).manual_seed(seed)
    tensors = {}
    for name, shape in sorted(shapes.items()):
        value = torch.randn(shape, generator=generator, device=device)
        if len(shape) >= 2:
            value /= max(1, value[0].numel()) ** 0.5
        elif "norm" in name:
            value = 1.0 + 0.1 * value
        else:
            value *= 0.05
        tensors[name] = value
    model = load_state(model, tensors, "random weights")
    return model.to_precision(dtype, cosmos_dtype(dtype)).to(device)


def make_variant(name: str, model: InternVLAModel) -> tuple[InferencePipeline, dict[str, str], str]:
    """The pipeline of one variant, the dict its CUDA-graph capture problems go to, and its description."""
    pipeline = torch_pipeline(model, compile=name == "compile")
    if name != "cuda_graphs":
        return pipeline, {}, pipeline.description
    return pipeline, graph_stages(pipeline.stages), f"{pipeline.description} + CUDA graphs"


def run_variant(name: str, model: InternVLAModel, batch: tuple[Any, torch.Tensor], device: torch.device,
                warmup: int, repeats: int, deadline: float) -> dict[str, Any]:
    """Warm-up (compilation, capture), then measured runs until ``repeats`` or the deadline."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    inputs, noise = batch
    started = time.monotonic()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    pipeline, capture_errors, description = make_variant(name, model)
    synced = InferencePipeline(Synchronized(pipeline.stages, sync), pipeline.config)
    for _ in range(max(1, warmup)):
        pipeline.run(inputs, noise)
    sync()
    setup_s = time.monotonic() - started
    stages: list[dict[str, int]] = []
    totals: list[int] = []
    while len(totals) < repeats and (not totals or time.monotonic() < deadline):
        timings = StageTimings()
        synced.run(inputs, noise, hook=timings)
        timings.pop(STAGE_TOTAL, None)
        stages.append(dict(timings))
        begin = time.perf_counter_ns()
        pipeline.run(inputs, noise)
        sync()
        totals.append(time.perf_counter_ns() - begin)
    median = {stage: statistics.median(run[stage] for run in stages) / 1e6 for stage in stages[0]}
    steps = [step_stage(i) for i in range(pipeline.config.num_inference_steps)]
    median[PREFIX_SUM] = median["vision"] + median["prefix"]
    median[STEPS_SUM] = sum(median[s] for s in steps if s in median)
    median[END_TO_END] = statistics.median(totals) / 1e6
    result: dict[str, Any] = {"description": description, "warmup_runs": max(1, warmup),
                              "setup_s": round(setup_s, 2), "runs": len(totals), "median_ms": median,
                              "end_to_end_ms": [t / 1e6 for t in totals]}
    if capture_errors:
        result["eager_stages"] = capture_errors
    if device.type == "cuda":
        result["max_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return result




@dataclass(frozen=True)
class Suite:
    variants: list[str]
    device: torch.device
    dtype: torch.dtype
    tiny: bool
    manifest: Path
    warmup: int
    repeats: int
    budget_s: float
    started: float  # time.monotonic() when the command started: the budget counts from there


def run_suite(suite: Suite, report: dict[str, Any], write: Callable[[], None]) -> bool:
    """Builds the model, then runs every variant into ``report["variants"]`` (``write()`` after each); False
    when a variant failed or the time limit interrupted it. Raises ModelError when the model cannot be built."""
    torch.set_grad_enabled(False)
    config = bench_config(suite.tiny)
    model = random_model(config, suite.device, suite.dtype, None if suite.tiny else suite.manifest)
    inputs, noise = synthetic_batch(config)
    batch = (inputs.to(suite.device), noise.to(suite.device))
    ok = True
    for index, name in enumerate(suite.variants):
        left = suite.budget_s - (time.monotonic() - suite.started)
        deadline = time.monotonic() + left / (len(suite.variants) - index)
        try:
            report["variants"][name] = run_variant(name, model, batch, suite.device, suite.warmup, suite.repeats,
                                                   deadline)
        except (RuntimeError, ModelError) as err:  # one variant failing (capture, compile) leaves the others
            ok = False
            report["variants"][name] = {"error": f"{type(err).__name__}: {err}".splitlines()[0]}
        except KeyboardInterrupt:  # the script's time limit: keep what was measured
            report["variants"][name] = {"error": "interrupted (time limit)"}
            return False
        finally:
            write()
    return ok
