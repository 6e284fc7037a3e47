"""Fine-tuning InternVLA-A1 on a LeRobot v3.0 dataset, with the reference's objective and optimiser.

Loss (the reference ``QwenA1Policy.forward``): flow-matching MSE on the dataset's action dims (the
model's own :meth:`~internvla_ros.model.modeling.InternVLAModel.forward`: t ~ Beta(1.5, 1) * 0.999 +
0.001, x_t = t noise + (1 - t) action, target noise - action) + ``lambda_gen`` (0.01, the reference's
``lambda_gen``) x the foresight MSE against the Cosmos latents of the frames t + 15. Optimiser: AdamW
(betas 0.9/0.95, eps 1e-8, weight decay 0.01), gradient norm clipped at 1.0, linear warm-up then cosine
decay as the reference's ``CosineDecayWithWarmupSchedulerConfig`` (warm-up 2000 of 60000 decay steps,
scaled down to shorter runs; 5e-5 -> 5e-6, its fine-tuning script's values). The Cosmos tokenizer is
frozen (it only makes latents), so each frame's latent is encoded once and cached
(:mod:`~internvla_ros.learning.training_latents`). The und expert's token embedding (tied to
``lm_head``) is frozen too unless ``train_embeddings``: in a small model it is most of the parameters
(19.4 M of the default model's 21.3 M: the Qwen vocabulary), only the prompt's few tokens receive a
gradient, and AdamW's weight decay would rewrite every row at every step. bf16 autocast on a GPU,
float32 on the CPU; the same code.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from internvla_ros.learning.dataset_layout import ACTION_KEY, STATE_KEY
from internvla_ros.learning.dataset_reader import open_dataset
from internvla_ros.learning.dataset_stats import dataset_model_stats
from internvla_ros.learning.training_checkpoint import (
    EMBEDDING_KEY,
    STATE_FILE,
    TrainingState,
    load_state,
    save_model,
    save_state,
    stats_with,
    trained_steps,
)
from internvla_ros.learning.training_data import TrainingBatch, TrainingSamples
from internvla_ros.learning.training_embedding import PromptRows
from internvla_ros.learning.training_latents import LatentCache, weights_digest
from internvla_ros.model.checkpoint import WEIGHTS_FILE, load_checkpoint, read_header
from internvla_ros.model.modeling import InternVLAModel
from internvla_ros.model.normalization import NormalizationStats
from internvla_ros.model.preprocessing import load_tokenizer
from internvla_ros.model.rtc import prefix_mask, prefix_times, sample_delays


@dataclass(frozen=True)
class TrainingOptions:
    steps: int = 1000
    batch_size: int = 8
    lr: float = 5e-5
    decay_lr: float = 5e-6
    warmup_steps: int = 2000
    decay_steps: int = 60000
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.95)
    adam_eps: float = 1e-8
    grad_clip_norm: float = 1.0
    lambda_gen: float = 0.01
    seed: int = 42
    save_every: int = 500
    device: str = "auto"
    robot_type: str | None = None  # default: the dataset's
    threads: int | None = None  # torch intra-op threads (default: torch's choice)
    cache_latents: bool = True  # encode each frame's Cosmos latent once (training_latents)
    train_embeddings: bool = False  # the und expert's token embedding (tied lm_head) is frozen by default
    embedding_bf16: bool = False  # the frozen embedding rounded to bf16 before training, stored as bf16
    sample_stride: int = 1  # train on every n-th frame of each episode (n divides 15: fewer latents to encode)
    rtc_max_delay: int = 0  # training-time RTC: the first d ~ U{0..max} actions given clean, no loss on them

    def schedule(self) -> Callable[[int], float]:
        """Learning-rate factor per step: the reference's warm-up + cosine, auto-scaled to ``steps``."""
        warmup, decay = self.warmup_steps, self.decay_steps
        if self.steps < decay:
            warmup, decay = int(warmup * self.steps / decay), self.steps
        alpha = self.decay_lr / self.lr

        def factor(step: int) -> float:
            if step < warmup:
                return 1 / (warmup + 1) if step <= 0 else (1 / (warmup + 1) - 1) * (1 - step / warmup) + 1
            return (1 - alpha) * 0.5 * (1 + math.cos(math.pi * min(step, decay) / decay)) + alpha

        return factor


@dataclass(frozen=True)
class StepReport:
    step: int
    loss: float
    action: float
    foresight: float
    lr: float
    seconds: float


