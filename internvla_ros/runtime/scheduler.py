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

Ticks sit on a fixed grid (start + k * control period); commands are stamped with their grid time, so the
trajectories sent to the controllers line up exactly. Every way out of RUNNING (pause, e-stop, stale input, a
fault held with ``hold_for``, ``request_stop``, dry-run switched on, a backward clock jump) starts the same
controlled stop (runtime/stop.py); ``request_stop`` ends in IDLE once every joint is at rest.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
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
from internvla_ros.runtime.control import MotionControl
from internvla_ros.runtime.errors import MappingError, PolicyRuntimeError
from internvla_ros.runtime.inputs import InputBuffers
from internvla_ros.runtime.mapping import ActionMapper
from internvla_ros.runtime.observation import Observation
from internvla_ros.runtime.plan import ChunkPlan, HoldSchedule, Schedule, hand_over
from internvla_ros.runtime.safety import (
    CLAMPED,
    CLAMPED_TRAJECTORY,
    REJECTED,
    STALE,
    EventCounters,
    MotionLimiter,
    SafetyGate,
)
from internvla_ros.runtime.status import (
    REJECT_JOINT_STATE,
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

RECENT_REQUESTS = 8  # observations whose chunks are still accepted (identified by their stamp)
START_TOLERANCE = 1e-4  # a joint measured this far outside its limits is started from the limit
HOLD_DRY_RUN = "switching to dry run: stopping before commands are silenced"


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
        self._inputs = InputBuffers(config, mapper, self._counters)
        self._control = MotionControl(config, self._limiter)
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
        self._joint_index = [[config.joint_index[j] for j in c.joints] for c in config.controllers]

        self._state = RuntimeState.IDLE
        self._instruction = ""
        self._schedule: Schedule | None = None
        self._plan: ChunkPlan | None = None
        self._request: _Request | None = None
        # Observation stamp -> (its model state, when it was requested), for the chunks still accepted.
        self._recent: OrderedDict[int, tuple[np.ndarray, int]] = OrderedDict()
        self._holds: dict[str, str] = {}  # faults held with hold_for(): key -> reason
        self._stop_cause: str | None = None  # request_stop(): stop, then idle
        self._resume_ns = 0
        self._next_tick_ns = 0
        self._next_inference_ns = 0
        self._next_foresight_ns = 0
        self._next_preview_ns = 0
        self._last_tick_ns: int | None = None
        self._send_plan = False
        self._pending_path = False  # a trajectory (plan or stop) waits to be sent at the next tick
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
        now_ns: int | None = None,
    ) -> bool:
        """Feeds /joint_states. A bad message (or one stamped too far in the future of ``now_ns``) is counted
        and reported, and does not refresh the watchdog."""
        with self._lock:
            accepted = self._inputs.update_joint_state(stamp_ns, names, positions, velocities, now_ns)
            if not accepted:
                self._last_error = self._inputs.last_error
            return accepted

    def update_camera(self, name: str, stamp_ns: int, image: Any, now_ns: int | None = None) -> bool:
        with self._lock:
            accepted = self._inputs.update_camera(name, stamp_ns, image, now_ns)
            if not accepted:
                self._last_error = self._inputs.last_error
            return accepted

    def set_instruction(self, instruction: str) -> None:
        """The task for the next observations; until one is set, no observation is requested (hold)."""
        with self._lock:
            self._instruction = instruction

    # Lifecycle and operator switches --------------------------------------------------------------

    def _measured_start(self) -> np.ndarray:
        """The measured joints, refused (with the joint, value and limit) when outside the limits."""
        values = self._inputs.joint_values
        if values is None:
            msg = "cannot start: no joint state received yet"
            raise PolicyRuntimeError(msg)
        outside = self._limiter.outside_limits(values, START_TOLERANCE)
        if outside:
            names = self._config.joint_names
            details = "; ".join(f"{names[int(item.split(':')[0])]}{item[item.index(':'):]}" for item in outside)
            msg = (f"cannot start: joints measured outside their limits ({details}); move them inside with the "
                   "robot's own tools, or correct the limits in the robot config")
            raise PolicyRuntimeError(msg)
        return values

    def start(self, now_ns: int) -> None:
        """Starts from the measured joint positions, at rest; needs every input fresh and every joint inside
        its limits (a robot outside them is not started: the error names the joint, value and limit)."""
        with self._lock:
            values = self._measured_start()
            stale = self._inputs.watchdog.stale(now_ns)
            if stale:
                msg = f"cannot start: waiting for fresh {', '.join(stale)}"
                raise PolicyRuntimeError(msg)
            self._control.start(values, now_ns - self._control_ns)
            self._schedule = HoldSchedule(self._control.state.positions.copy())
            self._plan = None
            self._request = None
            self._stop_cause = None
            self._pending_path = False
            self._state = RuntimeState.RUNNING
            self._resume_ns = now_ns
            self._next_tick_ns = now_ns
            self._next_inference_ns = now_ns
            self._next_foresight_ns = now_ns
            self._next_preview_ns = now_ns
            self._stale_now = ()

    def stop(self) -> None:
        """Back to idle at once: nothing is commanded until start(). Use request_stop() to stop moving first."""
        with self._lock:
            self._state = RuntimeState.IDLE
            self._request = None
            self._plan = None
            self._schedule = None
            self._stop_cause = None
            self._pending_path = False

    def request_stop(self, now_ns: int, cause: str) -> None:
        """A controlled stop, then idle once every joint is at rest (deactivate, shutdown); ticks go on."""
        with self._lock:
            if self._state is not RuntimeState.IDLE:
                self._stop_cause = cause
                self._last_error = f"stopping: {cause}"

    def hold_and_stop(self, now_ns: int) -> ControlOutput | None:
        """For when no more ticks can follow (the control thread died): the trajectory controllers get the
        whole controlled stop at once, the forward controllers the stop's first step; then idle.

        None when already idle.
        """
        with self._lock:
            if self._state is RuntimeState.IDLE or self._control.state is None:
                return None
            stamp_ns = max(self._next_tick_ns, self._control.state.stamp_ns + 1)
            self._begin_stop(stamp_ns)
            self._control.stop_tick(stamp_ns)
            output = self._output(stamp_ns, frozenset())
            self.stop()
            return output

    def hold_for(self, key: str, reason: str = "") -> None:
        """Holds (after a controlled stop) until release_hold(key): a worker restarting, a clock jump, ..."""
        with self._lock:
            self._holds[key] = reason or key
            self._last_error = f"holding: {reason or key}"

    def release_hold(self, key: str) -> None:
        with self._lock:
            self._holds.pop(key, None)

    def pause(self) -> None:
        with self._lock:
            self._gate.pause()

    def resume(self) -> None:
        with self._lock:
            self._gate.resume()

    def estop(self, reason: str) -> None:
        """Latches until reset_estop(); the controlled stop starts at the next tick."""
        with self._lock:
            self._gate.estop(reason)

    def reset_estop(self) -> None:
        with self._lock:
            self._gate.reset_estop()

    def set_dry_run(self, dry_run: bool) -> None:
        """Switches actuation. On: the robot is stopped under control first, then commands are silenced.
        Off: the motion restarts from the measured joints, at rest (during a dry run the computed command moved
        on while the robot stood still); refused like start() when a joint is outside its limits."""
        with self._lock:
            if dry_run and not self._gate.dry_run:
                if self._state is RuntimeState.IDLE:
                    self._gate.dry_run = True
                else:
                    self._holds[HOLD_DRY_RUN] = HOLD_DRY_RUN  # silenced at rest, in _update_state
                return
            if not dry_run and self._holds.pop(HOLD_DRY_RUN, None) is not None:
                return  # the stop before the silence was still running: actuation simply continues
            if not dry_run and self._gate.dry_run and self._control.state is not None:
                values = self._measured_start()
                stamp_ns = self._control.state.stamp_ns
                self._control.start(values, stamp_ns)
                self._schedule = HoldSchedule(self._control.state.positions.copy())
                self._plan = None
                self._resume_ns = stamp_ns
            self._gate.dry_run = dry_run

    def clock_jumped(self, now_ns: int) -> None:
        """ROS time jumped back: every stored time moves to the new time line, the inputs are forgotten (so the
        runtime holds until fresh ones arrive) and a controlled stop starts."""
        with self._lock:
            self._inputs.clear()
            self._recent.clear()
            self._request = None
            if self._state is RuntimeState.IDLE or self._last_tick_ns is None:
                return
            offset = now_ns - self._last_tick_ns
            self._control.shift(offset)
            self._last_tick_ns += offset
            self._next_tick_ns += offset
            self._next_inference_ns += offset
            self._next_foresight_ns += offset
            self._next_preview_ns += offset
            self._resume_ns += offset
            self._plan = None
            self._schedule = HoldSchedule(self._control.state.positions.copy())
            self._last_error = f"clock jumped back by {-offset / 1e9:.3f} s: inputs restarted"

    # Inference ------------------------------------------------------------------------------------

    def poll_observation(self, now_ns: int) -> Observation | None:
        """The observation to infer on, when one is due; the runtime then waits for its chunk."""
        with self._lock:
            self._check_inference(now_ns)
            if not self._observation_due(now_ns):
                return None
            inputs = self._inputs
            assert inputs.model_state is not None and inputs.joint_stamp_ns is not None
            try:
                normalized = self._mapper.normalized_state(inputs.model_state)
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
                stamp_ns=inputs.joint_stamp_ns,
                request_ns=now_ns,
                cameras=inputs.camera_frames(),
                state=inputs.model_state.copy(),
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
        """At most one command per control period, stamped with its grid time; None between periods and
        when idle."""
        with self._lock:
            if self._state is RuntimeState.IDLE or now_ns < self._next_tick_ns:
                return None
            missed = (now_ns - self._next_tick_ns) // self._control_ns
            if missed:
                self._counters.add(TIMING, TIMING_MISSED_TICKS, missed)
            grid_ns = self._next_tick_ns + missed * self._control_ns
            self._next_tick_ns = grid_ns + self._control_ns
            self._check_inference(now_ns)
            self._update_state(grid_ns)
            control = self._control
            if self._state is RuntimeState.RUNNING:
                assert self._schedule is not None
                self._schedule = self._schedule.settle(grid_ns)
                if self._send_plan and self._plan is not None:
                    self._send_plan = False
                    schedule = self._schedule
                    control.plan(grid_ns, self._plan.end_ns, schedule.sample)
                    self._pending_path = bool(control.trajectory_columns.size)
                reasons = control.follow(self._schedule.sample(grid_ns), grid_ns).reasons
            else:
                control.stop_tick(grid_ns)
                reasons = frozenset()
            self._last_tick_ns = grid_ns
            self._control_ticks += 1
            self._control_rate.add(grid_ns)
            output = self._output(grid_ns, reasons)
            if self._state is RuntimeState.STOPPING and control.at_rest(grid_ns):
                self.stop()
            return output

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
                holds=tuple(self._holds.values()) + ((f"stopping: {self._stop_cause}",) if self._stop_cause else ()),
            )

    # Internals ------------------------------------------------------------------------------------

    def _overruns_apply(self) -> bool:
        """In 'reference' mode the robot waits for each chunk: there is no inference period to overrun."""
        return self._config.execution.mode != "reference"

    def _observation_due(self, now_ns: int) -> bool:
        if self._state is not RuntimeState.RUNNING or self._request is not None:
            return False
        if self._inputs.model_state is None or self._gate.paused or self._gate.estopped:
            return False
        if not self._instruction.strip():  # a language-conditioned policy has nothing to do yet
            return False
        if self._inputs.watchdog.stale(now_ns) or not self._inputs.all_cameras_seen():
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
        stale = self._inputs.watchdog.stale(now_ns)
        for source in set(stale) - set(self._stale_now):
            self._counters.add(STALE, source)
        if stale:
            self._last_error = f"stale input: {', '.join(stale)}"
        self._stale_now = stale
        if HOLD_DRY_RUN in self._holds and self._control.stopping and self._control.at_rest(now_ns):
            del self._holds[HOLD_DRY_RUN]  # at rest: from now on nothing is sent
            self._gate.dry_run = True
        if self._stop_cause is not None:
            state = RuntimeState.STOPPING
        elif self._gate.estopped:
            state = RuntimeState.ESTOPPED
        elif self._gate.paused:
            state = RuntimeState.PAUSED
        elif stale or self._holds:
            state = RuntimeState.HOLDING
        else:
            state = RuntimeState.RUNNING
        if state is self._state:
            return
        if self._state is RuntimeState.RUNNING:
            self._begin_stop(now_ns)
        elif state is RuntimeState.RUNNING:
            assert self._control.state is not None
            self._resume_ns = now_ns
            self._next_inference_ns = now_ns
            self._schedule = HoldSchedule(self._control.state.positions.copy())
        self._state = state

    def _begin_stop(self, now_ns: int) -> None:
        """The controlled stop from the commanded motion; its trajectory goes out with this tick."""
        self._send_plan = False
        self._plan = None
        if self._control.begin_stop(now_ns) is not None:
            self._pending_path = True

    def _output(self, now_ns: int, clamped: frozenset[str]) -> ControlOutput:
        state = self._control.state
        assert state is not None
        trajectories = self._trajectories(now_ns)
        forward = self._forward_commands(now_ns)
        dry_run = self._gate.dry_run
        return ControlOutput(
            stamp_ns=now_ns,
            state=self._state.value,
            joint_names=self._config.joint_names,
            positions=tuple(float(x) for x in state.positions),
            velocities=tuple(float(x) for x in state.velocities),
            forward=() if dry_run else forward,
            trajectories=() if dry_run else trajectories,
            clamped=clamped,
            dry_run=dry_run,
        )

    def _trajectories(self, now_ns: int) -> tuple[JointTrajectoryCommand, ...]:
        """The new path for every joint_trajectory controller, once, from this tick on."""
        path = self._control.path
        if not self._pending_path or path is None:
            return ()
        self._pending_path = False
        keep = path.stamps_ns >= now_ns
        times = [int(t - now_ns) for t in path.stamps_ns[keep]]
        return self._per_trajectory_controller(now_ns, path.positions[keep], path.velocities[keep], times)

    def _per_trajectory_controller(
        self, now_ns: int, positions: np.ndarray, velocities: np.ndarray, times: Sequence[int]
    ) -> tuple[JointTrajectoryCommand, ...]:
        commands = []
        for controller, columns in zip(self._config.controllers, self._joint_index, strict=True):
            if controller.type != "joint_trajectory":
                continue
            points = tuple(
                TrajectoryPoint(
                    positions=tuple(float(x) for x in positions[k, columns]),
                    velocities=tuple(float(x) for x in velocities[k, columns]),
                    time_from_start_ns=int(times[k]),
                )
                for k in range(len(times))
            )
            commands.append(JointTrajectoryCommand(controller.name, controller.joints, now_ns, points))
        return tuple(commands)

    def _forward_commands(self, now_ns: int) -> tuple[ForwardCommand, ...]:
        state = self._control.state
        assert state is not None
        return tuple(
            ForwardCommand(
                controller=controller.name,
                joint_names=controller.joints,
                values=tuple(float(x) for x in state.positions[columns]),
                stamp_ns=now_ns,
            )
            for controller, columns in zip(self._config.controllers, self._joint_index, strict=True)
            if controller.type == "forward_command"
        )
