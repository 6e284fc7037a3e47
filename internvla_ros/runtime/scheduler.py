"""``PolicyRuntime``: fixed-rate control around asynchronous chunk inference, driven by an injected clock.

Every method takes the current time as integer nanoseconds; nothing reads a wall clock, so a ROS node
(node clock, ``use_sim_time`` in replay) and a test (simulated clock) drive it identically.

The caller's loop::

    runtime.update_joint_state(stamp, names, positions)   # from /joint_states
    runtime.update_camera(name, stamp, image)             # from each camera topic
    obs = runtime.poll_observation(now)                   # due at inference_rate_hz; None otherwise
    ... in an inference thread: result = policy.infer(obs)
    runtime.submit_chunk(result.actions, obs.stamp_ns, ready_ns=now)
    out = runtime.tick(now)                               # at most one command per control period

Calls are serialised by an internal lock, so an inference thread may call ``submit_chunk`` directly.
"""

from __future__ import annotations

import threading
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from internvla_ros.runtime.commands import (
    ControlOutput,
    ForwardCommand,
    JointTrajectoryCommand,
    TrajectoryPoint,
)
from internvla_ros.runtime.config import RuntimeConfig, period_ns
from internvla_ros.runtime.errors import MappingError, PolicyRuntimeError
from internvla_ros.runtime.mapping import ActionMapper
from internvla_ros.runtime.observation import CameraFrames, FrameHistory, Observation
from internvla_ros.runtime.plan import ChunkPlan, HoldSchedule, Schedule, TimedPath, cubic_within_limits, hand_over
from internvla_ros.runtime.safety import (
    CLAMPED,
    CLAMPED_TRAJECTORY,
    REJECTED,
    STALE,
    STALE_CAMERA_PREFIX,
    STALE_JOINT_STATE,
    EventCounters,
    InputWatchdog,
    LimitedCommand,
    MotionLimiter,
    MotionState,
    SafetyGate,
)
from internvla_ros.runtime.status import (
    REJECT_JOINT_STATE,
    REJECT_UNKNOWN_CAMERA,
    LatencyStats,
    RateMeter,
    RuntimeState,
    RuntimeStatus,
)

REJECTED_CHUNKS = "rejected_chunks"
DROPPED_CHUNKS = "dropped_chunks"
TIMING = "timing"

DROP_UNKNOWN_OBSERVATION = "unknown_observation"
DROP_NOT_RUNNING = "not_running"
DROP_PREDATES_HOLD = "predates_hold"  # computed from an observation taken before a pause/e-stop/stale hold
DROP_NOT_NEWER = "not_newer_than_active"
DROP_IN_PAST = "arrived_in_past"  # the whole chunk lies before its arrival time
TIMING_MISSED_TICKS = "missed_control_ticks"
TIMING_OVERRUNS = "overruns"
TIMING_TIMEOUTS = "inference_timeouts"
TIMING_FAILURES = "inference_failures"
CUBIC_TO_LINEAR = "cubic_to_linear"  # a trajectory sent as positions only: its cubic would overshoot a limit

RECENT_REQUESTS = 8  # observations whose chunks are still accepted (identified by their stamp)
HANDED_OUT_FRAMES = 32  # per camera: a few seconds of requests, enough for any history offset


@dataclass
class _Request:
    obs_stamp_ns: int
    request_ns: int
    overrun: bool = False


@dataclass(frozen=True)
class ChunkResult:
    """What happened to a submitted chunk; ``reason`` is a counter key when not accepted."""

    accepted: bool
    reason: str
    start_index: int = -1
    latency_ns: int = 0  # observation stamp -> arrival
    positions: np.ndarray | None = None  # the accepted chunk in joint space (chunk_size, joints)


