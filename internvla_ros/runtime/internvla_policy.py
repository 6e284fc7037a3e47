"""The InternVLA-A1 model behind the runtime's Policy interface.

One `infer` call: preprocess the observation (cameras at t and t-15, normalised state, prompt), run the
prefix once, run the generation (foresight) pass when the runtime asks for it and otherwise reuse its
cached K/V, then sample the chunk with 10 action steps that only read the cached K/V. Cosmos latents
are cached per camera frame, so the t-15 frame, which was the current frame of an earlier request, is
not encoded again. Noise comes from a seeded generator, so a replay of the same observations gives
the same chunks.

    policy = load_policy(model="models/default")       # the factory the inference worker calls
"""

from __future__ import annotations

import dataclasses
import time
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from internvla_ros.backends.base import InferenceBackend
from internvla_ros.model.checkpoint import TORCH_DTYPES, Checkpoint, load_checkpoint
from internvla_ros.model.config import InternVLAConfig, load_config
from internvla_ros.model.inputs import ModelInputs
from internvla_ros.model.modeling import BlockCache
from internvla_ros.model.preprocessing import ObservationPreprocessor, PreprocessorConfig, load_tokenizer
from internvla_ros.runtime.observation import CameraFrames, Observation
from internvla_ros.runtime.policy import PolicyResult

DTYPES = ("float32", "bfloat16")  # of TORCH_DTYPES, the precisions the policy is run and tested in
LATENT_CACHE_SIZE = 64  # frames; a few seconds of history for three cameras
WARMUP_CALLS = 2


def _now() -> int:
    return time.monotonic_ns()


