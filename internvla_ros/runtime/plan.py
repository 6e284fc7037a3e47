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
        return min(max((now_ns - self.origin_ns) / self.step_ns, 0.0), float(self.steps - 1))

    def sample(self, now_ns: int) -> np.ndarray:
        index = self.index_at(now_ns)
        low = int(index)  # index >= 0
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
