"""A snapshot of the runtime for operators; the node publishes it as a PolicyStatus message."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import Enum

import numpy as np

from internvla_ros.runtime.config import NS_PER_S

RATE_WINDOW = 50  # events over which a rate is measured
REJECT_JOINT_STATE = "joint_state"
REJECT_UNKNOWN_CAMERA = "unknown_camera"
REJECT_FUTURE_STAMP = "future_stamp"  # an input stamped further ahead of the clock than allowed
# Rejected inputs, not commands.
INPUT_REJECTIONS = frozenset({REJECT_JOINT_STATE, REJECT_UNKNOWN_CAMERA, REJECT_FUTURE_STAMP})
OVERDUE_PERIODS = 2  # a stream silent for longer than this many mean periods counts as slowing down


class RuntimeState(str, Enum):
    IDLE = "idle"  # not started: nothing is commanded
    RUNNING = "running"
    PAUSED = "paused"  # operator pause: holding the last safe position
    ESTOPPED = "estopped"  # latched until reset_estop(): holding
    HOLDING = "holding"  # stale input or a fault: stopped under control, holding until it clears
    STOPPING = "stopping"  # a controlled stop before idle (deactivate, shutdown): idle once at rest


class RateMeter:
    """Average rate over the last RATE_WINDOW events, from their integer-ns stamps."""

    def __init__(self, window: int = RATE_WINDOW) -> None:
        self._stamps: deque[int] = deque(maxlen=window)

    def add(self, stamp_ns: int) -> None:
        self._stamps.append(stamp_ns)

    def rate_hz(self, now_ns: int | None = None) -> float:
        """Events per second over the window; with ``now_ns``, a stream that stopped decays towards 0
        instead of showing its last rate forever."""
        if len(self._stamps) < 2 or self._stamps[-1] <= self._stamps[0]:
            return 0.0
        span_ns = self._stamps[-1] - self._stamps[0]
        if now_ns is not None and now_ns - self._stamps[-1] > OVERDUE_PERIODS * span_ns / (len(self._stamps) - 1):
            span_ns = now_ns - self._stamps[0]  # overdue: count the silence since the last event
        return (len(self._stamps) - 1) * NS_PER_S / span_ns


class LatencyStats:
    """Last, mean and max of a duration in ns."""

    def __init__(self) -> None:
        self.count = 0
        self.last_ns = 0
        self.max_ns = 0
        self._sum_ns = 0

    def add(self, duration_ns: int) -> None:
        self.count += 1
        self.last_ns = duration_ns
        self.max_ns = max(self.max_ns, duration_ns)
        self._sum_ns += duration_ns

    @property
    def mean_ns(self) -> int:
        return self._sum_ns // self.count if self.count else 0


@dataclass(frozen=True)
class RuntimeStatus:
    stamp_ns: int
    state: RuntimeState
    mode: str
    dry_run: bool
    control_rate_hz: float  # measured
    inference_rate_hz: float  # measured: accepted chunks per second
    foresight_rate_hz: float  # measured: generation-pass recomputes requested per second
    preview_rate_hz: float
    inference_latency_last_ns: int  # request -> chunk handed back
    inference_latency_mean_ns: int
    inference_latency_max_ns: int
    observation_age_last_ns: int  # observation stamp -> chunk handed back (what delay compensation skips)
    control_ticks: int
    missed_control_ticks: int
    chunks_accepted: int
    last_start_index: int  # the chunk index executed first by the newest plan
    overruns: int  # inferences slower than their period
    inference_timeouts: int  # inferences never handed back within a chunk's duration
    inference_failures: int
    clamped: Mapping[str, int]  # per-tick command clamps by reason
    clamped_trajectory: Mapping[str, int]  # trajectory point clamps by reason
    rejected: Mapping[str, int]  # rejected commands and inputs by reason
    rejected_chunks: Mapping[str, int]
    dropped_chunks: Mapping[str, int]
    stale: Mapping[str, int]  # stale-input events by input
    stale_inputs: tuple[str, ...]  # inputs stale right now
    estop_reason: str
    last_error: str
    holds: tuple[str, ...] = ()  # why the runtime holds besides pause/e-stop/stale inputs (faults, stops)


@dataclass(frozen=True)
class StatusReport:
    """The fields of the node's PolicyStatus message, from a RuntimeStatus (the node and the replay publish it)."""

    stamp_ns: int
    state: RuntimeState
    dry_run: bool
    instruction: str
    inference_rate: float
    control_rate: float
    foresight_rate: float
    inference_latency_p50: float
    inference_latency_p99: float
    max_input_age: float
    chunks_computed: int
    commands_sent: int
    inference_overruns: int
    chunks_dropped: int
    stale_inputs: int
    invalid_inputs: int
    commands_clamped: int
    commands_rejected: int
    inference_failures: int
    control_ticks: int
    future_stamps_rejected: int
    inference_timeouts: int
    worker_restarts: int
    last_error: str


def status_report(status: RuntimeStatus, instruction: str, latencies_ns: Iterable[int], commands_sent: int,
                  invalid_inputs: int, inference_timeouts: int = 0, worker_restarts: int = 0) -> StatusReport:
    """The PolicyStatus fields for a runtime status, the instruction and the recent inference latencies.

    ``inference_timeouts`` and ``worker_restarts`` come from whoever runs the inference worker (the
    RuntimeDriver); a replay, which calls its policy in-process, has none."""
    latencies = np.asarray(list(latencies_ns), dtype=np.float64) / NS_PER_S
    p50, p99 = np.percentile(latencies, [50, 99]) if latencies.size else (0.0, 0.0)
    return StatusReport(
        stamp_ns=status.stamp_ns,
        state=status.state,
        dry_run=status.dry_run,
        instruction=instruction,
        inference_rate=status.inference_rate_hz,
        control_rate=status.control_rate_hz,
        foresight_rate=status.foresight_rate_hz,
        inference_latency_p50=float(p50),
        inference_latency_p99=float(p99),
        max_input_age=status.observation_age_last_ns / NS_PER_S,
        chunks_computed=status.chunks_accepted,
        commands_sent=commands_sent,
        inference_overruns=status.overruns,
        chunks_dropped=sum(status.dropped_chunks.values()) + sum(status.rejected_chunks.values()),
        stale_inputs=sum(status.stale.values()),
        invalid_inputs=invalid_inputs + sum(n for reason, n in status.rejected.items() if reason in INPUT_REJECTIONS),
        commands_clamped=sum(status.clamped.values()) + sum(status.clamped_trajectory.values()),
        commands_rejected=sum(n for reason, n in status.rejected.items() if reason not in INPUT_REJECTIONS),
        inference_failures=status.inference_failures,
        control_ticks=status.control_ticks,
        future_stamps_rejected=status.rejected.get(REJECT_FUTURE_STAMP, 0),
        inference_timeouts=inference_timeouts,
        worker_restarts=worker_restarts,
        last_error=status.estop_reason or status.last_error,
    )
