"""The one staged inference pipeline: every backend is an implementation of its stages.

One chunk, in order (stage names are what the timing hook receives):

1. ``vision`` + ``prefix``: the ViT, then the prompt and image tokens through the und expert (its K/V kept);
2. ``cosmos_encode`` + ``generation``: Cosmos latents of the [t-15, t] frames (skipped for latents the
   caller encoded ahead of time), then the gen expert over the 96 foresight tokens, reading the prefix
   K/V; its own K/V (the :class:`ChunkResult`'s ``generation``) may be passed back for later chunks;
3. ``context``: prefix + generation K/V joined once; ``action_step_1`` .. ``action_step_10``: Euler
   steps of flow matching from the noise, each one velocity over the cached K/V (:func:`euler`);
4. optional ``foresight`` (the predicted t+15 latents) and ``foresight_decode`` (Cosmos decoder).

How a stage executes (eager or compiled torch, ONNX Runtime, TensorRT) is the :class:`Stages`
implementation's business; the order, the Euler loop, batching and timing live here only. Each stage
is timed through ONE hook the caller passes: ``hook(stage, nanoseconds)`` (:class:`StageTimings`
collects them into a dict).

Batches: ``B >= 1`` observations stacked along the first axis (:func:`stack_inputs`), each with its
own prompt length and missing cameras through ``attention_mask`` / ``view_mask``. Stages with a fixed
batch (``max_batch``, e.g. exported graphs of batch 1) run the batch element by element, up to
``element_workers`` elements at once (:mod:`internvla_ros.model.batch_elements`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any, Protocol

import torch
from torch import Tensor

from internvla_ros.model.batch_elements import ElementRunner
from internvla_ros.model.config import InternVLAConfig
from internvla_ros.model.errors import ModelError, PreprocessingError
from internvla_ros.model.inputs import ModelInputs
from internvla_ros.model.rtc import RtcGuidance, RtcPrefix, guided_velocity

STAGE_VISION = "vision"
STAGE_PREFIX = "prefix"
STAGE_COSMOS = "cosmos_encode"
STAGE_GENERATION = "generation"
STAGE_CONTEXT = "context"
STAGE_FORESIGHT = "foresight"
STAGE_DECODE = "foresight_decode"
STAGE_TOTAL = "total"

StageHook = Callable[[str, int], None]
"""Called after every stage with its name and duration in nanoseconds (monotonic clock)."""

COSMOS_PRECISION_RULE = ("Cosmos runs in the precision of the experts: float32 gives exact parity with the "
                         "reference fixture, bfloat16 is what the released model runs (the reference forces "
                         "its Cosmos to bf16)")


def cosmos_dtype(expert_dtype: torch.dtype) -> torch.dtype:
    """The Cosmos precision for experts in ``expert_dtype`` (:data:`COSMOS_PRECISION_RULE`), for every backend."""
    return expert_dtype


def step_stage(index: int) -> str:
    """Stage name of action step ``index`` (0-based)."""
    return f"action_step_{index + 1}"


class StageTimings(dict[str, int]):
    """A hook that sums each stage's nanoseconds (a batch run one element at a time adds up)."""

    def __call__(self, stage: str, duration_ns: int) -> None:
        self[stage] = self.get(stage, 0) + duration_ns


class _Clock:
    def __init__(self, hook: StageHook | None) -> None:
        self.hook = hook
        self.start = self.last = time.perf_counter_ns()

    def mark(self, stage: str) -> None:
        now = time.perf_counter_ns()
        if self.hook is not None:
            self.hook(stage, now - self.last)
        self.last = now

    def finish(self) -> None:
        if self.hook is not None:
            self.hook(STAGE_TOTAL, time.perf_counter_ns() - self.start)


class Stages(Protocol):
    """How each stage executes. States (prefix, generation, context) are opaque to the pipeline.

    Tensors in and out are torch tensors (float32 unless stated); each implementation keeps its
    intermediate arrays wherever it likes (numpy, CUDA).
    """

    name: str
    max_batch: int | None
    """Largest batch one call takes (None: any); larger batches are run element by element."""
    element_workers: int
    """Elements of a larger batch run at once (1: one after another; more only where calls are thread-safe
    and release the GIL)."""

    @property
    def description(self) -> str:
        """Where and how it runs (device, threads, precision), for logs and benchmark tables."""
        ...

    def vision(self, inputs: ModelInputs) -> Any:
        """ViT embeddings of the cameras."""
        ...

    def prefix(self, inputs: ModelInputs, image_embeds: Any) -> Any:
        """Prompt + image tokens through the und expert; its K/V and token layout."""
        ...

    def encode_frames(self, frames: Tensor) -> Tensor:
        """Cosmos latents ``(B, views, C, h, w)`` of one frame per view ``(B, views, 3, H, W)`` in [0, 1]."""
        ...

    def generation(self, prefix: Any, latents: Tensor, view_mask: Tensor) -> Any:
        """Foresight tokens ``(B, views, frames, C, h, w)`` through the gen expert, reading the prefix K/V."""
        ...

    def context(self, prefix: Any, generation: Any) -> Any:
        """What every action step reads: prefix then generation K/V (and the state token's input)."""
        ...

    def velocity(self, context: Any, state: Tensor, x_t: Tensor, time: Tensor) -> Tensor:
        """``v_t`` ``(B, chunk, max_action_dim)`` at ``x_t`` and flow times ``time`` ``(B,)``."""
        ...

    def foresight(self, generation: Any) -> Tensor:
        """Predicted Cosmos latents of frame t+15 ``(B, views, C, h, w)``."""
        ...

    def decode(self, latents: Tensor) -> Tensor:
        """Preview images ``(B, views, 3, H, W)`` in about [-1, 1] of latents ``(B, views, C, h, w)``."""
        ...


