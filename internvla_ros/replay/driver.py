"""Drives the policy runtime with a bag's messages, in bag time, as the node would have run.

The clock is the bag's log time. Messages are fed in order; between them the driver fires what falls
due: a chunk whose modelled inference has finished, a control tick, a status report. Inference runs
inline the moment an observation is handed out, and its chunk is submitted ``inference_latency_ns``
later in bag time. The wall time of each inference is measured and reported but never schedules
anything, which is what makes a replay reproducible to the byte.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from internvla_ros.model.errors import ModelError
from internvla_ros.replay.messages import ChunkMessage
from internvla_ros.replay.topics import TopicMap
from internvla_ros.runtime import ActionMapper, ControlOutput, Observation, PolicyRuntime, RuntimeStatus
from internvla_ros.runtime.errors import MappingError, PolicyRuntimeError
from internvla_ros.runtime.images import ImageError, decode_rgb
from internvla_ros.runtime.policy import Policy, PolicyResult
from internvla_ros.runtime.status import StatusReport, status_report
from internvla_ros.runtime.timeutil import stamp_to_ns

MS = 1_000_000
DEFAULT_INFERENCE_LATENCY_NS = 100 * MS
DEFAULT_STATUS_PERIOD_NS = 500 * MS  # the node's status_rate_hz default, 2 Hz
DEFAULT_BATCH = 1  # each observation inline, one thread; N > 1: batches of N computed ahead by a second
# thread (replay/lookahead.py), which loses to batch 1 on a shared 2-core CPU (GIL, planning cost)
LATENCY_WINDOW = 200  # the node's window for the status latency percentiles
MEASURED_PERIOD_NS = 10 * MS  # measured joint states kept for the plots, at most this often
RUNNING = "running"


class ReplaySink(Protocol):
    """Receives what the node would have published, in bag-time order."""

    def on_control(self, output: ControlOutput) -> None: ...

    def on_chunk(self, chunk: ChunkMessage) -> None: ...

    def on_status(self, status: StatusReport) -> None: ...


@dataclass(frozen=True)
class DriverOptions:
    inference_latency_ns: int = DEFAULT_INFERENCE_LATENCY_NS
    status_period_ns: int = DEFAULT_STATUS_PERIOD_NS
    instruction: str = ""  # fixed for the whole replay; empty: the bag's instruction topic, each at its bag time
    keep_measured: bool = True  # keep measured joint states (at most every MEASURED_PERIOD_NS) for plots
    control: bool = True  # False: only plan the observations; no chunk is adopted, so no motion is planned


@dataclass(frozen=True)
class SizeChange:
    camera: str
    stamp_ns: int
    before: tuple[int, int]
    after: tuple[int, int]


@dataclass
class ReplayStats:
    """What happened during a replay, for the summary and the report."""

    messages: Counter[str] = field(default_factory=Counter)
    invalid_images: Counter[str] = field(default_factory=Counter)
    image_errors: dict[str, str] = field(default_factory=dict)  # camera -> first reason
    image_sizes: dict[str, tuple[int, int]] = field(default_factory=dict)  # camera -> first (H, W)
    size_changes: list[SizeChange] = field(default_factory=list)
    rejected_joint_states: int = 0
    joint_gaps: list[tuple[int, int]] = field(default_factory=list)  # joint_states silent longer than allowed
    holds: list[tuple[int, int, str]] = field(default_factory=list)  # (start, end, state) outside 'running'
    started_ns: int | None = None
    chunks: int = 0
    chunks_rejected: Counter[str] = field(default_factory=Counter)
    chunks_pending_at_end: int = 0
    inference_failures: Counter[str] = field(default_factory=Counter)
    control_ticks: int = 0
    commands_sent: int = 0
    status_reports: int = 0
    wall_latency_ns: list[int] = field(default_factory=list)  # measured per inference, never scheduled on
    measured_ns: list[int] = field(default_factory=list)
    measured: list[np.ndarray] = field(default_factory=list)  # joint values in config order
    final_status: RuntimeStatus | None = None
    instructions: list[tuple[int, str]] = field(default_factory=list)  # (bag time, text) as applied from the bag


@dataclass
class _Pending:
    ready_ns: int
    observation: Observation
    result: PolicyResult


class ReplayDriver:
    """Feeds one bag's inputs to a fresh PolicyRuntime and fans its outputs out to the sinks.

    With ``options.control`` off it only plans (a look-ahead for batching inference): every chunk is handed
    back as a failed inference, which frees the request as an arrival does, so the runtime asks for the same
    observations at the same bag times (in the delay-compensated and uncompensated modes) without planning
    any motion, the costly part of a tick.
    """

    def __init__(self, runtime: PolicyRuntime, mapper: ActionMapper, policy: Policy, topics: TopicMap,
                 camera_topics: dict[str, str], options: DriverOptions, sinks: Sequence[ReplaySink],
                 progress: Callable[[int], None] | None = None) -> None:
        self._runtime = runtime
        self._mapper = mapper
        self._policy = policy
        self._topics = topics
        self._camera_of = {topic: camera for camera, topic in camera_topics.items()}
        self._options = options
        self._sinks = tuple(sinks)
        self._progress = progress
        self._config = runtime.config
        self._joint_max_age_ns = self._config.safety.joint_state_max_age_ns
        self._step_ns = self._config.rates.chunk_step_ns
        self.stats = ReplayStats()
        self._pending: _Pending | None = None
        self._next_status_ns: int | None = None
        self._latencies: deque[int] = deque(maxlen=LATENCY_WINDOW)
        self._chunk_id = 0
        self._instruction = options.instruction
        self._last_joint_ns: int | None = None
        self._last_measured_ns: int | None = None
        self._hold_start: tuple[int, str] | None = None
        self._sizes: dict[str, tuple[int, int]] = {}
        runtime.set_instruction(self._instruction)

    @property
    def input_topics(self) -> list[str]:
        instruction = [] if self._options.instruction.strip() else [self._topics.instruction]
        return [self._topics.joint_states, *instruction, *self._camera_of]

    def run(self, messages: Iterable[tuple[str, int, Any]], end_ns: int) -> ReplayStats:
        """Replays ``messages`` (topic, log time, message) and everything that falls due up to ``end_ns``."""
        self._policy.reset()
        for topic, now_ns, message in messages:
            if self._next_status_ns is None:
                self._next_status_ns = now_ns + self._options.status_period_ns
            self._advance(now_ns, inclusive=False)
            self.stats.messages[topic] += 1
            self._feed(topic, now_ns, message)
            self._try_start(now_ns)
            self._poll(now_ns)
            if self._progress is not None:
                self._progress(now_ns)
        self._advance(end_ns, inclusive=True)
        self.stats.chunks_pending_at_end = int(self._pending is not None)
        if self._hold_start is not None:
            self.stats.holds.append((self._hold_start[0], end_ns, self._hold_start[1]))
        self.stats.final_status = self._runtime.status(end_ns)
        return self.stats

    # Inputs ---------------------------------------------------------------------------------------

    def _feed(self, topic: str, now_ns: int, message: Any) -> None:
        if topic == self._topics.joint_states:
            self._feed_joint_state(now_ns, message)
        elif topic == self._topics.instruction:
            text = str(message.data).strip()
            if text and text != self._instruction:
                self._instruction = text
                self._runtime.set_instruction(text)
                self.stats.instructions.append((now_ns, text))
        elif topic in self._camera_of:
            self._feed_image(self._camera_of[topic], now_ns, message)

    def _feed_joint_state(self, now_ns: int, message: Any) -> None:
        stamp_ns = stamp_to_ns(message.header.stamp) or now_ns
        if self._last_joint_ns is not None and stamp_ns - self._last_joint_ns > self._joint_max_age_ns:
            self.stats.joint_gaps.append((self._last_joint_ns, stamp_ns))
        names, positions = list(message.name), list(message.position)
        velocities = list(message.velocity) or None
        if not self._runtime.update_joint_state(stamp_ns, names, positions, velocities):
            self.stats.rejected_joint_states += 1
            return
        self._last_joint_ns = max(stamp_ns, self._last_joint_ns or stamp_ns)
        if not self._options.keep_measured:
            return
        if self._last_measured_ns is None or stamp_ns - self._last_measured_ns >= MEASURED_PERIOD_NS:
            try:
                values = self._mapper.joint_values(names, positions, velocities)
            except MappingError:
                return
            self._last_measured_ns = stamp_ns
            self.stats.measured_ns.append(stamp_ns)
            self.stats.measured.append(values)

    def _feed_image(self, camera: str, now_ns: int, message: Any) -> None:
        try:
            pixels = decode_rgb(message)
        except ImageError as err:
            self.stats.invalid_images[camera] += 1
            self.stats.image_errors.setdefault(camera, str(err))
            return
        size = (int(pixels.shape[0]), int(pixels.shape[1]))
        previous = self._sizes.get(camera)
        if previous is None:
            self.stats.image_sizes[camera] = size
        elif size != previous:
            self.stats.size_changes.append(SizeChange(camera, now_ns, previous, size))
        self._sizes[camera] = size
        stamp_ns = stamp_to_ns(message.header.stamp) or now_ns
        self._runtime.update_camera(camera, stamp_ns, pixels)

    # Scheduling -----------------------------------------------------------------------------------

    def _try_start(self, now_ns: int) -> None:
        if self.stats.started_ns is not None:
            return
        try:
            self._runtime.start(now_ns)
        except PolicyRuntimeError:
            return  # waiting for every input to be fresh, as the node does
        self.stats.started_ns = now_ns

    def _advance(self, until_ns: int, inclusive: bool) -> None:
        """Fires chunk arrivals, control ticks and status reports due before (or at) ``until_ns``."""
        while True:
            candidates = []
            if self._pending is not None:
                candidates.append((self._pending.ready_ns, 0))
            if self.stats.started_ns is not None:
                candidates.append((self._runtime.next_tick_ns, 1))
            if self._next_status_ns is not None:
                candidates.append((self._next_status_ns, 2))
            if not candidates:
                return
            due_ns, kind = min(candidates)
            if due_ns > until_ns or (due_ns == until_ns and not inclusive):
                return
            if kind == 0:
                self._submit(due_ns)
            elif kind == 1:
                self._tick(due_ns)
            else:
                self._status(due_ns)
            self._poll(due_ns)

    def _poll(self, now_ns: int) -> None:
        """Hands the due observation to the policy at once; its chunk arrives after the modelled latency."""
        if self.stats.started_ns is None or self._pending is not None:
            return
        observation = self._runtime.poll_observation(now_ns)
        if observation is None:
            return
        started = time.monotonic_ns()
        try:
            result = self._policy.infer(observation)
        except ModelError as err:  # the node counts it, holds, and asks again on schedule
            self._runtime.report_inference_failure(observation.stamp_ns, str(err))
            self.stats.inference_failures[str(err)] += 1
            return
        self.stats.wall_latency_ns.append(time.monotonic_ns() - started)
        self._pending = _Pending(now_ns + self._options.inference_latency_ns, observation, result)

    def _submit(self, now_ns: int) -> None:
        pending, self._pending = self._pending, None
        assert pending is not None
        observation = pending.observation
        if not self._options.control:
            self._runtime.report_inference_failure(observation.stamp_ns, "planning only")
            return
        outcome = self._runtime.submit_chunk(pending.result.actions, observation.stamp_ns, now_ns)
        self._latencies.append(now_ns - observation.request_ns)
        if not outcome.accepted:
            self.stats.chunks_rejected[outcome.reason] += 1
            return
        self._chunk_id += 1
        self.stats.chunks += 1
        chunk = ChunkMessage(self._chunk_id, now_ns, observation.stamp_ns, self._step_ns, outcome.start_index,
                             self._config.joint_names, outcome.positions)
        for sink in self._sinks:
            sink.on_chunk(chunk)

    def _tick(self, now_ns: int) -> None:
        output = self._runtime.tick(now_ns)
        if output is None:
            return
        self.stats.control_ticks += 1
        self.stats.commands_sent += len(output.trajectories) + len(output.forward)
        self._track_hold(output)
        for sink in self._sinks:
            sink.on_control(output)

    def _track_hold(self, output: ControlOutput) -> None:
        holding = output.state != RUNNING
        if holding and self._hold_start is None:
            self._hold_start = (output.stamp_ns, output.state)
        elif not holding and self._hold_start is not None:
            self.stats.holds.append((self._hold_start[0], output.stamp_ns, self._hold_start[1]))
            self._hold_start = None

    def _status(self, now_ns: int) -> None:
        assert self._next_status_ns is not None
        self._next_status_ns += self._options.status_period_ns
        self.stats.status_reports += 1
        message = status_report(self._runtime.status(now_ns), self._instruction, self._latencies,
                                 self.stats.commands_sent, sum(self.stats.invalid_images.values()))
        for sink in self._sinks:
            sink.on_status(message)


