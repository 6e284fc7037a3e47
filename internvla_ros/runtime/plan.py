"""What the robot should be doing at any instant: chunk plans on a time axis, and hand-overs between them.

A chunk is placed on the time axis by its ``origin_ns`` (the time of its index 0). With delay compensation
the origin is the observation stamp, so a chunk that arrives ``latency`` later starts at index
``round(latency / step)``; without it the origin is the arrival time. Between chunk steps the plan is
interpolated linearly, so the control rate may be higher than the chunk step rate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np


class Schedule(Protocol):
    def sample(self, now_ns: int) -> np.ndarray: ...

    def settle(self, now_ns: int) -> Schedule:
        """An equivalent schedule from ``now_ns`` on, with finished hand-overs dropped."""
        ...


@dataclass(frozen=True)
class HoldSchedule:
    """Stay where the last command was (the start, and after a pause, e-stop or stale input)."""

    positions: np.ndarray

    def sample(self, now_ns: int) -> np.ndarray:
        return self.positions

    def settle(self, now_ns: int) -> Schedule:
        return self


@dataclass(frozen=True)
class ChunkPlan:
    """A chunk of absolute joint targets (T, D) placed on the time axis."""

    positions: np.ndarray
    origin_ns: int  # time of index 0
    step_ns: int
    obs_stamp_ns: int
    start_index: int  # the index executed first when the plan was adopted

    @property
    def steps(self) -> int:
        return int(self.positions.shape[0])

    @property
    def end_ns(self) -> int:
        return self.origin_ns + (self.steps - 1) * self.step_ns

    def index_at(self, now_ns: int) -> float:
        """Fractional chunk index at ``now_ns``, clamped to the chunk."""
        return float(np.clip((now_ns - self.origin_ns) / self.step_ns, 0.0, self.steps - 1))

    def sample(self, now_ns: int) -> np.ndarray:
        index = self.index_at(now_ns)
        low = int(np.floor(index))
        high = min(low + 1, self.steps - 1)
        weight = index - low
        return (1.0 - weight) * self.positions[low] + weight * self.positions[high]

    def settle(self, now_ns: int) -> Schedule:
        return self


def smoothstep(x: float) -> float:
    """0 -> 1 with zero slope at both ends: the hand-over adds no velocity step at its start or end."""
    x = min(max(x, 0.0), 1.0)
    return x * x * (3.0 - 2.0 * x)


@dataclass(frozen=True)
class BlendedSchedule:
    """Hands over from ``previous`` to ``plan`` over ``[start_ns, start_ns + duration_ns]``."""

    previous: Schedule
    plan: ChunkPlan
    start_ns: int
    duration_ns: int

    def sample(self, now_ns: int) -> np.ndarray:
        if self.duration_ns <= 0 or now_ns >= self.start_ns + self.duration_ns:
            return self.plan.sample(now_ns)
        weight = smoothstep((now_ns - self.start_ns) / self.duration_ns)
        return (1.0 - weight) * self.previous.sample(now_ns) + weight * self.plan.sample(now_ns)

    def settle(self, now_ns: int) -> Schedule:
        if self.duration_ns <= 0 or now_ns >= self.start_ns + self.duration_ns:
            return self.plan
        return BlendedSchedule(self.previous.settle(now_ns), self.plan, self.start_ns, self.duration_ns)


def hand_over(previous: Schedule, plan: ChunkPlan, start_ns: int, duration_ns: int) -> Schedule:
    """The schedule that follows ``previous`` until ``start_ns`` and ``plan`` after the blend."""
    if duration_ns <= 0:
        return plan
    return BlendedSchedule(previous.settle(start_ns), plan, start_ns, duration_ns)


def hermite(p0: np.ndarray, v0: np.ndarray, p1: np.ndarray, v1: np.ndarray, duration_s: float,
            t_s: float) -> tuple[np.ndarray, np.ndarray]:
    """Cubic Hermite position and velocity at ``t_s`` into a segment: what a joint_trajectory_controller
    does between two points that carry velocities."""
    s = t_s / duration_s
    h00, h10, h01, h11 = 2 * s**3 - 3 * s**2 + 1, s**3 - 2 * s**2 + s, -2 * s**3 + 3 * s**2, s**3 - s**2
    position = h00 * p0 + h10 * duration_s * v0 + h01 * p1 + h11 * duration_s * v1
    d00, d10, d01, d11 = 6 * s**2 - 6 * s, 3 * s**2 - 4 * s + 1, -6 * s**2 + 6 * s, 3 * s**2 - 2 * s
    velocity = (d00 * p0 + d01 * p1) / duration_s + d10 * v0 + d11 * v1
    return position, velocity


CUBIC_SAMPLES = 21  # positions checked along each segment (the velocity is checked exactly)


def cubic_within_limits(positions: np.ndarray, velocities: np.ndarray, step_s: float, low: np.ndarray,
                        high: np.ndarray, max_velocity: np.ndarray) -> bool:
    """Whether the cubic Hermite a joint_trajectory_controller draws through equally spaced points
    (K, D) with these velocities stays inside the position and velocity limits between the points."""
    p0, p1, m0, m1 = positions[:-1], positions[1:], velocities[:-1], velocities[1:]
    slope = (p1 - p0) / step_s
    # v(s) = a s^2 + b s + c on s in [0, 1]: its extremes are at the ends or at the vertex.
    a, b = -6 * slope + 3 * m0 + 3 * m1, 6 * slope - 4 * m0 - 2 * m1
    with np.errstate(divide="ignore", invalid="ignore"):
        vertex = np.where(a != 0, np.clip(-b / (2 * a), 0.0, 1.0), 0.0)
    peak = np.maximum(np.maximum(np.abs(m0), np.abs(m1)), np.abs(a * vertex**2 + b * vertex + m0))
    if (peak > max_velocity * (1 + 1e-9) + 1e-12).any():
        return False
    for s in np.linspace(0.0, 1.0, CUBIC_SAMPLES):
        inside, _ = hermite(p0, m0, p1, m1, step_s, s * step_s)
        if (inside < low - 1e-9).any() or (inside > high + 1e-9).any():
            return False
    return True


@dataclass(frozen=True)
class TimedPath:
    """The trajectory last sent to the joint_trajectory controllers, sampled as they execute it.

    The next trajectory starts from this path's state at its send time, so consecutive trajectories
    join without a step even when per-tick limiting and the trajectory's own limiting differ.
    """

    stamps_ns: np.ndarray  # (K,) absolute times of the points, strictly increasing
    positions: np.ndarray  # (K, D)
    velocities: np.ndarray | None  # (K, D); None: positions only, which the controller joins linearly

    def sample(self, now_ns: int) -> tuple[np.ndarray, np.ndarray]:
        if now_ns <= self.stamps_ns[0]:
            start_velocity = self.velocities[0] if self.velocities is not None else np.zeros_like(self.positions[0])
            return self.positions[0], start_velocity
        if now_ns >= self.stamps_ns[-1]:
            return self.positions[-1], np.zeros_like(self.positions[-1])
        k = int(np.searchsorted(self.stamps_ns, now_ns, side="right")) - 1
        duration_s = (self.stamps_ns[k + 1] - self.stamps_ns[k]) / 1e9
        elapsed_s = (now_ns - self.stamps_ns[k]) / 1e9
        if self.velocities is None:
            slope = (self.positions[k + 1] - self.positions[k]) / duration_s
            return self.positions[k] + slope * elapsed_s, slope
        return hermite(self.positions[k], self.velocities[k], self.positions[k + 1], self.velocities[k + 1],
                       duration_s, elapsed_s)
