"""The small interface through which the runtime's caller reaches a model (neural or analytic).

The runtime never calls the policy itself: the node runs ``infer`` in its own thread or process and hands
the chunk back with ``PolicyRuntime.submit_chunk``; a replay or a test may call it inline.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from internvla_ros.runtime.observation import Observation


@dataclass(frozen=True)
class PolicyResult:
    actions: np.ndarray  # (T, action_dim) normalised, zero-padded beyond the robot's dims
    timing_ns: Mapping[str, int] = field(default_factory=dict)  # per-stage durations, monotonic clock
    preview: Mapping[str, np.ndarray] = field(default_factory=dict)  # decoded foresight image per camera


class Policy(Protocol):
    def infer(self, observation: Observation) -> PolicyResult:
        """One chunk for ``observation``; reuse cached foresight K/V unless ``recompute_foresight``."""
        ...

    def reset(self) -> None:
        """Forget cached state (foresight K/V, frame encodings) before a new episode."""
        ...
