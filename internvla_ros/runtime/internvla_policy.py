"""The InternVLA-A1 model behind the runtime's Policy interface, over the one staged pipeline.

One `infer` call: preprocess the observation (cameras at t and t-15, normalised state, prompt) and run
the pipeline (:mod:`internvla_ros.model.pipeline`) of the chosen backend: the prefix once, the
generation (foresight) pass when the runtime asks for it and otherwise its cached K/V again, then the
action steps over the cached K/V. Cosmos latents are cached per camera frame, so the t-15 frame, which
was the current frame of an earlier request, is not encoded again. Noise comes from a seeded
generator, so a replay of the same observations gives the same chunks.

`infer_batch` runs B observations (e.g. of several robots) as one batch: each one is independent
(its own generation pass, no cached K/V or latents read or kept), noise drawn in order as B calls
of `infer` would, so element i equals what `infer` returns for it when it recomputes foresight.
Observations that carry real-time chunking (each its own previous chunk) run their action steps one by one.

Real-time chunking: a model trained with training-time RTC (its config's ``rtc_training_max_delay``) is
given the executed prefix clean; any other model is guided towards it (inference-time RTC).

    policy = load_policy(model="models/default")       # the factory the inference worker calls
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from internvla_ros.model.config import InternVLAConfig
from internvla_ros.model.inputs import ModelInputs
from internvla_ros.model.pipeline import (
    COSMOS_PRECISION_RULE,
    ChunkResult,
    InferencePipeline,
    StageTimings,
    concat_results,
    select,
    stack_inputs,
)
from internvla_ros.model.preprocessing import ObservationPreprocessor, PreprocessorConfig, load_tokenizer
from internvla_ros.model.rtc import RtcGuidance, RtcPrefix
from internvla_ros.runtime.observation import CameraFrames, Observation
from internvla_ros.runtime.policy import PolicyResult

DTYPES = ("float32", "bfloat16")  # the precisions the policy is run and tested in
LATENT_CACHE_SIZE = 64  # frames; a few seconds of history for three cameras
WARMUP_CALLS = 2


def _pixels_key(frame: torch.Tensor) -> bytes:
    """A digest of one preprocessed frame's values (SHA-256: under 1 ms for 3x256x256 float32 here)."""
    return hashlib.sha256(frame.detach().contiguous().view(torch.uint8).numpy()).digest()


