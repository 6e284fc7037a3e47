"""How well a checkpoint's sampled chunks match a dataset's recorded ones, offline, before a closed-loop eval.

A sample is built exactly as training builds it (:class:`~internvla_ros.learning.training_data.TrainingSamples`:
the node's preprocessing, the chunk of the next actions normalised with the checkpoint's statistics), then
the chunk is sampled through the one inference pipeline (torch stages) from seeded noise. Reported, in
the normalised action space (units of the action's standard deviation):

- ``rmse_by_step``: the root mean square error at each chunk step, over samples and action dims; which
  part of a chunk is accurate decides which part the runtime should execute;
- ``roughness``: the mean absolute second difference of the sampled chunks over that of the recorded ones
  (1 is as smooth as the demonstrations; the limiter clamps what is rougher);
- with ``prefix_delay`` d: the first d recorded actions are given as the executed prefix (a model trained
  with training-time RTC gets them clean, any other model is guided to them), and the error is taken on
  the steps after them: whether a model follows a correct prefix, apart from the runtime that builds it;
- ``rmse_by_joint``: the same error in each joint's own unit (rad for the arm, the gripper's 0-1, m/s for a
  belt) at the reported steps, for the joints that move in the recording. A joint the demonstrations never
  move adds a zero to every average above; per joint, it is left out, so a few badly placed joints show;
- with ``instruction``: every sample is sampled again, with the same noise, under that instruction instead
  of its episode's, and ``instruction_effect`` is how much the chunks change (RMS and largest, std units)
  over the samples whose episode has another instruction. A language-conditioned policy must change; one
  that changes by a small fraction of its error does not read the words;
- with ``attention``: where the action tokens look (:mod:`~internvla_ros.learning.attention_check`).
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from internvla_ros.learning.attention_check import ActionAttention, format_attention
from internvla_ros.learning.dataset_reader import open_dataset
from internvla_ros.learning.training_data import TrainingSamples
from internvla_ros.model.attention import record_attention
from internvla_ros.model.checkpoint import STATS_FILE, load_checkpoint
from internvla_ros.model.normalization import NormalizationStats
from internvla_ros.model.pipeline import InferencePipeline, select
from internvla_ros.model.preprocessing import load_tokenizer
from internvla_ros.model.rtc import RtcGuidance, RtcPrefix
from internvla_ros.model.torch_stages import TorchStages

GUIDANCE_BETA = 5.0  # the published RTC guidance clip, for models without training-time RTC
REPORTED_STEPS = (1, 5, 10, 25, 50)


class ChunkCheckError(ValueError):
    """A check that cannot run: the message names the input and the fix."""


@dataclass(frozen=True)
class ChunkCheckOptions:
    samples: int = 256
    batch_size: int = 16
    seed: int = 0
    noise_scale: float = 1.0  # the sampler's starting noise is scaled by this (0: from the mean)
    prefix_delay: int = 0  # the first d recorded actions given as the executed prefix
    instruction: str | None = None  # also sample every chunk under this instruction (see the module docstring)
    attention: bool = False  # report where the action tokens look (measured without a prefix)


def check_chunks(model_dir: Path, dataset_dir: Path, cache_dir: Path, options: ChunkCheckOptions) -> dict[str, Any]:
    """The report (see the module docstring); ``cache_dir`` holds the decoded frames (reused while valid)."""
    checkpoint = load_checkpoint(model_dir)
    config, model = checkpoint.config, checkpoint.model.eval()
    if not 0 <= options.prefix_delay < config.chunk_size:
        raise ChunkCheckError(f"--prefix-delay {options.prefix_delay} must lie in [0, {config.chunk_size - 1}]")
    if options.attention and options.prefix_delay:
        raise ChunkCheckError("--attention is measured on plain sampling: drop --prefix-delay, or run it separately")
    if options.samples < 1 or options.batch_size < 1 or options.noise_scale < 0:
        raise ChunkCheckError("--samples and --batch-size must be >= 1 and --noise-scale >= 0")
    dataset = open_dataset(dataset_dir)
    robot_type = dataset.schema.robot_type
    stats = NormalizationStats.load(Path(model_dir) / STATS_FILE, robot_type)
    samples = TrainingSamples(dataset, config, stats, load_tokenizer(None), cache_dir)
    rng = np.random.default_rng(options.seed)
    picked = np.sort(rng.choice(samples.frame_index, size=min(options.samples, len(samples)), replace=False))
    pipeline = InferencePipeline(TorchStages(model), config)
    generator = torch.Generator().manual_seed(options.seed)
    differs = None if options.instruction is None else np.asarray([samples.task(int(i)) != options.instruction
                                                                   for i in picked])
    if differs is not None and not differs.any():
        raise ChunkCheckError(f"every sampled episode already has the instruction {options.instruction!r}: "
                              "give another one (e.g. the other rule's sentence)")
    predicted, recorded, instructed = [], [], []
    attention = ActionAttention(config.tokenizer_max_length) if options.attention else None
    for start in range(0, len(picked), options.batch_size):
        indices = picked[start:start + options.batch_size].tolist()
        batch = samples.batch(indices)
        noise = torch.randn(len(batch.actions), config.chunk_size, config.max_action_dim,
                            generator=generator) * options.noise_scale
        recording = record_attention() if attention is not None else nullcontext([])
        with torch.inference_mode(), recording as records:
            actions = _sample(pipeline, batch.inputs, noise, batch.actions, options.prefix_delay)
        if attention is not None:
            attention.add(records)
        if options.instruction is not None:
            other = samples.batch(indices, instruction=options.instruction)
            with torch.inference_mode():
                instructed.append(_sample(pipeline, other.inputs, noise, batch.actions, options.prefix_delay)
                                  [:, :, : batch.action_dim].numpy())
        predicted.append(actions[:, :, : batch.action_dim].numpy())
        recorded.append(batch.actions.numpy())
    scale = stats.action_std[: dataset.schema.dim] + np.float32(stats.eps)
    chunks = np.concatenate(predicted)
    extra: dict[str, Any] = {} if attention is None else {"attention": attention.report()}
    if differs is not None:
        extra |= {"instruction": options.instruction, "instruction_samples": int(differs.sum()),
                  **_effect(np.concatenate(instructed)[differs] - chunks[differs])}
    return chunk_report(chunks, np.concatenate(recorded), options.prefix_delay,
                        dict(zip(dataset.schema.joint_names, scale, strict=True))) | extra | {
        "model": str(model_dir), "dataset": str(dataset_dir), "robot_type": robot_type,
        "samples": len(picked), "noise_scale": options.noise_scale, "seed": options.seed,
        "prefix": "none" if options.prefix_delay == 0 else
        "clean (training-time RTC)" if config.rtc_training_max_delay > 0 else f"guided (beta {GUIDANCE_BETA})"}


def _effect(change: np.ndarray) -> dict[str, float]:
    return {"instruction_effect": float(np.sqrt(np.mean(change ** 2))),
            "instruction_effect_max": float(np.max(np.abs(change)))}


def _sample(pipeline: InferencePipeline, inputs: Any, noise: torch.Tensor, recorded: torch.Tensor,
            delay: int) -> torch.Tensor:
    if delay == 0:
        return pipeline.run(inputs, noise).actions
    dim = pipeline.config.max_action_dim
    trained = pipeline.config.rtc_training_max_delay
    if trained > 0:  # each sample its own prefix: the batch's chunks padded to the model's dims, d capped as trained
        padded = torch.nn.functional.pad(recorded, (0, dim - recorded.shape[2]))
        return pipeline.run(inputs, noise, rtc=RtcPrefix(padded, min(delay, trained))).actions
    chunks = []
    for i in range(len(recorded)):  # guidance targets one chunk: element by element
        guidance = RtcGuidance.build(recorded[i].numpy(), delay, delay, GUIDANCE_BETA, "hard", dim)
        chunks.append(pipeline.run(select(inputs, i), noise[i:i + 1], rtc=guidance).actions)
    return torch.cat(chunks)


def chunk_report(predicted: np.ndarray, recorded: np.ndarray, prefix_delay: int = 0,
                 joint_scale: dict[str, float] | None = None) -> dict[str, Any]:
    """Errors and roughness of ``predicted`` against ``recorded`` chunks, both ``(N, chunk, dim)`` normalised;
    ``joint_scale`` (each dim's name and normalisation scale, in order) adds ``rmse_by_joint``."""
    error = predicted - recorded
    by_step = np.sqrt(np.mean(error ** 2, axis=(0, 2)))
    after = slice(prefix_delay, None)
    roughness = None  # a second difference needs three steps
    if predicted.shape[1] - prefix_delay >= 3:
        rough = np.mean(np.abs(np.diff(predicted[:, after], n=2, axis=1)))
        smooth = np.mean(np.abs(np.diff(recorded[:, after], n=2, axis=1)))
        roughness = float(rough / smooth) if smooth > 0 else float("inf")
    return {"prefix_delay": prefix_delay,
            "rmse": float(np.sqrt(np.mean(error[:, after] ** 2))),
            "rmse_by_step": [round(float(v), 5) for v in by_step],
            "roughness": roughness,
            "rmse_by_joint": {} if joint_scale is None else _by_joint(error, recorded, joint_scale)}


def _by_joint(error: np.ndarray, recorded: np.ndarray, joint_scale: dict[str, float]) -> dict[str, dict[str, float]]:
    steps = [s for s in REPORTED_STEPS if s <= error.shape[1]]
    table = {}
    for dim, (name, scale) in enumerate(joint_scale.items()):
        if np.ptp(recorded[:, :, dim]) == 0:
            continue  # never moves in the recording
        rmse = np.sqrt(np.mean(error[:, :, dim] ** 2, axis=0)) * float(scale)
        table[name] = {str(s): round(float(rmse[s - 1]), 5) for s in steps}
    return table


def format_report(report: dict[str, Any]) -> str:
    steps = [s for s in REPORTED_STEPS if s <= len(report["rmse_by_step"])]
    cells = "  ".join(f"step {s}: {report['rmse_by_step'][s - 1]:.3f}" for s in steps)
    return (f"{report['samples']} samples of {report['dataset']}, noise x{report['noise_scale']}, "
            f"prefix {report['prefix_delay']} ({report['prefix']})\n"
            f"rmse (action std units) after the prefix {report['rmse']:.4f}; {cells}\n"
            f"roughness (second differences / the recorded ones) {_round(report['roughness'])}"
            + "".join(f"\n  {name} (own unit): " + "  ".join(f"step {s}: {v:.3f}" for s, v in by_step.items())
                      for name, by_step in report.get("rmse_by_joint", {}).items())
            + ("" if "instruction" not in report else
               f"\nunder {report['instruction']!r}: chunks change by {report['instruction_effect']:.4f} rms "
               f"(largest {report['instruction_effect_max']:.4f}) over the {report['instruction_samples']} samples "
               "whose episode has another instruction")
            + ("" if "attention" not in report else "\n" + format_attention(report["attention"])))


def _round(value: float | None) -> str:
    return "n/a (under 3 steps after the prefix)" if value is None else f"{value:.2f}"
