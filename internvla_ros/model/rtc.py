"""Real-time chunking (RTC): a new chunk guided to agree with the part of the previous one that still runs.

Inference-time RTC (Black, Galliker, Levine 2025) treats the next chunk as inpainting: the first ``d``
steps (those that run while the new chunk is computed) must equal the previous chunk shifted by what was
executed, and the steps after them follow it with a weight that decays to 0 at ``H - s``. At each Euler
step the velocity is corrected by the vector-Jacobian product of the predicted final actions.

Time convention (translated from the paper). The paper integrates flow time ``tau`` from 0 (noise) to 1
(actions), ``A_tau = tau * A + (1 - tau) * noise``, velocity ``v_p = A - noise``, update
``A <- A + (1/n) * (v_p + lambda * g)``. InternVLA-A1 runs ``t = 1 - tau`` from 1 (noise) to 0 (actions)
with ``x_t = t * noise + (1 - t) * A``, velocity ``v = noise - A = -v_p`` and ``x <- x + dt * v``,
``dt = -1/n``. Hence:

- predicted final actions: ``A1_hat = x_t - t * v`` (paper: ``A_tau + (1 - tau) * v_p``);
- guidance: ``g = (d A1_hat / d x_t)^T [(Y - A1_hat) * W]``, the same vector in both conventions;
- weight: ``lambda = min(beta, (t^2 + (1 - t)^2) / (t * (1 - t)))`` (symmetric in ``t <-> 1 - t``, so
  unchanged; ``beta`` at t = 0 or 1);
- update: ``x <- x + dt * (v - lambda * g)``, i.e. the guided velocity is ``v - lambda * g``.

With ``beta = 0`` the guided velocity is the plain one and no backward pass runs (bit-identical chunks).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

SCHEDULES = ("exp", "linear", "hard")
Velocity = Callable[[Tensor, Tensor], Tensor]
GuidanceStep = Callable[[Tensor, Tensor, Tensor, Tensor], tuple[Tensor, Tensor]]
"""``step(x_t, time, target, weights) -> (v, g)``: the velocity and ``g = (dA1_hat/dx_t)^T [(Y - A1_hat) W]``
(torch: autograd; ONNX Runtime: an exported graph of the same function)."""


class RtcError(ValueError):
    """Bad RTC input (delay, horizon, schedule, target shape)."""


def prefix_weights(delay: int, horizon: int, chunk: int, schedule: str = "exp") -> np.ndarray:
    """Soft mask ``W`` (chunk,) float32: 1 for ``i < delay``, decaying to 0 at ``chunk - horizon``, 0 after.

    ``horizon`` is ``s``, the steps of the new chunk that run before the next one replaces it. ``delay`` is
    clipped to ``chunk - horizon`` (the paper needs ``d <= H - s``). Decay for ``d <= i < H - s``:
    ``c_i = (H - s - i) / (H - s - d + 1)``; ``linear``: ``c_i``; ``exp``: ``c_i (e^c_i - 1) / (e - 1)``;
    ``hard``: 0.
    """
    if schedule not in SCHEDULES:
        raise RtcError(f"RTC schedule {schedule!r} is unknown; use one of {list(SCHEDULES)}")
    if chunk < 1 or not 0 <= horizon < chunk:
        raise RtcError(f"RTC execution horizon {horizon} must lie in [0, {chunk - 1}] for a chunk of {chunk}")
    if delay < 0:
        raise RtcError(f"RTC delay {delay} is negative; pass the inference delay in chunk steps (>= 0)")
    end = chunk - horizon
    start = min(delay, end)
    index = np.arange(chunk, dtype=np.float64)
    if schedule == "hard":
        weights = (index < start).astype(np.float64)
    else:
        weights = np.clip((end - index) / (end - start + 1), 0.0, 1.0)
        weights[index < start] = 1.0
        if schedule == "exp":
            weights = weights * np.expm1(weights) / (math.e - 1.0)
    weights[index >= end] = 0.0
    return weights.astype(np.float32)


def guidance_weight(t: float, beta: float) -> float:
    """``min(beta, (t^2 + (1 - t)^2) / (t (1 - t)))`` at our flow time ``t`` (1 noise .. 0 actions)."""
    if t <= 0.0 or t >= 1.0:
        return beta
    return min(beta, (t * t + (1.0 - t) ** 2) / (t * (1.0 - t)))


def shift_chunk(previous: np.ndarray, executed: int) -> np.ndarray:
    """The target ``Y``: ``previous[executed:]`` then zeros, the shape of ``previous`` (chunk, dim)."""
    if not 0 <= executed <= previous.shape[0]:
        raise RtcError(f"executed steps {executed} outside [0, {previous.shape[0]}]")
    target = np.zeros_like(previous, dtype=np.float32)
    target[: previous.shape[0] - executed] = previous[executed:]
    return target


def delay_steps(delays_s: Sequence[float], step_s: float, quantile: float = 0.9) -> int:
    """``d`` in chunk steps from recent inference delays: ceil of their ``quantile`` (robust to one outlier)."""
    if not delays_s:
        return 0
    return max(0, math.ceil(float(np.quantile(np.asarray(delays_s, np.float64), quantile)) / step_s - 1e-9))


@dataclass(frozen=True)
class RtcGuidance:
    """What one guided sample needs: the target (B or 1, chunk, dim), the soft mask (chunk,), ``beta``."""

    target: Tensor
    weights: Tensor
    beta: float

    @staticmethod
    def build(target: np.ndarray, delay: int, horizon: int, beta: float, schedule: str = "exp",
              dim: int | None = None) -> RtcGuidance:
        """From a target chunk in the model's action space (chunk, d <= dim), zero-padded to ``dim``."""
        if beta < 0:
            raise RtcError(f"RTC beta {beta} is negative; use beta >= 0 (0 disables guidance)")
        padded = _padded_target(target, dim)
        weights = prefix_weights(delay, horizon, target.shape[0], schedule)
        return RtcGuidance(padded, torch.from_numpy(weights), float(beta))