class InternVLAPolicy:
    """Observation -> normalised action chunk (chunk_size, max_action_dim).

    With the eager model (``checkpoint``) the foresight K/V is reused between recomputations; with a
    compiled ``backend`` (ONNX Runtime, TensorRT) each chunk runs the backend's whole pipeline, the
    Cosmos latents still cached per frame.
    """

    def __init__(self, checkpoint: Checkpoint | None, preprocessor: ObservationPreprocessor, seed: int = 0,
                 backend: InferenceBackend | None = None, config: InternVLAConfig | None = None,
                 directory: Path | None = None) -> None:
        if (checkpoint is None) == (backend is None):
            raise ValueError("give either an eager checkpoint or a compiled backend")
        self.model = checkpoint.model if checkpoint is not None else None
        self.config = checkpoint.config if checkpoint is not None else config
        self.backend = backend
        self.preprocessor = preprocessor
        self._seed = seed
        self._generator = torch.Generator().manual_seed(seed)
        self._generation: BlockCache | None = None
        self._middle_out: torch.Tensor | None = None
        self._generation_prompt: str | None = None
        self._latents: OrderedDict[tuple[str, int], torch.Tensor] = OrderedDict()
        self.info: dict[str, Any] = {"model": str(checkpoint.directory if checkpoint else directory)}
        if self.model is not None:
            self.info.update(backend="torch", dtype=str(self.model.compute_dtype), foresight_kv_reuse=True,
                             parameters=sum(p.numel() for p in self.model.parameters()))
        else:
            self.info.update(backend=backend.description, foresight_kv_reuse=False)

    def reset(self) -> None:
        self._generator.manual_seed(self._seed)
        self._generation = self._middle_out = self._generation_prompt = None
        self._latents.clear()

    def _encode(self, frames: torch.Tensor) -> torch.Tensor:
        """Latents (1, n_views, C, h, w) of one frame per view (1, n_views, 3, H, W)."""
        if self.backend is not None:
            return self.backend.encode_frames(frames).float()
        return self.model.encode_frames(frames)

    def _cosmos_latents(self, cameras: Mapping[str, CameraFrames], frames: torch.Tensor) -> torch.Tensor:
        """(1, n_views, 2, C, h, w): each camera's [t-15, t] latents, each frame encoded once.

        A frame index (t-15 or t) is encoded for all views at once when any camera's frame is new.
        """
        cfg = self.config
        latents = torch.zeros(1, cfg.n_views, cfg.frames_per_view, cfg.cosmos_latent_channels,
                              *cfg.cosmos_latent_hw)
        for index, stamp_of in enumerate((lambda c: c.history_stamp_ns, lambda c: c.current_stamp_ns)):
            keys = {name: (name, stamp_of(camera)) for name, camera in cameras.items()}
            if any(key not in self._latents for key in keys.values()):
                encoded = self._encode(frames[:, :, index])
                for name, camera in cameras.items():
                    self._latents.setdefault(keys[name], encoded[0, camera.slot])
            for name, camera in cameras.items():
                latents[0, camera.slot, index] = self._latents[keys[name]]
        while len(self._latents) > LATENT_CACHE_SIZE:
            self._latents.popitem(last=False)
        return latents

    @torch.inference_mode()
    def infer(self, observation: Observation) -> PolicyResult:
        timing: dict[str, int] = {}
        start = mark = _now()

        def lap(stage: str) -> None:
            nonlocal mark
            now = _now()
            timing[stage] = now - mark
            mark = now

        current = {camera.slot: camera.current for camera in observation.cameras.values()}
        history = {camera.slot: camera.history for camera in observation.cameras.values()}
        inputs = self.preprocessor(current, observation.normalized_state, observation.instruction, history)
        lap("preprocess")
        if self.backend is not None:
            return self._infer_compiled(observation, inputs, timing, start)
        model = self.model
        prefix, _ = model.embed_prefix(inputs.pixel_values, inputs.image_grid_thw, inputs.input_ids,
                                       inputs.attention_mask)
        lap("vision")
        _, prefix_cache = model.run_prefix(prefix)
        lap("prefix")
        stale = observation.instruction != self._generation_prompt
        if observation.recompute_foresight or self._generation is None or stale:
            latents = self._cosmos_latents(observation.cameras, inputs.frames)
            lap("cosmos_encode")
            generation = model.embed_generation(latents, inputs.view_mask, prefix.positions)
            self._middle_out, self._generation = model.run_generation(prefix_cache, generation)
            self._generation_prompt = observation.instruction
            lap("generation")
        context = model.action_context(prefix_cache, self._generation)
        noise = torch.randn(1, self.config.chunk_size, self.config.max_action_dim, generator=self._generator)
        actions = model.sample_actions(context, inputs.state, noise)
        lap("actions")
        preview: dict[str, np.ndarray] = {}
        if observation.decode_preview and self._middle_out is not None:
            images = model.decode_foresight(model.foresight_latents(self._middle_out))[0]
            preview = self._preview_images(observation, images)
            lap("foresight_decode")
        timing["total"] = _now() - start
        return PolicyResult(actions=actions[0].float().numpy(), timing_ns=timing, preview=preview)


    def _infer_compiled(self, observation: Observation, inputs: ModelInputs, timing: dict[str, int],
                        start: int) -> PolicyResult:
        assert self.backend is not None
        latents = self._cosmos_latents(observation.cameras, inputs.frames)
        inputs = dataclasses.replace(inputs, frames=None, cosmos_latents=latents)
        noise = torch.randn(1, self.config.chunk_size, self.config.max_action_dim, generator=self._generator)
        result = self.backend.predict(inputs, noise, foresight=observation.decode_preview)
        timing.update(result.timings_ns)
        preview = {}
        if observation.decode_preview and result.foresight_latents is not None:
            preview = self._preview_images(observation, self.backend.decode_foresight(result.foresight_latents)[0])
        timing["total"] = _now() - start
        return PolicyResult(actions=result.actions[0].float().numpy(), timing_ns=timing, preview=preview)

    @staticmethod
    def _preview_images(observation: Observation, images: torch.Tensor) -> dict[str, np.ndarray]:
        """(n_views, 3, H, W) in about [-1, 1] -> uint8 HxWx3 per camera."""
        preview = {}
        for name, camera in observation.cameras.items():
            pixels = ((images[camera.slot].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
            preview[name] = pixels.permute(1, 2, 0).contiguous().numpy()
        return preview


def load_policy(model: str, tokenizer: str | None = None, dtype: str = "float32",
                cameras: Mapping[str, int] | None = None, seed: int = 0, backend: str = "torch",
                fallback: bool = False, threads: int = 1, export_cache: str | None = None) -> InternVLAPolicy:
    """The inference worker's factory: load the checkpoint strictly and warm the policy up.

    ``backend``: "torch" (eager, foresight K/V reuse) or a comma-separated preference list of compiled
    backends ("tensorrt,onnxruntime"); the next one is tried only with ``fallback`` (never silently:
    the info says which one runs and why others were skipped). A compiled backend uses the model's ONNX
    export in ``export_cache`` (default ~/.cache/internvla_ros/exports), made there when missing or stale.
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype '{dtype}' is not supported; use one of {sorted(DTYPES)}")
    started = time.monotonic()
    directory = Path(model)
    tokenizer_ = load_tokenizer(Path(tokenizer) if tokenizer else None)
    if backend == "torch":
        checkpoint = load_checkpoint(directory, dtype=TORCH_DTYPES[dtype])
        preprocessor = ObservationPreprocessor(PreprocessorConfig.from_model_config(checkpoint.config), tokenizer_,
                                               stats=None)
        policy = InternVLAPolicy(checkpoint, preprocessor, seed=seed)
    else:
        from internvla_ros.backends.factory import BackendOptions, create_backend

        config = load_config(directory)
        choice = create_backend([name.strip() for name in backend.split(",")],
                                BackendOptions(model_dir=directory, dtype=dtype, threads=threads, fallback=fallback,
                                               cache_root=Path(export_cache) if export_cache else None))
        preprocessor = ObservationPreprocessor(PreprocessorConfig.from_model_config(config), tokenizer_, stats=None)
        policy = InternVLAPolicy(None, preprocessor, seed=seed, backend=choice.backend, config=config,
                                 directory=directory)
        policy.info["skipped_backends"] = [f"{name}: {why}" for name, why in choice.skipped]
    loaded = time.monotonic()
    warmup = warmup_observation(policy.config.n_views, cameras)
    for _ in range(WARMUP_CALLS):
        policy.infer(warmup)
    policy.reset()
    policy.info.update(load_s=round(loaded - started, 3), warmup_s=round(time.monotonic() - loaded, 3))
    return policy


def warmup_observation(n_views: int, cameras: Mapping[str, int] | None = None) -> Observation:
    """Black frames in every configured slot and a zero state: exercises every stage once."""
    slots = dict(cameras) if cameras else {f"image{k}": k for k in range(n_views)}
    black = np.zeros((240, 320, 3), np.uint8)
    frames = {name: CameraFrames(slot=slot, current=black, current_stamp_ns=1, history=black, history_stamp_ns=0)
              for name, slot in slots.items()}
    return Observation(stamp_ns=1, request_ns=1, cameras=frames, state=np.zeros(1), normalized_state=np.zeros(1),
                       instruction="warm up", recompute_foresight=True, decode_preview=True)
