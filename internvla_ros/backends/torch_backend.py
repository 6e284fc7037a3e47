"""Eager PyTorch backend: the model's own stage methods, timed; optionally ``torch.compile``-d.

``kv_reuse=False`` runs :meth:`InternVLAModel.predict_uncached` (all blocks recomputed at every
step): the baseline that shows what the K/V reuse saves.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from internvla_ros.backends import graphs
from internvla_ros.backends.base import (
    STAGE_CONTEXT,
    STAGE_COSMOS,
    STAGE_GENERATION,
    STAGE_PREFIX,
    STAGE_VISION,
    BackendResult,
    StageClock,
    step_stage,
)
from internvla_ros.backends.errors import BackendError
from internvla_ros.model.errors import ModelError
from internvla_ros.model.inputs import ModelInputs
from internvla_ros.model.modeling import InternVLAModel

NAME = "torch"
NAME_UNCACHED = "torch-uncached"


class TorchBackend:
    """Wraps an :class:`InternVLAModel` (already on its device and in its precision)."""

    def __init__(self, model: InternVLAModel, kv_reuse: bool = True, compile: bool = False) -> None:
        self.model = model
        self.kv_reuse = kv_reuse
        self.compiled = compile
        self.name = NAME if kv_reuse else NAME_UNCACHED
        wrap: Callable[[Any], Any] = torch.compile if compile else (lambda fn: fn)
        self._run_prefix = wrap(model.run_prefix)
        self._run_generation = wrap(model.run_generation)
        self._denoise_step = wrap(model.denoise_step)
        self._embed_images = wrap(model.embed_images)
        self._encode = wrap(model.encode_frames)

    @property
    def description(self) -> str:
        device = next(self.model.parameters()).device
        return (f"{self.name} eager{' + torch.compile' if self.compiled else ''}, {device}, "
                f"{torch.get_num_threads()} thread(s), {self.model.compute_dtype}")

    @torch.no_grad()
    def encode_frames(self, frames: Tensor) -> Tensor:
        return self._encode(frames)

    @torch.no_grad()
    def predict(self, inputs: ModelInputs, noise: Tensor, foresight: bool = False) -> BackendResult:
        try:
            return self._predict(inputs, noise, foresight) if self.kv_reuse else self._uncached(inputs, noise,
                                                                                                 foresight)
        except ModelError as err:
            raise BackendError(str(err)) from err

    def _uncached(self, inputs: ModelInputs, noise: Tensor, foresight: bool) -> BackendResult:
        clock = StageClock()
        prediction = self.model.predict_uncached(inputs, noise)
        predicted = self.model.foresight_latents(prediction.middle_out) if foresight else None
        return BackendResult(prediction.actions, predicted, clock.finish())

    def _predict(self, inputs: ModelInputs, noise: Tensor, foresight: bool) -> BackendResult:
        model, cfg = self.model, self.model.config
        model._check_noise(noise, inputs.input_ids.shape[0])
        clock = StageClock()
        image_embeds = self._embed_images(inputs.pixel_values, inputs.image_grid_thw)
        clock.mark(STAGE_VISION)
        graphs.check_image_tokens(cfg, inputs.input_ids, image_embeds.shape[0])
        positions = graphs.prefix_positions(cfg, inputs.input_ids, inputs.attention_mask, inputs.image_grid_thw)
        prefix = graphs.prefix_block(model, inputs.input_ids, inputs.attention_mask, image_embeds, positions)
        _, prefix_cache = self._run_prefix(prefix)
        clock.mark(STAGE_PREFIX)
        latents = inputs.cosmos_latents.float() if inputs.cosmos_latents is not None else None
        if latents is None:
            if inputs.frames is None:
                raise BackendError("ModelInputs needs either frames or cosmos_latents for the foresight block")
            latents = self._encode(inputs.frames)
        clock.mark(STAGE_COSMOS)
        generation = model.embed_generation(latents, inputs.view_mask, prefix.positions)
        middle_out, generation_cache = self._run_generation(prefix_cache, generation)
        clock.mark(STAGE_GENERATION)
        context = model.action_context(prefix_cache, generation_cache)
        clock.mark(STAGE_CONTEXT)
        step = iter(range(cfg.num_inference_steps))

        def velocity(x_t: Tensor, time: Tensor) -> Tensor:
            v_t = self._denoise_step(context, inputs.state, x_t, time)
            clock.mark(step_stage(next(step)))
            return v_t

        # The model's own Euler loop (float32 dt, accumulated time); only the velocity is timed.
        actions = model._euler(noise, velocity, None)
        predicted = model.foresight_latents(middle_out) if foresight else None
        return BackendResult(actions, predicted, clock.finish())

    @torch.no_grad()
    def decode_foresight(self, latents: Tensor) -> Tensor:
        return self.model.decode_foresight(latents)