def _padded_target(target: np.ndarray, dim: int | None) -> Tensor:
    """A target chunk (chunk, d <= dim) as ``(1, chunk, dim)`` float32, zero-padded (``dim`` None: d)."""
    if target.ndim != 2:
        raise RtcError(f"the RTC target must be (chunk, action_dim), got shape {target.shape}")
    padded = np.zeros((target.shape[0], dim or target.shape[1]), np.float32)
    padded[:, : target.shape[1]] = target
    return torch.from_numpy(padded)[None]


def autograd_guidance(velocity: Velocity) -> GuidanceStep:
    """A :data:`GuidanceStep` of a differentiable torch ``velocity``: one forward and one backward pass."""

    def step(x_t: Tensor, time: Tensor, target: Tensor, weights: Tensor) -> tuple[Tensor, Tensor]:
        with torch.inference_mode(False), torch.enable_grad():
            x = x_t.detach().clone().requires_grad_(True)
            t = time.detach().clone().reshape(-1, 1, 1)
            v = velocity(x, time.detach().clone()).float()
            predicted = x - t * v
            error = (target - predicted.detach()) * weights
            (grad,) = torch.autograd.grad(predicted, x, grad_outputs=error)
        return v.detach(), grad.detach()

    return step


def guided_velocity(velocity: Velocity, step: GuidanceStep, guidance: RtcGuidance) -> Velocity:
    """The RTC-corrected velocity ``v - lambda * g`` for :func:`~internvla_ros.model.pipeline.euler`."""
    if guidance.beta == 0.0:
        return velocity

    def guided(x_t: Tensor, time: Tensor) -> Tensor:
        target = guidance.target.to(x_t.device).expand_as(x_t)
        weights = guidance.weights.to(x_t.device)[None, :, None].expand_as(x_t).contiguous()
        v, g = step(x_t, time, target, weights)
        return v - guidance_weight(float(time.reshape(-1)[0]), guidance.beta) * g

    return guided


# ---------------------------------------------------------------- training-time RTC (prefix conditioning)
# Black, Ren, Equi, Levine 2025: during training each example gets a delay d, its first d actions are given
# clean (flow time 0 in our convention) and the loss is taken on the rest only; at inference the executed prefix
# of the previous chunk is passed in the same way. No guidance, no backward pass.


def sample_delays(batch: int, max_delay: int, generator: torch.Generator | None = None) -> Tensor:
    """``d`` per example, uniform over ``0 .. max_delay`` ``(B,)`` (int64)."""
    if max_delay < 0:
        raise RtcError(f"training-time RTC max delay {max_delay} is negative; use 0 (off) or more chunk steps")
    return torch.randint(0, max_delay + 1, (batch,), generator=generator)


def prefix_mask(delays: Tensor, chunk: int) -> Tensor:
    """``(B, chunk)`` bool: True on each example's first ``d`` steps (the clean prefix, outside the loss)."""
    return torch.arange(chunk, device=delays.device)[None, :] < delays[:, None]


def prefix_times(time: Tensor, delays: Tensor, chunk: int) -> Tensor:
    """Per-step flow times ``(B, chunk)``: ``time`` ``(B,)`` everywhere except 0 (clean) on the first ``d``."""
    clean = prefix_mask(delays.to(time.device), chunk)
    return torch.where(clean, torch.zeros((), dtype=time.dtype, device=time.device), time[:, None].expand(-1, chunk))


@dataclass(frozen=True)
class RtcPrefix:
    """The executed prefix for a model trained with training-time RTC: its first ``delay`` steps of ``actions``
    ``(1 or B, chunk, dim)`` (the previous chunk shifted, in the model's action space) are given clean."""

    actions: Tensor
    delay: int

    @staticmethod
    def build(target: np.ndarray, delay: int, max_delay: int, dim: int) -> RtcPrefix:
        """From a target chunk (chunk, d <= dim), zero-padded to ``dim``; ``delay`` capped at ``max_delay`` (the
        delays the model was trained with)."""
        if delay < 0:
            raise RtcError(f"RTC delay {delay} is negative; pass the inference delay in chunk steps (>= 0)")
        return RtcPrefix(_padded_target(target, dim), min(delay, max_delay))

    def velocity(self, velocity: Velocity) -> Velocity:
        """``velocity`` seeing the prefix clean at time 0 (the sample's own prefix steps are overwritten)."""
        if self.delay == 0:
            return velocity
        d = self.delay

        def conditioned(x_t: Tensor, time: Tensor) -> Tensor:
            x = x_t.clone()
            x[:, :d] = self.actions[:, :d].to(x.device)
            delays = torch.full((x.shape[0],), d, dtype=torch.long, device=x.device)
            return velocity(x, prefix_times(time, delays, x.shape[1]))

        return conditioned

    def apply(self, actions: Tensor) -> Tensor:
        """The sampled chunk with its first ``delay`` steps replaced by the prefix."""
        if self.delay == 0:
            return actions
        out = actions.clone()
        out[:, : self.delay] = self.actions[:, : self.delay].to(out.device)
        return out