@dataclass
class SamplerTrace:
    """What each Euler step consumed and produced: ``x_t``, the velocity, and the time ``(1,)``."""

    x_t: list[Tensor] = field(default_factory=list)
    v_t: list[Tensor] = field(default_factory=list)
    t: list[Tensor] = field(default_factory=list)


def euler(noise: Tensor, steps: int, velocity: Callable[[Tensor, Tensor], Tensor],
          on_step: Callable[[int], None] | None = None, trace: SamplerTrace | None = None) -> Tensor:
    """Euler integration from ``noise`` (t = 1) to actions (t = 0) of ``velocity(x_t, time (B,))``.

    ``dt`` and the time are float32 tensors and the time is accumulated (1.0, 0.9, 0.79999995, ...),
    as the reference does; ``x_t = x_t + dt * v_t``.
    """
    dt = torch.tensor(-1.0 / steps, dtype=torch.float32, device=noise.device)
    time_ = torch.tensor(1.0, dtype=torch.float32, device=noise.device)
    x_t = noise.float()
    for index in range(steps):
        v_t = velocity(x_t, time_.expand(x_t.shape[0])).float()
        if trace is not None:
            trace.x_t.append(x_t)
            trace.v_t.append(v_t)
            trace.t.append(time_.reshape(1))
        x_t = x_t + dt * v_t
        time_ = time_ + dt
        if on_step is not None:
            on_step(index)
    return x_t


@dataclass(frozen=True)
class ChunkResult:
    """One chunk per batch element, and the states a caller may keep (``generation``) or inspect."""

    actions: Tensor
    """(B, chunk, max_action_dim) float32."""
    generation: Any
    """The generation block's state: pass it to :meth:`InferencePipeline.run` to reuse its K/V."""
    prefix: Any
    latents: Tensor | None
    """The Cosmos latents the generation pass consumed (None when a generation was reused)."""
    foresight_latents: Tensor | None = None
    foresight_images: Tensor | None = None


def stack_inputs(batch: Sequence[ModelInputs]) -> ModelInputs:
    """Observations of batch 1 (each from the preprocessor) stacked along the batch axis."""
    if not batch:
        raise PreprocessingError("an empty batch: pass at least one observation")
    stacked = {}
    for f in fields(ModelInputs):
        values = [getattr(inputs, f.name) for inputs in batch]
        missing = sum(v is None for v in values)
        if missing not in (0, len(values)):
            raise PreprocessingError(f"{f.name} is given for some observations of the batch but not for all")
        stacked[f.name] = None if missing else torch.cat(values, dim=0)
    return ModelInputs(**stacked)


def select(inputs: ModelInputs, index: int) -> ModelInputs:
    """Element ``index`` of a batch, as a batch of one."""
    return replace(inputs, **{f.name: getattr(inputs, f.name)[index:index + 1] for f in fields(ModelInputs)
                              if getattr(inputs, f.name) is not None})


