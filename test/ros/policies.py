"""Analytic policies that node tests run in the real inference worker instead of the neural model.

They follow the worker's factory convention (keyword arguments model, tokenizer, dtype, cameras), and
write robot-independent chunks in the model's normalised space (the test model dirs hold mean-0 /
std-1 statistics, so a value is a delta in joint units for delta dims).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from internvla_ros.model.preprocessing import load_tokenizer, tokenize_prompt
from internvla_ros.runtime.observation import Observation
from internvla_ros.runtime.policy import PolicyResult

CHUNK = 50
ACTION_DIM = 32
STEP_S = 1.0 / 30.0
AMPLITUDE = 0.1  # rad: small swings around the observed state
PERIOD_S = 4.0
LATENCY_S = 0.05
PROMPT_TOKENS = 48


class SinePolicy:
    """Delta chunks that swing every delta joint by AMPLITUDE; grippers (absolute dims) stay at 0 (open).

    The chunk is a function of time since the observation, so consecutive chunks continue each other.
    An instruction containing "nan" makes it return NaN everywhere (a model failing at run time).
    """

    def __init__(self, latency_s: float = LATENCY_S) -> None:
        self.latency_s = latency_s
        self.tokenizer = load_tokenizer(None)  # prompts are checked exactly as the neural policy does
        self.info = {"policy": "sine"}

    def infer(self, observation: Observation) -> PolicyResult:
        started = time.monotonic_ns()
        tokenize_prompt(self.tokenizer, observation.instruction, PROMPT_TOKENS)
        time.sleep(self.latency_s)
        t0 = observation.stamp_ns * 1e-9
        times = t0 + STEP_S * np.arange(CHUNK)
        phase = 2 * np.pi * times / PERIOD_S
        base = AMPLITUDE * (np.sin(phase) - np.sin(2 * np.pi * t0 / PERIOD_S))
        actions = np.zeros((CHUNK, ACTION_DIM), np.float32)
        actions[:, :] = base[:, None]
        if "nan" in observation.instruction:
            actions[:] = np.nan
        return PolicyResult(actions=actions, timing_ns={"total": time.monotonic_ns() - started})

    def reset(self) -> None:
        pass


def sine_policy(**_: Any) -> SinePolicy:
    return SinePolicy()


def failing_policy(**_: Any) -> SinePolicy:
    raise RuntimeError("this policy cannot be built (a test of worker start-up errors)")


def write_unit_stats(directory: Path, robot_type: str, dims: int) -> Path:
    """A model dir holding only stats.json with mean 0 / std 1 for one robot type."""
    directory.mkdir(parents=True, exist_ok=True)
    entry = {"mean": [0.0] * dims, "std": [1.0] * dims, "min": [-10.0] * dims, "max": [10.0] * dims}
    (directory / "stats.json").write_text(json.dumps({robot_type: {"observation.state": entry, "action": entry}}))
    return directory
