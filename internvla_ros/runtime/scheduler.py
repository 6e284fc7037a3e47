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

The parts: inputs (runtime/inputs.py), chunk scheduling and its execution modes (runtime/chunks.py,
runtime/execution.py), the commanded motion and its stop (runtime/control.py), the commands
(runtime/command_output.py), the state decision (runtime/supervisor.py) and the status
(runtime/runtime_status.py); this class runs the state machine and serialises the calls.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from internvla_ros.runtime.chunks import ChunkResult, ChunkScheduler
from internvla_ros.runtime.command_output import CommandOutput
from internvla_ros.runtime.commands import ControlOutput
from internvla_ros.runtime.config import RuntimeConfig
from internvla_ros.runtime.control import MotionControl
from internvla_ros.runtime.errors import PolicyRuntimeError
from internvla_ros.runtime.gripper_latch import GripperLatch
from internvla_ros.runtime.inputs import InputBuffers
from internvla_ros.runtime.mapping import ActionMapper
from internvla_ros.runtime.observation import Observation
from internvla_ros.runtime.resume_guard import ResumeGuard
from internvla_ros.runtime.runtime_status import (
    TIMING,
    TIMING_FAILURES,
    TIMING_MISSED_TICKS,
    RuntimeMeters,
    runtime_status,
)
from internvla_ros.runtime.safety import EventCounters, MotionLimiter
from internvla_ros.runtime.status import RuntimeState, RuntimeStatus
from internvla_ros.runtime.supervisor import Supervisor

__all__ = ["ChunkResult", "PolicyRuntime"]