class InferencePipeline:
    """Observation batch + noise -> action chunk (+ foresight), over one :class:`Stages` implementation."""

    def __init__(self, stages: Stages, config: InternVLAConfig) -> None:
        self.stages = stages
        self.config = config
        self._elements = ElementRunner(getattr(stages, "element_workers", 1))

    @property
    def name(self) -> str:
        return self.stages.name

    @property
    def description(self) -> str:
        return self.stages.description

    def encode_frames(self, frames: Tensor) -> Tensor:
        """Cosmos latents of one frame per view ``(B, views, 3, H, W)`` (e.g. the t-15 frames, ahead of time)."""
        return self._per_element(frames, self.stages.encode_frames)

    def decode_foresight(self, latents: Tensor) -> Tensor:
        """Preview images ``(B, views, 3, H, W)`` of foresight latents ``(B, views, C, h, w)``."""
        return self._per_element(latents, self.stages.decode)

    def _per_element(self, x: Tensor, fn: Callable[[Tensor], Tensor]) -> Tensor:
        limit = self.stages.max_batch
        if limit is None or x.shape[0] <= limit:
            return fn(x).float()
        return torch.cat(self._elements.map(lambda i: fn(x[i:i + 1]).float(), x.shape[0]))

    def latents(self, inputs: ModelInputs) -> Tensor:
        """The ``(B, views, frames, C, h, w)`` Cosmos latents of ``inputs`` (given, or encoded here)."""
        if inputs.cosmos_latents is not None:
            return inputs.cosmos_latents.float()
        if inputs.frames is None:
            raise PreprocessingError("ModelInputs needs either frames or cosmos_latents for the foresight block")
        return torch.stack([self.encode_frames(inputs.frames[:, :, t]) for t in range(inputs.frames.shape[2])],
                           dim=2)

    def run(self, inputs: ModelInputs, noise: Tensor, *, generation: Any = None, foresight: bool = False,
            decode: bool = False, hook: StageHook | None = None, trace: SamplerTrace | None = None,
            rtc: RtcGuidance | RtcPrefix | None = None) -> ChunkResult:
        """One chunk for every batch element from ``noise`` ``(B, chunk, max_action_dim)``.

        ``generation``: the state of an earlier chunk's generation pass, reused instead of running it
        (the caller decides when foresight is stale). ``foresight`` adds the t+15 latents, ``decode``
        also their images. ``rtc``: real-time chunking (:mod:`internvla_ros.model.rtc`): guidance (needs
        stages with a ``guidance(context, state)`` method), or the executed prefix given clean to a model
        trained with training-time RTC (needs stages whose velocity takes a time per action step).
        """
        expected = (inputs.batch_size, self.config.chunk_size, self.config.max_action_dim)
        if tuple(noise.shape) != expected:
            raise ModelError(f"noise must have shape {expected}, got {tuple(noise.shape)}")
        limit = self.stages.max_batch
        if limit is not None and inputs.batch_size > limit:
            if generation is not None:
                raise ModelError(f"{self.name} runs batches of {limit}: a generation cannot be reused across a batch")
            element_hook = self._elements.serialised(hook)
            return concat_results(self._elements.map(
                lambda i: self.run(select(inputs, i), noise[i:i + 1], foresight=foresight, decode=decode,
                                   hook=element_hook, rtc=rtc), inputs.batch_size))
        if isinstance(rtc, RtcGuidance) and rtc.beta > 0:
            if not hasattr(self.stages, "guidance"):
                raise ModelError(f"the {self.name} backend cannot run real-time chunking guidance")
            with torch.inference_mode(False), torch.no_grad():  # the guidance's autograd needs normal tensors
                return self._run(inputs, noise, generation, foresight or decode, decode, hook, trace, rtc)
        prefix = rtc if isinstance(rtc, RtcPrefix) else None  # guidance with beta 0 is plain sampling
        return self._run(inputs, noise, generation, foresight or decode, decode, hook, trace, prefix)

    def _run(self, inputs: ModelInputs, noise: Tensor, generation: Any, foresight: bool, decode: bool,
             hook: StageHook | None, trace: SamplerTrace | None,
             rtc: RtcGuidance | RtcPrefix | None = None) -> ChunkResult:
        stages, clock = self.stages, _Clock(hook)
        image_embeds = stages.vision(inputs)
        clock.mark(STAGE_VISION)
        prefix = stages.prefix(inputs, image_embeds)
        clock.mark(STAGE_PREFIX)
        latents = None
        if generation is None:
            latents = self.latents(inputs)
            clock.mark(STAGE_COSMOS)
            generation = stages.generation(prefix, latents, inputs.view_mask)
            clock.mark(STAGE_GENERATION)
        context = stages.context(prefix, generation)
        clock.mark(STAGE_CONTEXT)
        velocity = lambda x_t, t: stages.velocity(context, inputs.state, x_t, t)  # noqa: E731
        if isinstance(rtc, RtcGuidance):
            velocity = guided_velocity(velocity, stages.guidance(context, inputs.state), rtc)  # type: ignore[attr-defined]
        elif isinstance(rtc, RtcPrefix):
            velocity = rtc.velocity(velocity)
        actions = euler(noise, self.config.num_inference_steps, velocity,
                        on_step=lambda index: clock.mark(step_stage(index)), trace=trace)
        if isinstance(rtc, RtcPrefix):
            actions = rtc.apply(actions)
        predicted = images = None
        if foresight:
            predicted = stages.foresight(generation).float()
            clock.mark(STAGE_FORESIGHT)
        if decode and predicted is not None:
            images = stages.decode(predicted).float()
            clock.mark(STAGE_DECODE)
        clock.finish()
        return ChunkResult(actions=actions, generation=generation, prefix=prefix, latents=latents,
                           foresight_latents=predicted, foresight_images=images)


def concat_results(parts: list[ChunkResult]) -> ChunkResult:
    """Batch elements' chunks, computed one by one, as one batch (their generations kept as a tuple)."""
    def cat(values: list[Tensor | None]) -> Tensor | None:
        return None if any(v is None for v in values) else torch.cat(values)  # type: ignore[arg-type]

    return ChunkResult(
        actions=torch.cat([p.actions for p in parts]),
        generation=tuple(p.generation for p in parts),
        prefix=tuple(p.prefix for p in parts),
        latents=cat([p.latents for p in parts]),
        foresight_latents=cat([p.foresight_latents for p in parts]),
        foresight_images=cat([p.foresight_images for p in parts]),
    )
