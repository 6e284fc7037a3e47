"""The pipeline's stages over exported graphs, shared by the ONNX Runtime and TensorRT backends.

Each stage is one graph call; the host computes only what depends on data values (the prompt's
M-RoPE ids) and joins the prefix and generation K/V once per chunk. The Euler loop is the
pipeline's (:func:`internvla_ros.model.pipeline.euler`), so one action-step graph serves all steps.
The graphs have batch 1: the pipeline runs a larger batch element by element, ``element_workers`` at
once where the runner's calls may overlap (ONNX Runtime on the CPU releases the GIL for a whole call).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from internvla_ros.backends import graphs
from internvla_ros.backends.errors import BackendError
from internvla_ros.backends.graphs import Layout
from internvla_ros.model.config import InternVLAConfig
from internvla_ros.model.errors import ModelError
from internvla_ros.model.inputs import ModelInputs
from internvla_ros.model.modeling import check_image_tokens
from internvla_ros.model.pipeline import InferencePipeline
from internvla_ros.model.rtc import GuidanceStep


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


@dataclass(frozen=True)
class GraphPrefix:
    keys: Any
    values: Any
    valid: Any
    positions: Any


@dataclass(frozen=True)
class GraphGeneration:
    middle_out: Any
    keys: Any
    values: Any
    valid: Any
    positions: Any


class GraphStages:
    """:class:`~internvla_ros.model.pipeline.Stages` over a :class:`GraphRunner` (fixed shapes, batch 1)."""

    max_batch = 1

    def __init__(self, name: str, description: str, config: InternVLAConfig, runner: GraphRunner,
                 element_workers: int = 1) -> None:
        self.name = name
        self.element_workers = element_workers
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

    def _host(self, value: Any) -> Tensor:
        return torch.from_numpy(np.array(self.runner.to_host(value)))

    def vision(self, inputs: ModelInputs) -> Any:
        lay, cfg = self.layout, self.config
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
        (image_embeds,) = self.runner.run(graphs.VISION, {
            "pixel_values": self.runner.to_device(_np(inputs.pixel_values[0], np.float32))})
        return image_embeds

    def prefix(self, inputs: ModelInputs, image_embeds: Any) -> GraphPrefix:
        dev = self.runner.to_device
        try:
            check_image_tokens(self.config, inputs.input_ids, self.layout.n_views * self.layout.image_tokens_per_view)
            positions = dev(_np(graphs.prefix_positions(self.config, inputs.input_ids, inputs.attention_mask,
                                                        inputs.image_grid_thw), np.int64))
        except ModelError as err:
            raise BackendError(str(err)) from err
        mask = _np(inputs.attention_mask, np.int64)
        keys, values = self.runner.run(graphs.PREFIX, {
            "input_ids": dev(_np(inputs.input_ids, np.int64)), "attention_mask": dev(mask),
            "image_embeds": image_embeds, "position_ids": positions,
        })
        return GraphPrefix(keys, values, dev(mask != 0), positions)

    def encode_frames(self, frames: Tensor) -> Tensor:
        """``(1, k, 3, H, W)`` -> ``(1, k, C, h, w)``, one graph call per frame (any k >= 1)."""
        frame_hw = self.layout.frame_hw
        if frames.ndim != 5 or frames.shape[0] != 1 or tuple(frames.shape[2:]) != (3, *frame_hw):
            raise BackendError(f"frames must have shape (1, k, 3, {frame_hw[0]}, {frame_hw[1]}) for this export "
                               f"(batch 1, any k >= 1), got {tuple(frames.shape)}")
        latents = [self.runner.run(graphs.COSMOS_ENCODE, {"frames": self.runner.to_device(_np(frames[0, k:k + 1],
                                                                                             np.float32))})[0]
                   for k in range(frames.shape[1])]
        return torch.stack([self._host(one)[0] for one in latents])[None]

    def generation(self, prefix: GraphPrefix, latents: Tensor, view_mask: Tensor) -> GraphGeneration:
        lay, dev = self.layout, self.runner.to_device
        self._check("cosmos_latents", latents, (1, lay.n_views, lay.frames_per_view, lay.latent_channels,
                                                *lay.latent_hw))
        outputs = self.runner.run(graphs.GENERATION, {
            "cosmos_latents": dev(_np(latents, np.float32)), "view_mask": dev(_np(view_mask, np.bool_)),
            "prefix_keys": prefix.keys, "prefix_values": prefix.values, "prefix_valid": prefix.valid,
            "prefix_positions": prefix.positions,
        })
        return GraphGeneration(*outputs)

    def context(self, prefix: GraphPrefix, generation: GraphGeneration) -> dict[str, Any]:
        concat = self.runner.concat
        return {
            "context_keys": concat([prefix.keys, generation.keys], 3),
            "context_values": concat([prefix.values, generation.values], 3),
            "context_valid": concat([prefix.valid, generation.valid], 1),
            "context_positions": concat([prefix.positions, generation.positions], 2),
        }

    def velocity(self, context: dict[str, Any], state: Tensor, x_t: Tensor, time: Tensor) -> Tensor:
        lay, dev = self.layout, self.runner.to_device
        padded = F.pad(state.float(), (0, lay.max_state_dim - state.shape[-1]))
        self._check("x_t", x_t, (1, lay.chunk_size, lay.max_action_dim))
        if time.ndim != 1:
            raise ModelError(f"the {self.name} graphs take one flow time per chunk; a model trained with "
                             "training-time RTC needs one per action step: use backend torch")
        (v_t,) = self.runner.run(graphs.ACTION_STEP, {
            **context, "state": dev(_np(padded)), "x_t": dev(_np(x_t, np.float32)),
            "time": dev(_np(time[:1], np.float32)),
        })
        return self._host(v_t).to(x_t.device)

    def guidance(self, context: dict[str, Any], state: Tensor) -> GuidanceStep:
        """Real-time chunking's guidance step: the exported graph of the velocity and its VJP."""
        lay, dev = self.layout, self.runner.to_device
        padded = dev(_np(F.pad(state.float(), (0, lay.max_state_dim - state.shape[-1]))))

        def step(x_t: Tensor, time: Tensor, target: Tensor, weights: Tensor) -> tuple[Tensor, Tensor]:
            self._check("x_t", x_t, (1, lay.chunk_size, lay.max_action_dim))
            v_t, g = self.runner.run(graphs.GUIDANCE_STEP, {
                **context, "state": padded, "x_t": dev(_np(x_t, np.float32)), "time": dev(_np(time[:1], np.float32)),
                "target": dev(_np(target, np.float32)), "weights": dev(_np(weights, np.float32))})
            return self._host(v_t).to(x_t.device), self._host(g).to(x_t.device)

        return step

    def foresight(self, generation: GraphGeneration) -> Tensor:
        (predicted,) = self.runner.run(graphs.FORESIGHT, {"middle_out": generation.middle_out})
        return self._host(predicted)

    def decode(self, latents: Tensor) -> Tensor:
        lay = self.layout
        self._check("latents", latents, (1, lay.n_views, lay.latent_channels, *lay.latent_hw))
        (images,) = self.runner.run(graphs.COSMOS_DECODE, {"latents": self.runner.to_device(_np(latents[0],
                                                                                                 np.float32))})
        return self._host(images)[None]


def graph_pipeline(name: str, description: str, config: InternVLAConfig, runner: GraphRunner,
                   element_workers: int = 1) -> InferencePipeline:
    return InferencePipeline(GraphStages(name, description, config, runner, element_workers), config)
