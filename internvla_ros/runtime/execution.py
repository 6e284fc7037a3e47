"""Execution modes: when an observation is due, where a chunk lands on the time axis, how it takes over.

A mode is the one place that decides how chunks are executed; the rest of the runtime (inputs, requests in
flight, the controlled stop, the commands) is the same for every mode. A new mode is a class with the three
methods of ``ExecutionMode``, listed in ``MODES`` under its name (and in ``config.EXECUTION_MODES``, so a
robot config can select it).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import ClassVar, Protocol

import numpy as np

from internvla_ros.runtime.config import RuntimeConfig
from internvla_ros.runtime.errors import RuntimeConfigError
from internvla_ros.runtime.observation import RtcRequest
from internvla_ros.runtime.plan import ChunkPlan, Schedule, hand_over


class ExecutionMode(Protocol):
    name: ClassVar[str]
    # False: the robot waits for each chunk, so an inference has no period to overrun.
    overruns_apply: ClassVar[bool]

    def observation_due(self, plan: ChunkPlan | None, now_ns: int, next_inference_ns: int) -> bool:
        """Whether the next observation is due (the runtime has already checked inputs and holds)."""
        ...

    def plan(self, positions: np.ndarray, obs_stamp_ns: int, ready_ns: int) -> ChunkPlan | None:
        """A chunk in joint space (chunk_size, joints) placed on the time axis; None when all of it lies in
        the past of its arrival."""
        ...

    def hand_over(self, schedule: Schedule, plan: ChunkPlan, start_ns: int) -> Schedule:
        """The schedule that follows ``schedule`` until ``start_ns`` and ``plan`` after the hand-over."""
        ...


RTC_DELAY_WINDOW = 20  # the last adopted chunks' latencies that estimate the delay d
RTC_DELAY_QUANTILE = 0.9


def _round_div(numerator: int, denominator: int) -> int:
    """Round-half-up integer division, so start indices are exact integers without float ties."""
    return (numerator + denominator // 2) // denominator


class UncompensatedMode:
    """Observations at the inference rate; a chunk starts at index 0 when it arrives, blended in."""

    name: ClassVar[str] = "uncompensated"
    overruns_apply: ClassVar[bool] = True

    def __init__(self, config: RuntimeConfig) -> None:
        self._step_ns = config.rates.chunk_step_ns
        self._blend_ns = config.execution.blend_steps * self._step_ns

    def observation_due(self, plan: ChunkPlan | None, now_ns: int, next_inference_ns: int) -> bool:
        return now_ns >= next_inference_ns

    def plan(self, positions: np.ndarray, obs_stamp_ns: int, ready_ns: int) -> ChunkPlan | None:
        return ChunkPlan(positions=positions, origin_ns=ready_ns, step_ns=self._step_ns, obs_stamp_ns=obs_stamp_ns,
                         start_index=0)

    def hand_over(self, schedule: Schedule, plan: ChunkPlan, start_ns: int) -> Schedule:
        return hand_over(schedule, plan, start_ns, self._blend_ns)


class DelayCompensatedMode(UncompensatedMode):
    """A chunk is placed at its observation's stamp: one that arrives ``latency`` late starts at index
    ``round(latency / step)``, where the robot would be had the inference taken no time."""

    name: ClassVar[str] = "delay_compensated"

    def plan(self, positions: np.ndarray, obs_stamp_ns: int, ready_ns: int) -> ChunkPlan | None:
        start_index = _round_div(ready_ns - obs_stamp_ns, self._step_ns)
        if start_index > positions.shape[0] - 1:
            return None
        return ChunkPlan(positions=positions, origin_ns=obs_stamp_ns, step_ns=self._step_ns,
                         obs_stamp_ns=obs_stamp_ns, start_index=start_index)


class ReferenceMode(UncompensatedMode):
    """The reference implementation's loop: execute ``reference_steps`` of a chunk, then observe again (the
    robot waits for each chunk)."""

    name: ClassVar[str] = "reference"
    overruns_apply: ClassVar[bool] = False

    def __init__(self, config: RuntimeConfig) -> None:
        super().__init__(config)
        self._steps = config.execution.reference_steps

    def observation_due(self, plan: ChunkPlan | None, now_ns: int, next_inference_ns: int) -> bool:
        return plan is None or now_ns >= plan.end_ns

    def plan(self, positions: np.ndarray, obs_stamp_ns: int, ready_ns: int) -> ChunkPlan | None:
        return super().plan(positions[: self._steps], obs_stamp_ns, ready_ns)


class RtcMode(DelayCompensatedMode):
    """Delay-compensated placement of chunks that the policy guides (real-time chunking) to agree with the
    part of the previous chunk that runs while they are computed, so the hand-over is a plain switch."""

    name: ClassVar[str] = "rtc"

    def __init__(self, config: RuntimeConfig) -> None:
        super().__init__(config)
        rtc, rates = config.execution.rtc, config.rates
        self._rtc = rtc
        self._horizon = rtc.execution_horizon or max(1, _round_div(rates.inference_period_ns, self._step_ns))
        self._latencies: deque[int] = deque(maxlen=RTC_DELAY_WINDOW)

    def record_latency(self, latency_ns: int) -> None:
        """An observation-stamp-to-arrival latency of an adopted chunk (the delay ``d`` comes from these)."""
        self._latencies.append(latency_ns)

    @property
    def delay_steps(self) -> int:
        """``d``: the 90th percentile of the last latencies, in chunk steps, rounded up."""
        if not self._latencies:
            return 0
        latency = float(np.quantile(np.asarray(self._latencies, np.float64), RTC_DELAY_QUANTILE))
        return int(np.ceil(latency / self._step_ns - 1e-6))  # a latency of exactly k steps is k

    def request(self, previous: np.ndarray | None, previous_origin_ns: int, obs_stamp_ns: int) -> RtcRequest | None:
        """The guidance for an observation at ``obs_stamp_ns`` given the previous chunk in model space
        ``previous`` (chunk, dim) whose index 0 lies at ``previous_origin_ns``; None without a previous chunk or
        once it has ended."""
        if previous is None:
            return None
        chunk = previous.shape[0]
        executed = _round_div(max(0, obs_stamp_ns - previous_origin_ns), self._step_ns)
        if executed >= chunk:  # the previous chunk has ended: nothing of it runs while this one is computed
            return None
        target = np.zeros_like(previous, dtype=np.float32)
        target[: chunk - executed] = previous[executed:]
        # The mask ends where the shifted previous chunk does: an inference slower than its period shifts it
        # by more than the configured s, and rows past its end are padding, not a target to guide towards.
        horizon = max(self._horizon, executed)
        delay = min(self.delay_steps, chunk - horizon)
        return RtcRequest(target=target, delay=delay, horizon=horizon, beta=self._rtc.beta,
                          schedule=self._rtc.schedule)


MODES: dict[str, Callable[[RuntimeConfig], ExecutionMode]] = {
    mode.name: mode for mode in (DelayCompensatedMode, UncompensatedMode, ReferenceMode, RtcMode)}


def execution_mode(config: RuntimeConfig) -> ExecutionMode:
    """The mode named by ``execution.mode``."""
    mode = MODES.get(config.execution.mode)
    if mode is None:
        msg = f"execution.mode: {config.execution.mode!r} is not implemented; choose one of {sorted(MODES)}"
        raise RuntimeConfigError(msg)
    return mode(config)
