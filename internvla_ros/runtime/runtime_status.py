"""What ``PolicyRuntime.status`` reports: the counter keys the runtime adds to, its meters, the snapshot.

The control loop and the chunk scheduler write into one ``RuntimeMeters``; ``runtime_status`` turns it, the
event counters and the runtime's switches into the ``RuntimeStatus`` the node publishes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from internvla_ros.runtime.safety import CLAMPED, CLAMPED_TRAJECTORY, REJECTED, STALE, EventCounters
from internvla_ros.runtime.status import LatencyStats, RateMeter, RuntimeState, RuntimeStatus

# EventCounters categories and reasons added by the runtime itself (inputs and safety add their own).
REJECTED_CHUNKS = "rejected_chunks"
DROPPED_CHUNKS = "dropped_chunks"
TIMING = "timing"
TIMING_MISSED_TICKS = "missed_control_ticks"
TIMING_OVERRUNS = "overruns"
TIMING_TIMEOUTS = "inference_timeouts"
TIMING_FAILURES = "inference_failures"


@dataclass
class RuntimeMeters:
    """Rates, latencies and totals measured by the control loop and the chunk scheduler."""

    control_rate: RateMeter = field(default_factory=RateMeter)
    inference_rate: RateMeter = field(default_factory=RateMeter)  # accepted chunks
    foresight_rate: RateMeter = field(default_factory=RateMeter)
    preview_rate: RateMeter = field(default_factory=RateMeter)
    inference_latency: LatencyStats = field(default_factory=LatencyStats)  # request -> chunk handed back
    observation_age: LatencyStats = field(default_factory=LatencyStats)  # observation stamp -> chunk accepted
    control_ticks: int = 0
    chunks_accepted: int = 0
    last_start_index: int = -1


@dataclass(frozen=True)
class Switches:
    """The runtime's state and operator-facing conditions at the moment of the snapshot."""

    state: RuntimeState
    mode: str
    dry_run: bool
    stale_inputs: tuple[str, ...]
    estop_reason: str
    last_error: str
    holds: tuple[str, ...]


def runtime_status(now_ns: int, switches: Switches, meters: RuntimeMeters, counters: EventCounters) -> RuntimeStatus:
    """The status snapshot at ``now_ns`` (rates of streams that stopped decay towards 0)."""
    return RuntimeStatus(
        stamp_ns=now_ns,
        state=switches.state,
        mode=switches.mode,
        dry_run=switches.dry_run,
        control_rate_hz=meters.control_rate.rate_hz(now_ns),
        inference_rate_hz=meters.inference_rate.rate_hz(now_ns),
        foresight_rate_hz=meters.foresight_rate.rate_hz(now_ns),
        preview_rate_hz=meters.preview_rate.rate_hz(now_ns),
        inference_latency_last_ns=meters.inference_latency.last_ns,
        inference_latency_mean_ns=meters.inference_latency.mean_ns,
        inference_latency_max_ns=meters.inference_latency.max_ns,
        observation_age_last_ns=meters.observation_age.last_ns,
        control_ticks=meters.control_ticks,
        missed_control_ticks=counters.get(TIMING, TIMING_MISSED_TICKS),
        chunks_accepted=meters.chunks_accepted,
        last_start_index=meters.last_start_index,
        overruns=counters.get(TIMING, TIMING_OVERRUNS),
        inference_timeouts=counters.get(TIMING, TIMING_TIMEOUTS),
        inference_failures=counters.get(TIMING, TIMING_FAILURES),
        clamped=counters.snapshot(CLAMPED),
        clamped_trajectory=counters.snapshot(CLAMPED_TRAJECTORY),
        rejected=counters.snapshot(REJECTED),
        rejected_chunks=counters.snapshot(REJECTED_CHUNKS),
        dropped_chunks=counters.snapshot(DROPPED_CHUNKS),
        stale=counters.snapshot(STALE),
        stale_inputs=switches.stale_inputs,
        estop_reason=switches.estop_reason,
        last_error=switches.last_error,
        holds=switches.holds,
    )
