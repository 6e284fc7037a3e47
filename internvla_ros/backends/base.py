"""The one interface every inference backend offers, and what it returns."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from torch import Tensor

from internvla_ros.model.inputs import ModelInputs

STAGE_VISION = "vision"
STAGE_PREFIX = "prefix"
STAGE_COSMOS = "cosmos_encode"
STAGE_GENERATION = "generation"
STAGE_CONTEXT = "context"
"""Joining the prefix and generation K/V (and their layout) once per chunk."""
STAGE_TOTAL = "total"


def step_stage(index: int) -> str:
    """Stage name of action step ``index`` (0-based)."""
    return f"action_step_{index + 1}"


@dataclass(frozen=True)
class BackendResult:
    """Actions ``(1, chunk, max_action_dim)`` float32, optional foresight latents, per-stage nanoseconds."""

    actions: Tensor
    foresight_latents: Tensor | None
    timings_ns: dict[str, int]


@runtime_checkable
class InferenceBackend(Protocol):
    """Observation -> action chunk, however it is computed (eager torch, ONNX Runtime, TensorRT)."""

    name: str

    @property
    def description(self) -> str:
        """Where it runs (e.g. the execution providers it got), for logs and benchmark tables."""
        ...

    def encode_frames(self, frames: Tensor) -> Tensor:
        """Cosmos latents ``(1, views, 16, 32, 32)`` of one frame per view ``(1, views, 3, H, W)`` in [0, 1].

        Lets a caller encode the t-15 frames ahead of time and pass ``cosmos_latents`` to :meth:`predict`.
        """
        ...

    def predict(self, inputs: ModelInputs, noise: Tensor, foresight: bool = False) -> BackendResult:
        """One chunk from ``noise`` ``(1, chunk, max_action_dim)``; ``foresight`` adds the t+15 latents."""
        ...

    def decode_foresight(self, latents: Tensor) -> Tensor:
        """Preview images ``(1, views, 3, 256, 256)`` of foresight latents ``(1, views, 16, 32, 32)``."""
        ...


class StageClock:
    """Monotonic nanosecond stamps between stages."""

    def __init__(self) -> None:
        self.start = self.last = time.perf_counter_ns()
        self.timings: dict[str, int] = {}

    def mark(self, stage: str) -> None:
        now = time.perf_counter_ns()
        self.timings[stage] = self.timings.get(stage, 0) + now - self.last
        self.last = now

    def finish(self) -> dict[str, int]:
        self.timings[STAGE_TOTAL] = time.perf_counter_ns() - self.start
        return self.timings
