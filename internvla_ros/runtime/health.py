"""The node's health per component (inputs, inference, control, each controller), for /diagnostics.

ROS-free: levels and reasons come from successive RuntimeStatus snapshots, so a counter that grew
since the previous report (an overrun, a clamp, a failed inference) raises the level of that report,
while a latched condition (an e-stop, a stale input) keeps it until it clears.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum

from internvla_ros.runtime.safety import CLAMP_POSITION
from internvla_ros.runtime.status import INPUT_REJECTIONS, RuntimeState, RuntimeStatus


class Level(IntEnum):
    """The values of diagnostic_msgs/DiagnosticStatus levels."""

    OK = 0
    WARN = 1
    ERROR = 2


@dataclass(frozen=True)
class ComponentHealth:
    name: str
    level: Level
    message: str
    values: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class EndpointReport:
    """The inference server as the node's client sees it (serve/client.py builds it)."""

    endpoint: str
    reachable: bool
    last_error: str
    requests: int
    failures: int
    reconnects: int
    round_trip_ms_p50: float
    round_trip_ms_p99: float
    server_inference_ms_p50: float
    server_queue_ms_p50: float
    batch_size_mean: float


@dataclass(frozen=True)
class ControllerLink:
    """A controller's command topic as the node sees it."""

    name: str
    topic: str
    subscribers: int


def _component(name: str, problems: Sequence[tuple[Level, str]], ok: str,
               values: Mapping[str, object]) -> ComponentHealth:
    """The worst problem's level; every problem's reason, worst first."""
    ranked = sorted(problems, key=lambda problem: -problem[0])
    level = ranked[0][0] if ranked else Level.OK
    message = "; ".join(reason for _, reason in ranked) if ranked else ok
    return ComponentHealth(name, level, message, tuple((key, str(value)) for key, value in values.items()))


class HealthMonitor:
    """Assesses one runtime's status reports in order (make a new one for a new runtime)."""

    def __init__(self) -> None:
        self._previous: RuntimeStatus | None = None
        self._previous_invalid = 0

    @staticmethod
    def _position_clamps(status: RuntimeStatus | None) -> int:
        if status is None:
            return 0
        return status.clamped.get(CLAMP_POSITION, 0) + status.clamped_trajectory.get(CLAMP_POSITION, 0)

    def _grew(self, status: RuntimeStatus, *fields: str) -> int:
        """How much the named counters (ints or per-reason mappings) grew since the previous report."""

        def total(snapshot: RuntimeStatus | None) -> int:
            if snapshot is None:
                return 0
            values = [getattr(snapshot, name) for name in fields]
            return sum(sum(v.values()) if isinstance(v, Mapping) else int(v) for v in values)

        now, before = total(status), total(self._previous)
        return now - before if now >= before else now  # counters restart with a new activation

    def assess(self, status: RuntimeStatus, active: bool, instruction: str, invalid_inputs: int,
               controllers: Sequence[ControllerLink]) -> list[ComponentHealth]:
        components = [self._inputs(status, active, invalid_inputs), self._inference(status, active, instruction),
                      self._control(status, active)]
        components += [_controller(link, active) for link in controllers]
        self._previous = status
        return components

    def _inputs(self, status: RuntimeStatus, active: bool, invalid_inputs: int) -> ComponentHealth:
        problems = []
        if active and status.stale_inputs:
            problems.append((Level.WARN, f"stale: {', '.join(status.stale_inputs)} (holding until fresh)"))
        invalid = invalid_inputs + _rejected(status, inputs=True)
        new_invalid = invalid - self._previous_invalid if invalid >= self._previous_invalid else invalid
        self._previous_invalid = invalid
        if new_invalid:
            problems.append((Level.WARN, f"{new_invalid} invalid input message(s) ignored (see the log)"))
        return _component("inputs", problems, "fresh" if active else "not used while inactive",
                          {"stale_now": ",".join(status.stale_inputs), "stale_events": sum(status.stale.values()),
                           "invalid_inputs": invalid})

    def _inference(self, status: RuntimeStatus, active: bool, instruction: str) -> ComponentHealth:
        problems = []
        if "inference thread failed" in status.estop_reason:
            problems.append((Level.ERROR, status.estop_reason))
        failures = self._grew(status, "inference_failures")
        if failures:
            problems.append((Level.ERROR, f"{failures} inference(s) failed since the last report: "
                                          f"{status.last_error or 'see the log'}"))
        timeouts = self._grew(status, "inference_timeouts")
        if timeouts:
            problems.append((Level.WARN, f"{timeouts} inference(s) not back within a chunk's duration"))
        overruns = self._grew(status, "overruns")
        if overruns:
            problems.append((Level.WARN, f"{overruns} inference overrun(s): slower than the inference period"))
        dropped = self._grew(status, "dropped_chunks", "rejected_chunks")
        if dropped:
            problems.append((Level.WARN, f"{dropped} chunk(s) not executed (late, superseded or refused)"))
        if active and not instruction:
            problems.append((Level.WARN, "no instruction yet: publish one on the instruction topic"))
        return _component("inference", problems, "running" if active else "idle",
                          {"rate_hz": round(status.inference_rate_hz, 2),
                           "latency_mean_ms": round(status.inference_latency_mean_ns / 1e6, 1),
                           "chunks": status.chunks_accepted, "overruns": status.overruns,
                           "failures": status.inference_failures})

    def _control(self, status: RuntimeStatus, active: bool) -> ComponentHealth:
        problems = []
        if status.state is RuntimeState.ESTOPPED or status.estop_reason:
            problems.append((Level.ERROR, f"e-stop latched: {status.estop_reason or 'requested'} "
                                          "(call ~/reset once safe)"))
        elif active and status.state is RuntimeState.PAUSED:
            problems.append((Level.WARN, "paused on request (~/resume continues)"))
        elif active and status.state is RuntimeState.IDLE:
            problems.append((Level.WARN, f"not started: {status.last_error or 'waiting for joint states'}"))
        if active and status.holds:
            problems.append((Level.WARN, f"holding: {'; '.join(status.holds)}"))
        rejected = _rejected(status, inputs=False) - (_rejected(self._previous, inputs=False) if self._previous else 0)
        if rejected > 0:
            problems.append((Level.WARN, f"{rejected} command(s) refused by the safety limiter"))
        # Velocity and acceleration limiting is the limiter's everyday work (it shapes every chunk hand-over);
        # a target outside the position limits says the policy or the config is off.
        outside = self._position_clamps(status) - self._position_clamps(self._previous)
        if outside > 0:
            problems.append((Level.WARN, f"{outside} command value(s) asked outside the joint limits (clamped)"))
        missed = self._grew(status, "missed_control_ticks")
        if missed:
            problems.append((Level.WARN, f"{missed} control tick(s) missed"))
        return _component("control", problems, status.state.value if active else "inactive",
                          {"state": status.state.value, "rate_hz": round(status.control_rate_hz, 2),
                           "dry_run": status.dry_run, "clamped": sum(status.clamped.values()),
                           "missed_ticks": status.missed_control_ticks})