def _next_grid(due_ns: int, period_ns: int, now_ns: int) -> int:
    """The first point of the grid ``due_ns + k * period_ns`` after ``now_ns`` (skips, never queues)."""
    if now_ns < due_ns:
        return due_ns
    return due_ns + ((now_ns - due_ns) // period_ns + 1) * period_ns


def _round_div(numerator: int, denominator: int) -> int:
    """Round-half-up integer division, so start indices are exact integers without float ties."""
    return (numerator + denominator // 2) // denominator


class PolicyRuntime:
    """Schedules observations, adopts chunks with delay compensation and blending, emits safe commands."""

    def __init__(self, config: RuntimeConfig, mapper: ActionMapper) -> None:
        self._config = config
        self._mapper = mapper
        self._counters = EventCounters()
        self._limiter = MotionLimiter(config, self._counters)
        self._watchdog = InputWatchdog(config)
        self._gate = SafetyGate(config.safety.dry_run)
        self._lock = threading.RLock()

        rates, execution = config.rates, config.execution
        self._control_ns = rates.control_period_ns
        self._inference_ns = rates.inference_period_ns
        self._step_ns = rates.chunk_step_ns
        self._foresight_ns = period_ns(rates.foresight_rate_hz)
        preview_hz = rates.foresight_preview_rate_hz
        self._preview_ns = period_ns(preview_hz) if preview_hz else 0  # 0: never decode a preview
        self._blend_ns = execution.blend_steps * self._step_ns
        self._timeout_ns = execution.chunk_size * self._step_ns
        history_ns = execution.frame_history_steps * self._step_ns
        self._history_ns = history_ns
        self._frames = {c.name: FrameHistory(history_ns) for c in config.cameras}
        # Frames already handed out as a camera's current frame (the policy has encoded them), newest last.
        self._handed_out: dict[str, deque[tuple[int, Any]]] = {c.name: deque(maxlen=HANDED_OUT_FRAMES)
                                                               for c in config.cameras}
        self._history_reuse_ns = execution.history_reuse_steps * self._step_ns
        self._joint_index = [[config.joint_index[j] for j in c.joints] for c in config.controllers]
        self._trajectory_columns = np.asarray(sorted(
            config.joint_index[j] for c in config.controllers if c.type == "joint_trajectory" for j in c.joints),
            dtype=np.int64)
        self._path: TimedPath | None = None  # the trajectory last sent to joint_trajectory controllers

        self._state = RuntimeState.IDLE
        self._joint_values: np.ndarray | None = None
        self._model_state: np.ndarray | None = None
        self._joint_stamp_ns: int | None = None
        self._instruction = ""
        self._motion: MotionState | None = None
        self._schedule: Schedule | None = None
        self._plan: ChunkPlan | None = None
        self._request: _Request | None = None
        # Observation stamp -> (its model state, when it was requested), for the chunks still accepted.
        self._recent: OrderedDict[int, tuple[np.ndarray, int]] = OrderedDict()
        self._resume_ns = 0
        self._next_tick_ns = 0
        self._next_inference_ns = 0
        self._next_foresight_ns = 0
        self._next_preview_ns = 0
        self._last_tick_ns: int | None = None
        self._send_plan = False
        self._send_hold = False
        self._stale_now: tuple[str, ...] = ()
        self._last_error = ""
        self._control_ticks = 0
        self._chunks_accepted = 0
        self._last_start_index = -1
        self._control_rate = RateMeter()
        self._inference_rate = RateMeter()
        self._foresight_rate = RateMeter()
        self._preview_rate = RateMeter()
        self._inference_latency = LatencyStats()
        self._observation_age = LatencyStats()

    # Properties -----------------------------------------------------------------------------------

    @property
    def config(self) -> RuntimeConfig:
        return self._config

    @property
    def state(self) -> RuntimeState:
        return self._state

    @property
    def limiter(self) -> MotionLimiter:
        return self._limiter

    @property
    def next_tick_ns(self) -> int:
        """When tick() will next emit a command (meaningful once started); the caller sleeps until then."""
        with self._lock:
            return self._next_tick_ns

    @property
    def dry_run(self) -> bool:
        return self._gate.dry_run

    # Inputs ---------------------------------------------------------------------------------------

    def update_joint_state(
        self,
        stamp_ns: int,
        names: Sequence[str],
        positions: Sequence[float],
        velocities: Sequence[float] | None = None,
    ) -> bool:
        """Feeds /joint_states. A bad message is counted and reported, and does not refresh the watchdog."""
        with self._lock:
            try:
                values = self._mapper.joint_values(names, positions, velocities)
            except MappingError as err:
                self._counters.add(REJECTED, REJECT_JOINT_STATE)
                self._last_error = str(err)
                return False
            if self._joint_stamp_ns is not None and stamp_ns < self._joint_stamp_ns:
                self._last_error = "joint_states out of order: older than the newest one received (ignored)"
                return False  # the newer state stays
            self._joint_values = values
            self._model_state = self._mapper.model_state(values)
            self._joint_stamp_ns = stamp_ns
            self._watchdog.update(STALE_JOINT_STATE, stamp_ns)
            return True

    def update_camera(self, name: str, stamp_ns: int, image: Any) -> bool:
        with self._lock:
            history = self._frames.get(name)
            if history is None:
                self._counters.add(REJECTED, REJECT_UNKNOWN_CAMERA)
                self._last_error = f"camera {name!r} is not configured; known {sorted(self._frames)}"
                return False
            history.add(stamp_ns, image)
            self._watchdog.update(STALE_CAMERA_PREFIX + name, stamp_ns)
            return True

    def set_instruction(self, instruction: str) -> None:
        """The task for the next observations; until one is set, no observation is requested (hold)."""
        with self._lock:
            self._instruction = instruction

    # Lifecycle and operator switches --------------------------------------------------------------

    def start(self, now_ns: int) -> None:
        """Starts from the measured joint positions, at rest; needs every input fresh first."""
        with self._lock:
            if self._joint_values is None:
                msg = "cannot start: no joint state received yet"
                raise PolicyRuntimeError(msg)
            stale = self._watchdog.stale(now_ns)
            if stale:
                msg = f"cannot start: waiting for fresh {', '.join(stale)}"
                raise PolicyRuntimeError(msg)
            self._motion = self._limiter.initial_state(self._joint_values, now_ns - self._control_ns)
            self._schedule = HoldSchedule(self._motion.positions)
            self._plan = None
            self._path = None
            self._request = None
            self._state = RuntimeState.RUNNING
            self._resume_ns = now_ns
            self._next_tick_ns = now_ns
            self._next_inference_ns = now_ns
            self._next_foresight_ns = now_ns
            self._next_preview_ns = now_ns
            self._stale_now = ()

    def stop(self) -> None:
        """Back to idle: nothing is commanded until start()."""
        with self._lock:
            self._state = RuntimeState.IDLE
            self._request = None
            self._plan = None
            self._path = None
            self._schedule = None

    def hold_and_stop(self, now_ns: int) -> ControlOutput | None:
        """A last command holding the current safe position (so a running trajectory stops), then idle.

        None when already idle. Used when actuation is switched off (lifecycle deactivate, shutdown).
        """
        with self._lock:
            if self._state is RuntimeState.IDLE or self._motion is None:
                return None
            stamp_ns = max(now_ns, self._motion.stamp_ns)
            self._motion = self._limiter.hold(self._motion, stamp_ns)
            self._send_hold = True
            output = self._output(stamp_ns, frozenset())
            self.stop()
            return output

    def pause(self) -> None:
        with self._lock:
            self._gate.pause()

    def resume(self) -> None:
        with self._lock:
            self._gate.resume()

    def estop(self, reason: str) -> None:
        """Latches until reset_estop(); the hold is commanded from the next tick on."""
        with self._lock:
            self._gate.estop(reason)

    def reset_estop(self) -> None:
        with self._lock:
            self._gate.reset_estop()

    def set_dry_run(self, dry_run: bool) -> None:
        """Switches actuation. Switching it on restarts from the measured joints, at rest: during a dry run
        the computed command moved on while the robot stood still."""
        with self._lock:
            if self._gate.dry_run and not dry_run and self._motion is not None and self._joint_values is not None:
                self._motion = self._limiter.initial_state(self._joint_values, self._motion.stamp_ns)
                self._schedule = HoldSchedule(self._motion.positions)
                self._plan = None
                self._path = None
                self._resume_ns = self._motion.stamp_ns
            self._gate.dry_run = dry_run

    # Inference ------------------------------------------------------------------------------------

    def poll_observation(self, now_ns: int) -> Observation | None:
        """The observation to infer on, when one is due; the runtime then waits for its chunk."""
        with self._lock:
            self._check_inference(now_ns)
            if not self._observation_due(now_ns):
                return None
            assert self._model_state is not None and self._joint_stamp_ns is not None
            try:
                normalized = self._mapper.normalized_state(self._model_state)
            except MappingError as err:
                self._counters.add(REJECTED, REJECT_JOINT_STATE)
                self._last_error = str(err)
                return None
            recompute = now_ns >= self._next_foresight_ns
            if recompute:
                self._next_foresight_ns = _next_grid(self._next_foresight_ns, self._foresight_ns, now_ns)
                self._foresight_rate.add(now_ns)
            preview = bool(self._preview_ns) and now_ns >= self._next_preview_ns
            if preview:
                self._next_preview_ns = _next_grid(self._next_preview_ns, self._preview_ns, now_ns)
                self._preview_rate.add(now_ns)
            observation = Observation(
                stamp_ns=self._joint_stamp_ns,
                request_ns=now_ns,
                cameras=self._camera_frames(),
                state=self._model_state.copy(),
                normalized_state=normalized,
                instruction=self._instruction,
                recompute_foresight=recompute,
                decode_preview=preview,
            )
            self._request = _Request(obs_stamp_ns=observation.stamp_ns, request_ns=now_ns)
            self._recent[observation.stamp_ns] = (observation.state, now_ns)
            while len(self._recent) > RECENT_REQUESTS:
                self._recent.popitem(last=False)
            self._next_inference_ns = _next_grid(self._next_inference_ns, self._inference_ns, now_ns)
            return observation

    def report_inference_failure(self, obs_stamp_ns: int, message: str) -> None:
        """The policy raised: counted and reported; the next observation is requested on schedule."""
        with self._lock:
            self._counters.add(TIMING, TIMING_FAILURES)
            self._last_error = f"inference failed: {message}"
            if self._request is not None and self._request.obs_stamp_ns == obs_stamp_ns:
                self._request = None

    def submit_chunk(self, actions: np.ndarray, obs_stamp_ns: int, ready_ns: int) -> ChunkResult:
        """Hands back a chunk computed from the observation stamped ``obs_stamp_ns``, at ``ready_ns``."""
        with self._lock:
            self._check_inference(ready_ns)
            request = self._request
            if request is not None and request.obs_stamp_ns == obs_stamp_ns:
                inference_ns = ready_ns - request.request_ns
                self._inference_latency.add(inference_ns)
                if self._overruns_apply() and inference_ns > self._inference_ns and not request.overrun:
                    self._counters.add(TIMING, TIMING_OVERRUNS)
                self._request = None
            latency_ns = ready_ns - obs_stamp_ns
            recent = self._recent.get(obs_stamp_ns)
            if recent is None:
                return self._drop(DROP_UNKNOWN_OBSERVATION, latency_ns)
            state, requested_ns = recent
            if self._state is not RuntimeState.RUNNING:
                return self._drop(DROP_NOT_RUNNING, latency_ns)
            if requested_ns < self._resume_ns:  # requested before a hold that has ended since
                return self._drop(DROP_PREDATES_HOLD, latency_ns)
            if self._plan is not None and obs_stamp_ns <= self._plan.obs_stamp_ns:
                return self._drop(DROP_NOT_NEWER, latency_ns)
            try:
                positions = self._mapper.chunk_to_joint_positions(actions, state)
            except MappingError as err:
                self._counters.add(REJECTED_CHUNKS, err.reason)
                self._last_error = str(err)
                return ChunkResult(accepted=False, reason=err.reason, latency_ns=latency_ns)
            plan = self._make_plan(positions, obs_stamp_ns, ready_ns)
            if plan is None:
                return self._drop(DROP_IN_PAST, latency_ns)
            assert self._schedule is not None
            blend_start = ready_ns if self._last_tick_ns is None else max(ready_ns, self._last_tick_ns)
            self._schedule = hand_over(self._schedule, plan, blend_start, self._blend_ns)
            self._plan = plan
            self._send_plan = True
            self._chunks_accepted += 1
            self._last_start_index = plan.start_index
            self._observation_age.add(latency_ns)
            self._inference_rate.add(ready_ns)
            return ChunkResult(accepted=True, reason="", start_index=plan.start_index, latency_ns=latency_ns,
                               positions=positions)

    # Control --------------------------------------------------------------------------------------

    def tick(self, now_ns: int) -> ControlOutput | None:
        """At most one command per control period; None between periods and when idle."""
        with self._lock:
            if self._state is RuntimeState.IDLE or now_ns < self._next_tick_ns:
                return None
            assert self._motion is not None and self._schedule is not None
            missed = (now_ns - self._next_tick_ns) // self._control_ns
            if missed:
                self._counters.add(TIMING, TIMING_MISSED_TICKS, missed)
            self._next_tick_ns += (missed + 1) * self._control_ns
            self._check_inference(now_ns)
            self._update_state(now_ns)
            if self._state is RuntimeState.RUNNING:
                self._schedule = self._schedule.settle(now_ns)
                limited = self._follow_sent_path(
                    self._limiter.limit(self._motion, self._schedule.sample(now_ns), now_ns), now_ns)
            else:
                limited = LimitedCommand(self._limiter.hold(self._motion, now_ns), frozenset())
            self._motion = limited.state
            self._last_tick_ns = now_ns
            self._control_ticks += 1
            self._control_rate.add(now_ns)
            return self._output(now_ns, limited.reasons)

    def status(self, now_ns: int) -> RuntimeStatus:
        with self._lock:
            counters = self._counters
            return RuntimeStatus(
                stamp_ns=now_ns,
                state=self._state,
                mode=self._config.execution.mode,
                dry_run=self._gate.dry_run,
                control_rate_hz=self._control_rate.rate_hz(now_ns),
                inference_rate_hz=self._inference_rate.rate_hz(now_ns),
                foresight_rate_hz=self._foresight_rate.rate_hz(now_ns),
                preview_rate_hz=self._preview_rate.rate_hz(now_ns),
                inference_latency_last_ns=self._inference_latency.last_ns,
                inference_latency_mean_ns=self._inference_latency.mean_ns,
                inference_latency_max_ns=self._inference_latency.max_ns,
                observation_age_last_ns=self._observation_age.last_ns,
                control_ticks=self._control_ticks,
                missed_control_ticks=counters.get(TIMING, TIMING_MISSED_TICKS),
                chunks_accepted=self._chunks_accepted,
                last_start_index=self._last_start_index,
                overruns=counters.get(TIMING, TIMING_OVERRUNS),
                inference_timeouts=counters.get(TIMING, TIMING_TIMEOUTS),
                inference_failures=counters.get(TIMING, TIMING_FAILURES),
                clamped=counters.snapshot(CLAMPED),
                clamped_trajectory=counters.snapshot(CLAMPED_TRAJECTORY),
                rejected=counters.snapshot(REJECTED),
                rejected_chunks=counters.snapshot(REJECTED_CHUNKS),
                dropped_chunks=counters.snapshot(DROPPED_CHUNKS),
                stale=counters.snapshot(STALE),
                stale_inputs=self._stale_now,
                estop_reason=self._gate.estop_reason or "",
                last_error=self._last_error,
            )

    # Internals ------------------------------------------------------------------------------------

    def _overruns_apply(self) -> bool:
        """In 'reference' mode the robot waits for each chunk: there is no inference period to overrun."""
        return self._config.execution.mode != "reference"

    def _observation_due(self, now_ns: int) -> bool:
        if self._state is not RuntimeState.RUNNING or self._request is not None:
            return False
        if self._model_state is None or self._gate.paused or self._gate.estopped:
            return False
        if not self._instruction.strip():  # a language-conditioned policy has nothing to do yet
            return False
        if self._watchdog.stale(now_ns):
            return False
        if any(history.latest() is None for history in self._frames.values()):
            return False
        if self._config.execution.mode == "reference":
            return self._plan is None or now_ns >= self._plan.end_ns
        return now_ns >= self._next_inference_ns

    def _check_inference(self, now_ns: int) -> None:
        """Detects an inference slower than its period (counted once, its slots skipped) or lost."""
        request = self._request
        if request is None:
            return
        if self._overruns_apply() and now_ns >= self._next_inference_ns:
            # A slot passes while the inference is in flight: skipped, never queued for later.
            self._next_inference_ns = _next_grid(self._next_inference_ns, self._inference_ns, now_ns)
            if not request.overrun:
                request.overrun = True
                self._counters.add(TIMING, TIMING_OVERRUNS)
        if now_ns - request.request_ns > self._timeout_ns:
            self._counters.add(TIMING, TIMING_TIMEOUTS)
            self._last_error = f"inference for observation {request.obs_stamp_ns} ns not back after a chunk"
            self._request = None

    def _older_frame(self, camera: str, latest_ns: int) -> tuple[int, Any]:
        """The frame ``history_ns`` before the latest; with history reuse, the nearest frame already handed
        out as current (so its encoding is reused) when it is within the reuse window of that instant."""
        target_ns = latest_ns - self._history_ns
        exact = self._frames[camera].before(target_ns)
        assert exact is not None
        if self._history_reuse_ns and self._handed_out[camera]:
            reused = min(self._handed_out[camera], key=lambda frame: abs(frame[0] - target_ns))
            if abs(reused[0] - target_ns) <= self._history_reuse_ns:
                return reused
        return exact

    def _camera_frames(self) -> dict[str, CameraFrames]:
        frames = {}
        for camera in self._config.cameras:
            latest = self._frames[camera.name].latest()
            assert latest is not None
            older = self._older_frame(camera.name, latest[0])
            if not self._handed_out[camera.name] or self._handed_out[camera.name][-1][0] != latest[0]:
                self._handed_out[camera.name].append(latest)
            frames[camera.name] = CameraFrames(
                slot=camera.slot,
                current=latest[1],
                current_stamp_ns=latest[0],
                history=older[1],
                history_stamp_ns=older[0],
            )
        return frames

    def _make_plan(self, positions: np.ndarray, obs_stamp_ns: int, ready_ns: int) -> ChunkPlan | None:
        mode = self._config.execution.mode
        if mode == "delay_compensated":
            start_index = _round_div(ready_ns - obs_stamp_ns, self._step_ns)
            if start_index > positions.shape[0] - 1:
                return None
            origin_ns = obs_stamp_ns
        else:
            start_index = 0
            origin_ns = ready_ns
            if mode == "reference":
                positions = positions[: self._config.execution.reference_steps]
        return ChunkPlan(
            positions=positions,
            origin_ns=origin_ns,
            step_ns=self._step_ns,
            obs_stamp_ns=obs_stamp_ns,
            start_index=start_index,
        )

    def _drop(self, reason: str, latency_ns: int) -> ChunkResult:
        self._counters.add(DROPPED_CHUNKS, reason)
        return ChunkResult(accepted=False, reason=reason, latency_ns=latency_ns)

    def _update_state(self, now_ns: int) -> None:
        stale = self._watchdog.stale(now_ns)
        for source in set(stale) - set(self._stale_now):
            self._counters.add(STALE, source)
        if stale:
            self._last_error = f"stale input: {', '.join(stale)}"
        self._stale_now = stale
        if self._gate.estopped:
            state = RuntimeState.ESTOPPED
        elif self._gate.paused:
            state = RuntimeState.PAUSED
        elif stale:
            state = RuntimeState.HOLDING
        else:
            state = RuntimeState.RUNNING
        if state is self._state:
            return
        assert self._motion is not None
        if self._state is RuntimeState.RUNNING:
            self._send_hold = True
            self._send_plan = False
            self._plan = None
        elif state is RuntimeState.RUNNING:
            self._resume_ns = now_ns
            self._next_inference_ns = now_ns
        self._schedule = HoldSchedule(self._motion.positions.copy())
        self._state = state

    def _follow_sent_path(self, limited: LimitedCommand, now_ns: int) -> LimitedCommand:
        """Joints on joint_trajectory controllers are where the sent trajectory has them, not where the
        per-tick limiter would: the controller executes the trajectory, and the next one must start on it."""
        if self._path is None or not self._trajectory_columns.size:
            return limited
        positions, velocities = self._path.sample(now_ns)
        # The cubic between two limited points can overshoot a little; the tracked state never does.
        positions = np.clip(positions, self._limiter.low, self._limiter.high)
        velocities = np.clip(velocities, -self._limiter.max_velocity, self._limiter.max_velocity)
        state = limited.state
        merged_positions, merged_velocities = state.positions.copy(), state.velocities.copy()
        merged_positions[self._trajectory_columns] = positions[self._trajectory_columns]
        merged_velocities[self._trajectory_columns] = velocities[self._trajectory_columns]
        return LimitedCommand(MotionState(merged_positions, merged_velocities, state.stamp_ns), limited.reasons)

    def _output(self, now_ns: int, clamped: frozenset[str]) -> ControlOutput:
        assert self._motion is not None
        trajectories = self._trajectories(now_ns)
        forward = self._forward_commands(now_ns)
        dry_run = self._gate.dry_run
        return ControlOutput(
            stamp_ns=now_ns,
            state=self._state.value,
            joint_names=self._config.joint_names,
            positions=tuple(float(x) for x in self._motion.positions),
            velocities=tuple(float(x) for x in self._motion.velocities),
            forward=() if dry_run else forward,
            trajectories=() if dry_run else trajectories,
            clamped=clamped,
            dry_run=dry_run,
        )

    def _trajectories(self, now_ns: int) -> tuple[JointTrajectoryCommand, ...]:
        if self._send_hold:
            self._send_hold = False
            self._path = None
            return self._hold_trajectories(now_ns)
        if not (self._send_plan and self._state is RuntimeState.RUNNING and self._plan is not None):
            return ()
        self._send_plan = False
        assert self._motion is not None and self._schedule is not None
        # Points on the control grid: the same limiting, at the same instants, as the per-tick commands,
        # so what the controller executes and what the runtime tracks (and starts the next one from) agree.
        count = max(1, (self._plan.end_ns - now_ns) // self._control_ns)
        stamps = [now_ns + k * self._control_ns for k in range(1, count + 1)]
        targets = np.asarray([self._schedule.sample(t) for t in stamps])
        states = [self._motion, *self._limiter.limit_path(self._motion, stamps, targets)]
        positions = np.asarray([s.positions for s in states])
        velocities = np.zeros_like(positions)
        velocities[0] = self._motion.velocities
        if len(states) > 2:
            velocities[1:-1] = (positions[2:] - positions[:-2]) / (2 * self._control_ns / 1e9)
        velocities = np.clip(velocities, -self._limiter.max_velocity, self._limiter.max_velocity)
        times = [0, *(t - now_ns for t in stamps)]
        limiter, columns = self._limiter, self._trajectory_columns
        if not cubic_within_limits(positions[:, columns], velocities[:, columns], self._control_ns / 1e9,
                                   limiter.low[columns], limiter.high[columns], limiter.max_velocity[columns]):
            # The controller's cubic through these velocities would leave a limit between two points:
            # send positions only, which it joins with straight segments between limited points.
            velocities = None
            self._counters.add(CLAMPED_TRAJECTORY, CUBIC_TO_LINEAR)
        self._path = TimedPath(np.asarray([now_ns, *stamps], dtype=np.int64), positions, velocities)
        return self._per_trajectory_controller(now_ns, positions, velocities, times)

    def _hold_trajectories(self, now_ns: int) -> tuple[JointTrajectoryCommand, ...]:
        assert self._motion is not None
        positions = self._motion.positions[np.newaxis]
        return self._per_trajectory_controller(now_ns, positions, np.zeros_like(positions), [self._control_ns])

    def _per_trajectory_controller(
        self, now_ns: int, positions: np.ndarray, velocities: np.ndarray | None, times: Sequence[int]
    ) -> tuple[JointTrajectoryCommand, ...]:
        """One command per joint_trajectory controller; ``velocities=None`` sends positions only."""
        commands = []
        for controller, columns in zip(self._config.controllers, self._joint_index, strict=True):
            if controller.type != "joint_trajectory":
                continue
            points = tuple(
                TrajectoryPoint(
                    positions=tuple(float(x) for x in positions[k, columns]),
                    velocities=() if velocities is None else tuple(float(x) for x in velocities[k, columns]),
                    time_from_start_ns=int(times[k]),
                )
                for k in range(len(times))
            )
            commands.append(JointTrajectoryCommand(controller.name, controller.joints, now_ns, points))
        return tuple(commands)

    def _forward_commands(self, now_ns: int) -> tuple[ForwardCommand, ...]:
        assert self._motion is not None
        return tuple(
            ForwardCommand(
                controller=controller.name,
                joint_names=controller.joints,
                values=tuple(float(x) for x in self._motion.positions[columns]),
                stamp_ns=now_ns,
            )
            for controller, columns in zip(self._config.controllers, self._joint_index, strict=True)
            if controller.type == "forward_command"
        )
