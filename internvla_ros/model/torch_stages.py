"""The pipeline's stages in PyTorch: the model's own stage methods, eager or ``torch.compile``-d.

``kv_reuse=False`` is the recompute-everything baseline: the prefix and generation stages only embed
their tokens, and every action step runs all three experts over all blocks (what K/V reuse saves).
It never reuses a generation across chunks either (the policy recomputes foresight every chunk).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from internvla_ros.model.inputs import ModelInputs
from internvla_ros.model.modeling import BlockCache, InternVLAModel, Prediction, TokenBlock
from internvla_ros.model.pipeline import InferencePipeline, SamplerTrace
from internvla_ros.model.rtc import GuidanceStep, autograd_guidance

NAME = "torch"
NAME_UNCACHED = "torch-uncached"


@dataclass
class TorchPrefix:
    block: TokenBlock
    image_embeds: Tensor
    cache: BlockCache | None = None
    out: Tensor | None = None
    """The und expert's final-norm output (the uncached path fills it at every step)."""


@dataclass
class TorchGeneration:
    block: TokenBlock
    latents: Tensor
    cache: BlockCache | None = None
    middle_out: Tensor | None = None
    """The gen expert's final-norm output (the uncached path fills it at every step)."""


@dataclass(frozen=True)
class _Joint:
    """The uncached path's context: the blocks themselves, recomputed at every step."""

    prefix: TorchPrefix
    generation: TorchGeneration


class TorchStages:
    """:class:`~internvla_ros.model.pipeline.Stages` over an :class:`InternVLAModel` on its device and precision."""

    max_batch = None
    element_workers = 1  # any batch is one call

    def __init__(self, model: InternVLAModel, kv_reuse: bool = True, compile: bool = False) -> None:
        self.model = model
        self.kv_reuse = kv_reuse
        self.compiled = compile
        self.name = NAME if kv_reuse else NAME_UNCACHED
        wrap: Callable[[Any], Any] = torch.compile if compile else (lambda fn: fn)
        self._embed_images = wrap(model.embed_images)
        self._encode = wrap(model.encode_frames)
        self._run_prefix = wrap(model.run_prefix)
        self._run_generation = wrap(model.run_generation)
        self._denoise_step = wrap(model.denoise_step)
        self._joint_pass = wrap(model._joint_pass)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def description(self) -> str:
        return (f"{self.name} eager{' + torch.compile' if self.compiled else ''}, {self.device}, "
                f"{torch.get_num_threads()} thread(s), {self.model.compute_dtype}")

    def vision(self, inputs: ModelInputs) -> Tensor:
        return self._embed_images(inputs.pixel_values, inputs.image_grid_thw)

    def prefix(self, inputs: ModelInputs, image_embeds: Tensor) -> TorchPrefix:
        model = self.model
        model.check_image_tokens(inputs.input_ids, image_embeds.shape[0])
        positions = model.prefix_positions(inputs.input_ids, inputs.attention_mask, inputs.image_grid_thw)
        prefix = TorchPrefix(model.prefix_tokens(inputs.input_ids, inputs.attention_mask, image_embeds, positions),
                             image_embeds)
        if self.kv_reuse:
            prefix.out, prefix.cache = self._run_prefix(prefix.block)
        return prefix

    def encode_frames(self, frames: Tensor) -> Tensor:
        return self._encode(frames)

    def generation(self, prefix: TorchPrefix, latents: Tensor, view_mask: Tensor) -> TorchGeneration:
        block = self.model.embed_generation(latents.to(self.device), view_mask, prefix.block.positions)
        generation = TorchGeneration(block, latents)
        if self.kv_reuse:
            assert prefix.cache is not None
            generation.middle_out, generation.cache = self._run_generation(prefix.cache, block)
        return generation

    def context(self, prefix: TorchPrefix, generation: TorchGeneration) -> BlockCache | _Joint:
        if not self.kv_reuse:
            return _Joint(prefix, generation)
        if prefix.cache is None or generation.cache is None:
            raise ValueError("a generation of the recompute-everything path cannot be reused with K/V caching")
        return self.model.action_context(prefix.cache, generation.cache)

    def velocity(self, context: BlockCache | _Joint, state: Tensor, x_t: Tensor, time: Tensor) -> Tensor:
        if isinstance(context, _Joint):
            prefix, generation = context.prefix, context.generation
            prefix.out, generation.middle_out, v_t = self._joint_pass(prefix.block, generation.block, state, x_t,
                                                                       time)
            return v_t
        return self._denoise_step(context, state, x_t, time)

    def guidance(self, context: BlockCache | _Joint, state: Tensor) -> GuidanceStep:
        """Real-time chunking's guidance step by autograd through the action expert."""
        return autograd_guidance(lambda x_t, time: self.velocity(context, state, x_t, time))

    def foresight(self, generation: TorchGeneration) -> Tensor:
        if generation.middle_out is None:
            raise ValueError("no generation output yet: the foresight stage follows the action steps")
        return self.model.foresight_latents(generation.middle_out)

    def decode(self, latents: Tensor) -> Tensor:
        return self.model.decode_foresight(latents)


def torch_pipeline(model: InternVLAModel, kv_reuse: bool = True, compile: bool = False) -> InferencePipeline:
    """The pipeline over ``model`` in eager (or compiled) PyTorch."""
    return InferencePipeline(TorchStages(model, kv_reuse=kv_reuse, compile=compile), model.config)


@torch.no_grad()
def predict(model: InternVLAModel, inputs: ModelInputs, noise: Tensor, kv_reuse: bool = True) -> Prediction:
    """One chunk through the pipeline, with the intermediates parity checks compare."""
    trace = SamplerTrace()
    result = torch_pipeline(model, kv_reuse).run(inputs, noise, trace=trace)
    prefix, generation = result.prefix, result.generation
    assert result.latents is not None and prefix.out is not None and generation.middle_out is not None
    return Prediction(
        actions=result.actions, prefix_out=prefix.out, middle_out=generation.middle_out,
        cosmos_latents=result.latents, prefix_position_ids=prefix.block.positions,
        middle_position_ids=generation.block.positions, vit_image_embeds=prefix.image_embeds,
        prefix_embs=prefix.block.embeds, middle_embs=generation.block.embeds, trace=trace,
    )
