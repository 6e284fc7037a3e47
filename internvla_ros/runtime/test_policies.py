"""Analytic policies that tests and demos run in the real inference worker instead of the neural model.

Registered in the `internvla_ros.policies` entry-point group as test_sine, test_sine_slow_start,
test_sine_hang_once, test_foreign_preview and test_failing. They follow the worker's factory convention
(keyword arguments model, tokenizer, dtype, cameras, ...), and write robot-independent chunks in the
model's normalised space (a model dir with mean-0 / std-1 statistics makes a value a delta in joint
units for delta dims).
"""

from __future__ import annotations

import dataclasses
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
SLOW_START_S = 6.0  # how long test_sine_slow_start takes to "load", like a large model
HANG_ON_CALL = 5  # test_sine_hang_once: the request that is never answered
HANG_S = 3600.0  # far longer than any inference timeout: a hung model
HUNG_MARKER = "hung-once"  # left in the model directory by the hang, so a restarted worker answers
FOREIGN_PREVIEW_FROM_CALL = 20  # test_foreign_preview: results from this request on carry a bad preview


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


def slow_start_sine_policy(**_: Any) -> SinePolicy:
    """The sine policy after SLOW_START_S of start-up, so a node's configure takes that long."""
    time.sleep(SLOW_START_S)
    return SinePolicy()


class HangingPolicy(SinePolicy):
    """Hangs on its HANG_ON_CALL-th request, once per marker file: the worker started again after the
    timeout finds the marker and answers every request (a model that hung once)."""

    def __init__(self, marker: Path) -> None:
        super().__init__()
        self.marker = marker
        self.calls = 0

    def infer(self, observation: Observation) -> PolicyResult:
        self.calls += 1
        if self.calls == HANG_ON_CALL and not self.marker.exists():
            self.marker.touch()
            time.sleep(HANG_S)
        return super().infer(observation)


class ForeignPreviewPolicy(SinePolicy):
    """From its FOREIGN_PREVIEW_FROM_CALL-th request on, also returns a foresight preview for a camera the
    robot does not have: a model breaking its contract, which the node cannot publish."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def infer(self, observation: Observation) -> PolicyResult:
        self.calls += 1
        result = super().infer(observation)
        if self.calls < FOREIGN_PREVIEW_FROM_CALL:
            return result
        return dataclasses.replace(result, preview={"no_such_camera": np.zeros((4, 4, 3), np.uint8)})


def hang_once_sine_policy(model: str, **_: Any) -> HangingPolicy:
    """The sine policy that hangs once (per model directory, where it leaves its marker)."""
    return HangingPolicy(Path(model) / HUNG_MARKER)


def foreign_preview_sine_policy(**_: Any) -> ForeignPreviewPolicy:
    return ForeignPreviewPolicy()


def failing_policy(**_: Any) -> SinePolicy:
    raise RuntimeError("this policy cannot be built (a test of worker start-up errors)")