class PolicyRuntime:
    """Schedules observations, adopts chunks with delay compensation and blending, emits safe commands."""

    def __init__(self, config: RuntimeConfig, mapper: ActionMapper) -> None:
        self._config = config
        self._mapper = mapper
        self._counters = EventCounters()
        self._meters = RuntimeMeters()
        self._limiter = MotionLimiter(config, self._counters)
        self._inputs = InputBuffers(config, mapper, self._counters)
        self._control = MotionControl(config, self._limiter)
        self._chunks = ChunkScheduler(config, mapper, self._counters, self._meters)
        self._commands = CommandOutput(config, self._control)
        self._gripper_latch = GripperLatch(config)
        self._supervisor = Supervisor(config, self._inputs, self._limiter, self._counters)
        self._gate = self._supervisor.gate
        self._lock = threading.RLock()
        self._control_ns = config.rates.control_period_ns
        limiter = self._limiter
        self._resume_guard = ResumeGuard(config.joint_names, self._control.trajectory_columns, limiter.max_jump,
                                         limiter.max_acceleration, self._control_ns)

        self._state = RuntimeState.IDLE
        self._instruction = ""
        self._next_tick_ns = 0
        self._last_tick_ns: int | None = None
        self._last_error = ""

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

    def update_joint_state(self, stamp_ns: int, names: Sequence[str], positions: Sequence[float],
                           velocities: Sequence[float] | None = None, now_ns: int | None = None) -> bool:
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

    def start(self, now_ns: int) -> None:
        """Starts from the measured joint positions, at rest; needs every input fresh and every joint inside
        its limits (a robot outside them is not started: the error names the joint, value and limit)."""
        with self._lock:
            values = self._supervisor.start_position(now_ns)
            self._control.start(values, now_ns - self._control_ns)
            assert self._control.state is not None
            self._chunks.start(self._control.state.positions, now_ns)
            self._supervisor.stop_cause = None
            self._supervisor.stale_now = ()
            self._commands.discard_path()
            self._state = RuntimeState.RUNNING
            self._next_tick_ns = now_ns

    def stop(self) -> None:
        """Back to idle at once: nothing is commanded until start(). Use request_stop() to stop moving first."""
        with self._lock:
            self._state = RuntimeState.IDLE
            self._chunks.clear()
            self._supervisor.stop_cause = None
            self._commands.discard_path()

    def request_stop(self, now_ns: int, cause: str) -> None:
        """A controlled stop, then idle once every joint is at rest (deactivate, shutdown); ticks go on."""
        with self._lock:
            if self._state is not RuntimeState.IDLE:
                self._supervisor.stop_cause = cause
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
            self._supervisor.holds[key] = reason or key
            self._last_error = f"holding: {reason or key}"

    def release_hold(self, key: str) -> None:
        with self._lock:
            self._supervisor.holds.pop(key, None)

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
            self._supervisor.set_dry_run(dry_run, self._state is RuntimeState.IDLE, self._restart_actuation)

    def _restart_actuation(self) -> None:
        if self._control.state is None:
            return
        values = self._supervisor.start_position()
        stamp_ns = self._control.state.stamp_ns
        self._control.start(values, stamp_ns)
        self._chunks.hold(self._control.state.positions, stamp_ns)

    def clock_jumped(self, now_ns: int) -> None:
        """ROS time jumped back: every stored time moves to the new time line, the inputs are forgotten (so the
        runtime holds until fresh ones arrive) and a controlled stop starts."""
        with self._lock:
            self._inputs.clear()
            self._chunks.forget_requests()
            if self._state is RuntimeState.IDLE or self._last_tick_ns is None:
                return
            offset = now_ns - self._last_tick_ns
            self._control.shift(offset)
            self._last_tick_ns += offset
            self._next_tick_ns += offset
            assert self._control.state is not None
            self._chunks.shift(offset, self._control.state.positions)
            self._last_error = f"clock jumped back by {-offset / 1e9:.3f} s: inputs restarted"

    # Inference ------------------------------------------------------------------------------------

    def poll_observation(self, now_ns: int) -> Observation | None:
        """The observation to infer on, when one is due; the runtime then waits for its chunk."""
        with self._lock:
            self._check_inference(now_ns)
            if not self._observation_due(now_ns):
                return None
            observation = self._chunks.request(now_ns, self._inputs, self._instruction)
            self._note(self._chunks.last_error)
            return observation

    def report_inference_failure(self, obs_stamp_ns: int, message: str) -> None:
        """The policy raised: counted and reported; the next observation is requested on schedule."""
        with self._lock:
            self._counters.add(TIMING, TIMING_FAILURES)
            self._last_error = f"inference failed: {message}"
            self._chunks.failed(obs_stamp_ns)

    def submit_chunk(self, actions: np.ndarray, obs_stamp_ns: int, ready_ns: int) -> ChunkResult:
        """Hands back a chunk computed from the observation stamped ``obs_stamp_ns``, at ``ready_ns``."""
        with self._lock:
            result = self._chunks.submit(actions, obs_stamp_ns, ready_ns, running=self._state is RuntimeState.RUNNING,
                                         last_tick_ns=self._last_tick_ns)
            self._note(self._chunks.last_error)
            return result

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
            control, chunks = self._control, self._chunks
            if self._state is RuntimeState.RUNNING:
                assert chunks.schedule is not None
                chunks.schedule = chunks.schedule.settle(grid_ns)
                plan = chunks.take_new_plan()
                if plan is not None and control.plan(grid_ns, plan.end_ns, chunks.schedule.sample) is not None:
                    self._commands.send_path()
                target = self._gripper_latch.apply(chunks.schedule.sample(grid_ns), grid_ns)
                reasons = control.follow(target, grid_ns).reasons
            else:
                self._gripper_latch.reset()
                control.stop_tick(grid_ns)
                reasons = frozenset()
            self._last_tick_ns = grid_ns
            self._meters.control_ticks += 1
            self._meters.control_rate.add(grid_ns)
            output = self._output(grid_ns, reasons)
            if self._state is RuntimeState.STOPPING and control.at_rest(grid_ns):
                self.stop()
            return output

    def status(self, now_ns: int) -> RuntimeStatus:
        with self._lock:
            switches = self._supervisor.switches(self._state, self._config.execution.mode, self._last_error)
            return runtime_status(now_ns, switches, self._meters, self._counters)

    # Internals ------------------------------------------------------------------------------------

    def _note(self, error: str) -> None:
        """Reports ``error`` as the last error, unless it is empty."""
        if error:
            self._last_error = error

    def _check_inference(self, now_ns: int) -> None:
        self._chunks.check(now_ns)
        self._note(self._chunks.last_error)

    def _observation_due(self, now_ns: int) -> bool:
        if self._state is not RuntimeState.RUNNING or not self._supervisor.may_observe(now_ns):
            return False
        # Without an instruction a language-conditioned policy has nothing to do yet.
        return bool(self._instruction.strip()) and self._chunks.due(now_ns)

    def _update_state(self, now_ns: int) -> None:
        state = self._supervisor.state_at(now_ns, self._control)
        if self._supervisor.stale_now:
            described = self._inputs.watchdog.describe(self._supervisor.stale_now, now_ns)
            self._last_error = f"stale input: {described}"
        if state is RuntimeState.RUNNING and self._state is not RuntimeState.RUNNING and not self._may_resume(now_ns):
            state = RuntimeState.HOLDING
        if state is self._state:
            return
        if self._state is RuntimeState.RUNNING:
            self._begin_stop(now_ns)
        elif state is RuntimeState.RUNNING:
            assert self._control.state is not None
            self._chunks.hold(self._control.state.positions, now_ns, infer_now=True)
        self._state = state

    def _may_resume(self, now_ns: int) -> bool:
        """After a hold the motion resumes once the measured trajectory joints are still: from the commanded state
        when they are within their max jump of it (a tracking error is the controller's own), else from where
        they were measured (resume_guard.py: a stalled controller may not have run the last trajectories). With
        nothing sent since a (re)start, the commanded state is only an earlier measurement, perhaps a stale one
        taken while someone else moved the arm: the motion starts from the newest. The forward joints go on from
        their commands, which their controllers hold."""
        if self._gate.dry_run:
            return True  # nothing was sent: the robot stood still on purpose
        values, stamp_ns = self._inputs.joint_values, self._inputs.joint_stamp_ns
        guard = self._resume_guard
        if values is None or stamp_ns is None or not guard.still(stamp_ns, values):
            return False
        guard.reset()
        if not self._control.sent_since_start:
            return self._restart_from_measurement("")
        divergence = guard.divergence(values, self._control.commanded_at(stamp_ns))
        if divergence is None:
            return True
        return self._restart_from_measurement(f"resumed from the measured joints: {divergence.describe()}")

    def _restart_from_measurement(self, message: str) -> bool:
        """The trajectory joints restart at rest where they were measured; False (holding) when refused."""
        try:
            positions = self._supervisor.start_position()
        except PolicyRuntimeError as err:
            self._last_error = str(err)
            return False
        self._note(message)
        self._control.restart_trajectory_joints(positions)
        self._commands.discard_path()
        return True

    def _begin_stop(self, now_ns: int) -> None:
        """The controlled stop from the commanded motion; its trajectory goes out with this tick."""
        self._chunks.drop_plan()
        if self._control.begin_stop(now_ns) is not None:
            self._commands.send_path()

    def _output(self, now_ns: int, clamped: frozenset[str]) -> ControlOutput:
        return self._commands.output(now_ns, self._state, clamped, self._gate.dry_run)
