"""The staged inference loop over exported graphs, shared by the ONNX Runtime and TensorRT backends.

The host computes what depends on data values (prompt M-RoPE ids), concatenates the prefix and
generation K/V once per chunk and runs the Euler loop exactly as the model does (float32 ``dt``
and accumulated float32 time), so one action-step graph serves all steps.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
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
from internvla_ros.backends.graphs import Layout
from internvla_ros.model.config import InternVLAConfig
from internvla_ros.model.errors import ModelError
from internvla_ros.model.inputs import ModelInputs


class GraphRunner(Protocol):
    """Runs named graphs; arrays live wherever the runner keeps them (numpy, CUDA tensors)."""

    def run(self, graph: str, feeds: dict[str, Any]) -> list[Any]:
        """Outputs in the manifest's order."""
        ...

    def to_device(self, array: np.ndarray) -> Any: ...

    def to_host(self, value: Any) -> np.ndarray: ...

    def concat(self, parts: list[Any], axis: int) -> Any: ...


def _np(x: Tensor, dtype: type | None = None) -> np.ndarray:
    array = x.detach().cpu().contiguous().numpy()
    return array.astype(dtype) if dtype is not None and array.dtype != dtype else array


class GraphPipeline:
    """:class:`~internvla_ros.backends.base.InferenceBackend` over a :class:`GraphRunner`."""

    def __init__(self, name: str, description: str, config: InternVLAConfig, runner: GraphRunner) -> None:
        self.name = name
        self._description = description
        self.config = config
        self.layout = Layout.of(config)
        self.runner = runner

    @property
    def description(self) -> str:
        return self._description

    def _check(self, what: str, value: Tensor, shape: tuple[int, ...]) -> None:
        if tuple(value.shape) != shape:
            raise BackendError(f"{what} must have shape {shape} for this export (batch 1, fixed layout), "
                               f"got {tuple(value.shape)}")

    def encode_frames(self, frames: Tensor) -> Tensor:
        lay = self.layout
        self._check("frames", frames, (1, lay.n_views, 3, *lay.frame_hw))
        (latents,) = self.runner.run(graphs.COSMOS_ENCODE, {"frames": self.runner.to_device(_np(frames[0],
                                                                                                  np.float32))})
        return torch.from_numpy(self.runner.to_host(latents))[None]

    def _latents(self, inputs: ModelInputs) -> np.ndarray:
        lay = self.layout
        if inputs.cosmos_latents is not None:
            self._check("cosmos_latents", inputs.cosmos_latents,
                        (1, lay.n_views, lay.frames_per_view, lay.latent_channels, *lay.latent_hw))
            return _np(inputs.cosmos_latents, np.float32)
        if inputs.frames is None:
            raise BackendError("ModelInputs needs either frames or cosmos_latents for the foresight block")
        self._check("frames", inputs.frames, (1, lay.n_views, lay.frames_per_view, 3, *lay.frame_hw))
        per_frame = [self.encode_frames(inputs.frames[:, :, t]).numpy() for t in range(lay.frames_per_view)]
        return np.stack(per_frame, axis=2)

    def predict(self, inputs: ModelInputs, noise: Tensor, foresight: bool = False) -> BackendResult:
        cfg, lay, run = self.config, self.layout, self.runner
        dev = run.to_device
        self._check("noise", noise, (1, lay.chunk_size, lay.max_action_dim))
        self._check("input_ids", inputs.input_ids, (1, lay.prefix_len))
        self._check("pixel_values", inputs.pixel_values, (1, lay.n_views * lay.patches_per_view, lay.patch_values))
        self._check("attention_mask", inputs.attention_mask, (1, lay.prefix_len))
        self._check("view_mask", inputs.view_mask, (1, lay.n_views))
        grid = torch.tensor([[list(cfg.vision_grid)] * lay.n_views])
        if not torch.equal(inputs.image_grid_thw.cpu().long(), grid):
            raise BackendError(f"image_grid_thw must be {grid.tolist()} (the exported ViT grid), "
                               f"got {inputs.image_grid_thw.tolist()}")
        if inputs.state.shape[-1] > lay.max_state_dim:
            raise BackendError(f"state has {inputs.state.shape[-1]} dims, more than the model's {lay.max_state_dim}")
        try:
            graphs.check_image_tokens(cfg, inputs.input_ids, lay.n_views * lay.image_tokens_per_view)
            positions = graphs.prefix_positions(cfg, inputs.input_ids, inputs.attention_mask, inputs.image_grid_thw)
        except ModelError as err:
            raise BackendError(str(err)) from err
        clock = StageClock()
        (image_embeds,) = run.run(graphs.VISION, {"pixel_values": dev(_np(inputs.pixel_values[0], np.float32))})
        clock.mark(STAGE_VISION)
        prefix_positions = dev(_np(positions, np.int64))
        prefix_valid = _np(inputs.attention_mask, np.int64)
        prefix_keys, prefix_values = run.run(graphs.PREFIX, {
            "input_ids": dev(_np(inputs.input_ids, np.int64)), "attention_mask": dev(prefix_valid),
            "image_embeds": image_embeds, "position_ids": prefix_positions,
        })
        clock.mark(STAGE_PREFIX)
        latents = self._latents(inputs)
        clock.mark(STAGE_COSMOS)
        middle_out, gen_keys, gen_values, gen_valid, gen_positions = run.run(graphs.GENERATION, {
            "cosmos_latents": dev(latents), "view_mask": dev(_np(inputs.view_mask, np.bool_)),
            "prefix_keys": prefix_keys, "prefix_values": prefix_values, "prefix_valid": dev(prefix_valid != 0),
            "prefix_positions": prefix_positions,
        })
        clock.mark(STAGE_GENERATION)
        context = {
            "context_keys": run.concat([prefix_keys, gen_keys], 3),
            "context_values": run.concat([prefix_values, gen_values], 3),
            "context_valid": run.concat([dev(prefix_valid != 0), gen_valid], 1),
            "context_positions": run.concat([prefix_positions, gen_positions], 2),
            "state": dev(_np(F.pad(inputs.state.float(), (0, lay.max_state_dim - inputs.state.shape[-1])))),
        }
        steps = lay.num_inference_steps
        dt = dev(np.array(-1.0 / steps, dtype=np.float32))
        time = dev(np.ones((1,), dtype=np.float32))
        x_t = dev(_np(noise, np.float32))
        clock.mark(STAGE_CONTEXT)
        for index in range(steps):
            (v_t,) = run.run(graphs.ACTION_STEP, {**context, "x_t": x_t, "time": time})
            x_t = x_t + dt * v_t
            time = time + dt
            clock.mark(step_stage(index))
        actions = torch.from_numpy(np.array(run.to_host(x_t)))
        predicted = None
        if foresight:
            (predicted,) = run.run(graphs.FORESIGHT, {"middle_out": middle_out})
            predicted = torch.from_numpy(np.array(run.to_host(predicted)))
        return BackendResult(actions=actions, foresight_latents=predicted, timings_ns=clock.finish())

    def decode_foresight(self, latents: Tensor) -> Tensor:
        lay = self.layout
        self._check("latents", latents, (1, lay.n_views, lay.latent_channels, *lay.latent_hw))
        (images,) = self.runner.run(graphs.COSMOS_DECODE, {"latents": self.runner.to_device(_np(latents[0],
                                                                                                 np.float32))})
        return torch.from_numpy(np.array(self.runner.to_host(images)))[None]