def _rejected(status: RuntimeStatus, inputs: bool) -> int:
    """Rejected input messages (inputs=True) or rejected commands, from the runtime's per-reason counts."""
    return sum(n for reason, n in status.rejected.items() if (reason in INPUT_REJECTIONS) == inputs)


def _controller(link: ControllerLink, active: bool) -> ComponentHealth:
    problems = []
    if active and link.subscribers == 0:
        problems.append((Level.WARN, f"no subscriber on {link.topic}: is the controller loaded and the topic "
                                     "remapped correctly?"))
    return _component(f"controller {link.name}", problems, "listening" if link.subscribers else "inactive",
                      {"topic": link.topic, "subscribers": link.subscribers})


class EndpointHealth:
    """The "inference server" component: which server, its round trip, and failures since the last report."""

    def __init__(self) -> None:
        self._failures = 0

    def assess(self, report: EndpointReport) -> ComponentHealth:
        problems = []
        if not report.reachable:
            problems.append((Level.ERROR, f"{report.endpoint} unreachable, holding until it answers: "
                                          f"{report.last_error or 'not answering yet'}"))
        failures = report.failures - self._failures if report.failures >= self._failures else report.failures
        self._failures = report.failures
        if failures and report.reachable:
            problems.append((Level.WARN, f"{failures} request(s) failed since the last report: "
                                         f"{report.last_error or 'see the log'}"))
        ok = (f"{report.endpoint}: round trip p50 {report.round_trip_ms_p50:.1f} ms (server: inference "
              f"{report.server_inference_ms_p50:.1f} ms, queue {report.server_queue_ms_p50:.1f} ms, batch "
              f"{report.batch_size_mean:g})")
        return _component("inference server", problems, ok, {
            "endpoint": report.endpoint, "reachable": report.reachable, "requests": report.requests,
            "failures": report.failures, "reconnects": report.reconnects,
            "round_trip_ms_p50": report.round_trip_ms_p50, "round_trip_ms_p99": report.round_trip_ms_p99,
            "server_inference_ms_p50": report.server_inference_ms_p50,
            "server_queue_ms_p50": report.server_queue_ms_p50, "batch_size_mean": report.batch_size_mean})