class InternVLAPolicy:
    """Observation(s) -> normalised action chunk (chunk_size, max_action_dim) each."""

    def __init__(self, pipeline: InferencePipeline, preprocessor: ObservationPreprocessor, seed: int = 0,
                 info: Mapping[str, Any] | None = None, noise_scale: float = 1.0) -> None:
        if not 0.0 <= noise_scale <= 1.0:
            raise ValueError(f"noise_scale {noise_scale}: use 0 (sample from the noise's mean) to 1 (as trained)")
        self.pipeline = pipeline
        self.noise_scale = noise_scale
        self.preprocessor = preprocessor
        self._seed = seed
        self._generator = torch.Generator().manual_seed(seed)
        self._generation: Any = None
        self._generation_prompt: str | None = None
        self._latents: OrderedDict[bytes, torch.Tensor] = OrderedDict()  # by the frame's pixels
        self.info: dict[str, Any] = {"backend": pipeline.name, "backend_description": pipeline.description,
                                     "foresight_kv_reuse": getattr(pipeline.stages, "kv_reuse", True),
                                     "cosmos_precision": COSMOS_PRECISION_RULE,
                                     "noise_scale": noise_scale, **(info or {})}

    @property
    def config(self) -> InternVLAConfig:
        return self.pipeline.config

    def reset(self) -> None:
        self._generator.manual_seed(self._seed)
        self._generation = self._generation_prompt = None
        self._latents.clear()

    def _noise(self, batch: int) -> torch.Tensor:
        shape = (1, self.config.chunk_size, self.config.max_action_dim)
        return torch.cat([torch.randn(shape, generator=self._generator) for _ in range(batch)]) * self.noise_scale

    def _preprocess(self, observation: Observation) -> ModelInputs:
        current = {camera.slot: camera.current for camera in observation.cameras.values()}
        history = {camera.slot: camera.history for camera in observation.cameras.values()}
        return self.preprocessor(current, observation.normalized_state, observation.instruction, history)

    def _cached_latents(self, cameras: Sequence[Mapping[str, CameraFrames]], frames: torch.Tensor) -> torch.Tensor:
        """(B, n_views, 2, C, h, w): each observation's cameras' [t-15, t] latents, each distinct frame encoded once.

        Frames are known by their pixels, not by camera name and stamp: robots sharing a server may
        stamp alike (two simulated cells in lock-step, a camera that stamps every frame 0), and a stamp
        would then hand one robot the other's view. Only frames not seen before are encoded, all of them
        in one encoder call (one batch through a torch backend; one graph call each, several at once,
        through ONNX Runtime); a missing camera's slot is masked and its latents stay zero.
        """
        cfg = self.config
        keys = [[{camera.slot: _pixels_key(frames[b, camera.slot, index]) for camera in observation.values()}
                 for index in range(cfg.frames_per_view)] for b, observation in enumerate(cameras)]
        new: dict[bytes, torch.Tensor] = {}
        for b, per_index in enumerate(keys):
            for index, slots in enumerate(per_index):
                for slot, key in slots.items():
                    if key not in self._latents and key not in new:
                        new[key] = frames[b, slot, index]
        if new:
            encoded = self.pipeline.encode_frames(torch.stack(list(new.values()))[:, None]).cpu()
            for row, key in enumerate(new):
                self._latents[key] = encoded[row, 0]
        latents = torch.zeros(len(cameras), cfg.n_views, cfg.frames_per_view, cfg.cosmos_latent_channels,
                              *cfg.cosmos_latent_hw)
        for b, per_index in enumerate(keys):
            for index, slots in enumerate(per_index):
                for slot, key in slots.items():
                    latents[b, slot, index] = self._latents[key]
                    self._latents.move_to_end(key)
        while len(self._latents) > max(LATENT_CACHE_SIZE, len(new)):
            self._latents.popitem(last=False)
        return latents

    @torch.inference_mode()
    def infer(self, observation: Observation, noise: torch.Tensor | None = None) -> PolicyResult:
        """``noise`` ``(1, chunk, max_action_dim)``: given by the caller (a replay), else drawn from the stream."""
        start = time.perf_counter_ns()
        timings = StageTimings()
        inputs = self._preprocess(observation)
        timings("preprocess", time.perf_counter_ns() - start)
        stale = observation.instruction != self._generation_prompt or not self.info["foresight_kv_reuse"]
        reuse = None if observation.recompute_foresight or self._generation is None or stale else self._generation
        if reuse is None:
            mark = time.perf_counter_ns()
            assert inputs.frames is not None
            inputs = replace(inputs, frames=None, cosmos_latents=self._cached_latents([observation.cameras],
                                                                                      inputs.frames))
            timings("cosmos_encode", time.perf_counter_ns() - mark)
        noise = self._noise(1) if noise is None else noise
        result = self.pipeline.run(inputs, noise, generation=reuse, decode=observation.decode_preview,
                                   hook=timings, rtc=self._rtc(observation))
        self._generation = result.generation
        self._generation_prompt = observation.instruction
        timings["total"] = time.perf_counter_ns() - start
        return self._result(observation, result, 0, timings)

    @torch.inference_mode()
    def infer_batch(self, observations: Sequence[Observation], noise: torch.Tensor | None = None,
                    cache_latents: bool = False) -> list[PolicyResult]:
        """One chunk per observation, computed as one batch (see the module docstring).

        ``noise`` ``(B, chunk, max_action_dim)``: the caller's instead of the stream's. ``cache_latents``: Cosmos
        latents through the frame cache ``infer`` uses (a replay of one robot's frames encodes each frame once).
        """
        if not observations:
            return []
        start = time.perf_counter_ns()
        timings = StageTimings()
        inputs = stack_inputs([self._preprocess(observation) for observation in observations])
        timings("preprocess", time.perf_counter_ns() - start)
        if cache_latents:
            mark = time.perf_counter_ns()
            assert inputs.frames is not None
            latents = self._cached_latents([observation.cameras for observation in observations], inputs.frames)
            inputs = replace(inputs, frames=None, cosmos_latents=latents)
            timings("cosmos_encode", time.perf_counter_ns() - mark)
        decode = any(observation.decode_preview for observation in observations)
        noise = self._noise(len(observations)) if noise is None else noise
        if all(observation.rtc is None for observation in observations):
            result = self.pipeline.run(inputs, noise, decode=decode, hook=timings)
        else:
            result = concat_results([self.pipeline.run(select(inputs, i), noise[i:i + 1], decode=decode, hook=timings,
                                                       rtc=self._rtc(observation))
                                     for i, observation in enumerate(observations)])
        timings["total"] = time.perf_counter_ns() - start
        return [self._result(observation, result, index, timings) for index, observation in enumerate(observations)]

    def _rtc(self, observation: Observation) -> RtcGuidance | RtcPrefix | None:
        """The observation's real-time chunking, as this model runs it (see the module docstring)."""
        rtc, cfg = observation.rtc, self.config
        if rtc is None:
            return None
        if cfg.rtc_training_max_delay > 0:
            return RtcPrefix.build(rtc.target, rtc.delay, cfg.rtc_training_max_delay, cfg.max_action_dim)
        return RtcGuidance.build(rtc.target, rtc.delay, rtc.horizon, rtc.beta, rtc.schedule, dim=cfg.max_action_dim)

    @staticmethod
    def _result(observation: Observation, result: ChunkResult, index: int,
                timings: Mapping[str, int]) -> PolicyResult:
        preview: dict[str, np.ndarray] = {}
        if observation.decode_preview and result.foresight_images is not None:
            images = result.foresight_images[index].cpu()
            for name, camera in observation.cameras.items():
                pixels = ((images[camera.slot].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
                preview[name] = pixels.permute(1, 2, 0).contiguous().numpy()
        actions = result.actions[index].float().cpu().numpy()
        return PolicyResult(actions=actions, timing_ns=dict(timings), preview=preview)


def load_policy(model: str, tokenizer: str | None = None, dtype: str = "float32",
                cameras: Mapping[str, int] | None = None, seed: int = 0, backend: str = "torch",
                fallback: bool = False, threads: int | None = None,
                export_cache: str | None = None, noise_scale: float = 1.0,
                batch_workers: int | None = None) -> InternVLAPolicy:
    """The inference worker's factory: load the checkpoint strictly and warm the policy up.

    ``backend``: one of ``internvla_ros.backends.factory.BACKEND_NAMES`` ("torch": eager with K/V reuse)
    or a comma-separated preference list ("tensorrt,onnxruntime"); the next one is tried only with
    ``fallback`` (never silently: the info says which one runs and why others were skipped). A compiled
    backend uses the model's ONNX export in ``export_cache`` (default ~/.cache/internvla_ros/exports),
    made there when missing or stale. ``threads``: torch and ONNX Runtime threads (default: torch's
    current setting). ``noise_scale``: the sampler's starting noise is drawn as trained and scaled by it
    (1: as trained; 0: every chunk from the noise's mean, deterministic; ``internvla model check-chunks
    --noise-scale`` measures what it does to a checkpoint's chunks). ``batch_workers``: observations of an
    ``infer_batch`` computed at once where the backend runs them one at a time (ONNX Runtime on the CPU);
    default: the thread count (a node infers one observation at a time, so it changes nothing there).
    """
    from internvla_ros.backends.factory import BackendOptions, create_backend

    if dtype not in DTYPES:
        raise ValueError(f"dtype '{dtype}' is not supported; use one of {sorted(DTYPES)}")
    started = time.monotonic()
    directory = Path(model)
    threads = threads or torch.get_num_threads()
    choice = create_backend([name.strip() for name in backend.split(",")],
                            BackendOptions(model_dir=directory, dtype=dtype, fallback=fallback, threads=threads,
                                           batch_workers=batch_workers or threads,
                                           cache_root=Path(export_cache) if export_cache else None))
    pipeline = choice.backend
    preprocessor = ObservationPreprocessor(PreprocessorConfig.from_model_config(pipeline.config),
                                           load_tokenizer(Path(tokenizer) if tokenizer else None), stats=None)
    policy = InternVLAPolicy(pipeline, preprocessor, seed=seed, noise_scale=noise_scale, info={
        "model": str(directory), "dtype": dtype, "skipped_backends": [f"{n}: {why}" for n, why in choice.skipped]})
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