def losses(model: InternVLAModel, batch: TrainingBatch, noise: torch.Tensor, time_: torch.Tensor,
           lambda_gen: float, latents: tuple[torch.Tensor, torch.Tensor] | None = None,
           delays: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(total, action, foresight) on one batch at the given noise and flow times; ``latents`` (history
    ``(B, N, 2, C, h, w)``, future ``(B, N, C, h, w)``) from a cache, or encoded here from the frames.
    ``delays`` ``(B,)``: training-time RTC, each example's first d actions clean and outside the loss."""
    if latents is None:
        latents = frame_latents(model, batch)
    history, future = latents
    inputs = replace(batch.inputs, frames=None, cosmos_latents=history)
    chunk = batch.actions.shape[1]
    times = time_ if delays is None else prefix_times(time_, delays, chunk)
    out = model(inputs, batch.actions, future, noise, times)
    action_error = out.action[:, :, : batch.action_dim]
    if delays is None:
        action = action_error.mean()
    else:
        scored = ~prefix_mask(delays.to(action_error.device), chunk)
        action = action_error.mean(dim=2)[scored].mean()
    return action + lambda_gen * out.foresight, action, out.foresight


def frame_latents(model: InternVLAModel, batch: TrainingBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosmos latents of the batch's [t - h, t] and t + h frames, of the cameras present (the rest zero)."""
    frames, views = batch.inputs.frames, batch.inputs.view_mask.bool()
    assert frames is not None and batch.future_frames is not None
    cfg = model.config
    latent = (cfg.cosmos_latent_channels, *cfg.cosmos_latent_hw)
    with torch.no_grad():  # Cosmos is frozen: it only makes latents
        future = frames.new_zeros(*views.shape, *latent)
        future[views] = model.encode_frames(batch.future_frames[views])
        history = frames.new_zeros(*frames.shape[:3], *latent)
        history[views] = model.encode_frames(frames[views])
    return history, future


def steps_before(init: Path) -> int:
    """Training steps already in the ``--init`` checkpoint (0 for one that was not trained here), so that a
    continuation's ``total_steps`` counts from the random weights."""
    return trained_steps(init) or 0


def _stored_bf16(model: Path, key: str) -> bool:
    header = read_header(Path(model) / WEIGHTS_FILE)
    return key in header and header[key][1] == "BF16"


def _device(name: str) -> torch.device:
    return torch.device(("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name)


class Trainer:
    def __init__(self, dataset: Path, init: Path, out: Path, options: TrainingOptions, resume: bool = False) -> None:
        self.options, self.init, self.out = options, Path(init), Path(out)
        if options.threads is not None:
            torch.set_num_threads(options.threads)
        self.dataset = open_dataset(dataset)
        self.robot_type = options.robot_type or self.dataset.schema.robot_type
        if resume and not (self.out / STATE_FILE).is_file():
            msg = f"{self.out / STATE_FILE}: no training state to resume from; run without --resume first"
            raise FileNotFoundError(msg)
        source = self.out if resume else self.init
        self.init_steps = steps_before(self.init)  # read once: total_steps in every save counts from here
        if not options.train_embeddings and not options.embedding_bf16 and _stored_bf16(source, EMBEDDING_KEY):
            options = self.options = replace(options, embedding_bf16=True)  # keep the smaller file it came in
        checkpoint = load_checkpoint(source)
        self.config = checkpoint.config
        if not 0 <= options.rtc_max_delay < self.config.chunk_size:
            raise ValueError(f"--rtc-max-delay {options.rtc_max_delay} must lie in [0, {self.config.chunk_size - 1}] "
                             "(chunk steps of the model's chunk; 0 trains without training-time RTC)")
        self.model = checkpoint.model.train()
        self.model.model.cosmos.requires_grad_(False)
        embedding = self.model.experts.language_model.embed_tokens.weight
        if options.embedding_bf16 and options.train_embeddings:
            raise ValueError("--embedding-bf16 stores the frozen embedding: it cannot be used with --train-embeddings")
        if not options.train_embeddings:
            embedding.requires_grad_(False)
        if options.embedding_bf16:  # training sees the values the smaller checkpoint will hold
            embedding.data = embedding.data.to(torch.bfloat16).float()
        self.device = _device(options.device)
        self.model.to(self.device)
        entry = dataset_model_stats(self.dataset, self.config.chunk_size)
        self.stats_json = stats_with(self.init, self.robot_type, entry, self.config)
        self.out.mkdir(parents=True, exist_ok=True)
        self.stats = NormalizationStats(self.robot_type, *(np.asarray(entry[key][field], np.float32)
                                                           for key in (STATE_KEY, ACTION_KEY)
                                                           for field in ("mean", "std")))
        self.samples = TrainingSamples(self.dataset, self.config, self.stats, load_tokenizer(None), self.out / "cache",
                                       options.sample_stride)
        self.latents = None
        if options.cache_latents:
            cosmos = self.model.model.cosmos
            shape = (self.config.cosmos_latent_channels, *self.config.cosmos_latent_hw)
            self.latents = LatentCache(self.out / "cache", self.samples.frames, self.dataset.schema.cameras, shape,
                                       {"frames": self.samples.frames_tag, "cosmos": weights_digest(cosmos)})
        self.prompt_rows = None
        if options.train_embeddings:  # only the rows the prompts use (training_embedding)
            self.prompt_rows = PromptRows(self.model.experts.language_model.embed_tokens,
                                          self.samples.prompt_token_ids())
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.params = params + ([self.prompt_rows.rows] if self.prompt_rows is not None else [])
        self.optimizer = torch.optim.AdamW(self.params, lr=options.lr, betas=options.betas, eps=options.adam_eps,
                                           weight_decay=options.weight_decay)
        self.factor = options.schedule()
        self.generator = torch.Generator().manual_seed(options.seed)
        torch.manual_seed(options.seed)
        self.state = TrainingState(0, {}, torch.get_rng_state(), [], self.generator.get_state(),
                                   torch.randperm(len(self.samples), generator=self.generator), 0, [])
        if resume:
            self._restore(load_state(self.out))

    def _restore(self, state: TrainingState) -> None:
        self.state = state
        self.optimizer.load_state_dict(state.optimizer)
        for param in self.params:
            moment = self.optimizer.state.get(param, {}).get("exp_avg")
            if moment is not None and moment.shape != param.shape:
                raise ValueError(f"{self.out / STATE_FILE}: its optimizer state has a {tuple(moment.shape)} tensor "
                                 f"for a {tuple(param.shape)} parameter (a state from a version that trained the "
                                 "whole token embedding?): start a new run or continue with --init from its checkpoint")
        torch.set_rng_state(state.torch_rng)
        if state.cuda_rng and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state.cuda_rng)
        self.generator.set_state(state.generator)

    def _indices(self) -> list[int]:
        picked: list[int] = []
        while len(picked) < self.options.batch_size:
            if self.state.position >= len(self.state.order):
                self.state.order = torch.randperm(len(self.samples), generator=self.generator)
                self.state.position = 0
            take = self.state.order[self.state.position:self.state.position + self.options.batch_size - len(picked)]
            picked += self.samples.frame_index[take.numpy()].tolist()
            self.state.position += len(take)
        return picked

    @torch.enable_grad()  # whatever grad mode the calling process left switched on or off
    def step(self) -> StepReport:
        started = time.monotonic()
        step = self.state.step
        lr = self.options.lr * self.factor(step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        batch = self.samples.batch(self._indices(), cosmos_frames=self.latents is None)
        future = None if batch.future_frames is None else batch.future_frames.to(self.device)
        batch = TrainingBatch(batch.inputs.to(self.device), batch.actions.to(self.device), future, batch.frame_indices)
        latents = None
        if self.latents is not None and batch.frame_indices is not None:
            cached = self.latents.lookup(batch.frame_indices, batch.inputs.view_mask, self._encode).to(self.device)
            latents = (cached[:, :, :2], cached[:, :, 2])
        cfg = self.config
        noise = torch.randn(len(batch.actions), cfg.chunk_size, cfg.max_action_dim, generator=self.generator)
        time_ = self.model.sample_time(len(batch.actions))
        delays = None
        if self.options.rtc_max_delay > 0:
            delays = sample_delays(len(batch.actions), self.options.rtc_max_delay, self.generator)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
            total, action, foresight = losses(self.model, batch, noise.to(self.device), time_.to(self.device),
                                              self.options.lambda_gen, latents, delays)
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(self.params, self.options.grad_clip_norm)
        self.optimizer.step()
        self.state.step += 1
        report = StepReport(self.state.step, total.item(), action.item(), foresight.item(), lr,
                            time.monotonic() - started)
        self.state.losses.append({k: v for k, v in asdict(report).items() if k != "seconds"})
        return report

    def _encode(self, frames: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), torch.autocast(self.device.type, dtype=torch.bfloat16,
                                             enabled=self.device.type == "cuda"):
            return self.model.encode_frames(frames.to(self.device)).float()

    def save(self) -> None:
        before = self.init_steps
        if self.prompt_rows is not None:
            self.prompt_rows.write_back()
        train_config = {**asdict(self.options), "dataset": str(self.dataset.root), "init": str(self.init),
                        "robot_type": self.robot_type, "step": self.state.step, "init_steps": before,
                        "total_steps": before + self.state.step}
        save_model(self.model, self.out, self.init, self.stats_json, train_config,
                   bf16=(EMBEDDING_KEY,) if self.options.embedding_bf16 else (),
                   config_updates={"rtc_training_max_delay": self.options.rtc_max_delay})
        self.state.optimizer = self.optimizer.state_dict()
        self.state.torch_rng = torch.get_rng_state()
        self.state.cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
        self.state.generator = self.generator.get_state()
        save_state(self.state, self.out)

    def run(self, on_step: Callable[[StepReport], None] | None = None, stop_at: int | None = None) -> list[StepReport]:
        """Steps until ``options.steps`` (or ``stop_at``: the schedule still spans ``steps``), saving every
        ``save_every`` steps and at the end; continue a stopped run with ``resume=True``."""
        last = min(self.options.steps, stop_at or self.options.steps)
        reports = []
        while self.state.step < last:
            report = self.step()
            reports.append(report)
            if on_step is not None:
                on_step(report)
            if self.state.step % self.options.save_every == 0 or self.state.step == last:
                self.save()
        return reports
