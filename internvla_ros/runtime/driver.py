"""The two threads that drive a PolicyRuntime in real time: control and inference.

The control thread sleeps until the runtime's next tick and emits its command; the inference thread
requests observations when due and waits for the policy (in the node: an inference worker process,
so the model's compute and GIL never sit on the control thread). The clock is injected, so the ROS
node drives this with its node clock (sim time included) and the runtime benchmark with the monotonic
clock; both run the same code. No wait is ever longer than one control period of steady time, so a
clock that jumps back or stands still cannot stall either thread.

A worker that leaves a request unanswered for ``inference_timeout_s``, or dies, is killed and started
again while the runtime holds; a thread that fails latches an e-stop and is named in ``failed_threads``.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

from internvla_ros.runtime.commands import ControlOutput
from internvla_ros.runtime.config import NS_PER_S
from internvla_ros.runtime.errors import PolicyRuntimeError
from internvla_ros.runtime.observation import Observation
from internvla_ros.runtime.policy import PolicyResult
from internvla_ros.runtime.scheduler import ChunkResult, PolicyRuntime
from internvla_ros.runtime.status import RuntimeState
from internvla_ros.runtime.worker import InferenceError, InferenceTimeout, WorkerGone

IDLE_POLL_S = 0.005  # how often the inference thread checks for a due observation
JOIN_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0  # longest controlled stop waited for (a joint at 2.6 rad/s and 1 rad/s^2 needs 2.6 s)
STOP_POLL_S = 0.005
STOP_STALL_S = 1.0  # no control tick for this long while stopping: the clock stands still
# How long a thread may hold the GIL while another waits (CPython's default is 5 ms, a quarter of a
# 50 Hz period): the control thread gets the interpreter back within this after it wakes.
GIL_SWITCH_INTERVAL_S = 0.0005
# SCHED_FIFO priority of the control thread, as ros2_control's controller manager uses for its loop:
# on 2 shared cores it keeps the 50 Hz period jitter p99 well under 1 ms while the model infers.
DEFAULT_CONTROL_PRIORITY = 50
HOLD_WORKER_RESTART = "inference_worker_restart"  # the runtime's hold while a hung worker is replaced
MAX_RESTARTS_IN_A_ROW = 3  # a worker that dies this often without answering once is not restarted again

T = TypeVar("T")


class Clock(Protocol):
    """The time the runtime runs on (ROS time in the node, sim time included)."""

    def now_ns(self) -> int: ...

    def sleep_until(self, deadline_ns: int, timeout_s: float) -> None:
        """Returns once this clock reaches deadline_ns, or after timeout_s of steady time, whichever is
        first: a clock that jumped back or stands still (a paused simulation) must not stall the caller."""
        ...


class SteadyClock:
    """The monotonic clock as a Clock (the runtime benchmark, tests)."""

    def now_ns(self) -> int:
        return time.monotonic_ns()

    def sleep_until(self, deadline_ns: int, timeout_s: float) -> None:
        time.sleep(min(max(deadline_ns - self.now_ns(), 0) / NS_PER_S, timeout_s))


class Inference(Protocol):
    """What the inference thread needs of a policy process (InferenceWorker is one)."""

    def infer(self, observation: Observation, timeout_s: float | None = None) -> PolicyResult:
        """Raises InferenceTimeout when no result came within timeout_s, WorkerGone when the process is not
        there to answer, InferenceError when the policy failed on this observation."""
        ...

    def restart(self, cancel: threading.Event | None = None) -> object:
        """Kills the process and starts it again (load and warm-up); raises InferenceError if it cannot, or
        once ``cancel`` is set."""
        ...


@dataclass(frozen=True)
class ChunkEvent:
    """An inference that came back, whatever happened to its chunk."""

    observation: Observation
    result: PolicyResult
    outcome: ChunkResult
    ready_ns: int


class RuntimeDriver:
    """Runs the control and inference threads of one runtime until stop()."""

    def __init__(
        self,
        runtime: PolicyRuntime,
        worker: Inference,
        clock: Clock,
        publish: Callable[[ControlOutput], None],
        on_chunk: Callable[[ChunkEvent], None] = lambda event: None,
        on_problem: Callable[[str, str], None] = lambda key, message: None,
        on_tick: Callable[[int], None] | None = None,
        control_priority: int = 0,
        inference_timeout_s: float | None = None,
        added_latency_s: float = 0.0,
    ) -> None:
        """``control_priority`` > 0 runs the control thread with SCHED_FIFO at that priority (needs
        CAP_SYS_NICE or root; refused permission is reported through on_problem, and the loop goes on).
        ``inference_timeout_s``: how long one inference may take before the worker counts as hung and is
        restarted (None: wait for ever). ``added_latency_s``: each answer is held this long before the runtime
        takes it (evaluation of the execution modes against delay; the runtime measures it as inference time)."""
        if inference_timeout_s is not None and not inference_timeout_s > 0:
            msg = f"inference_timeout_s must be > 0 (or None to wait for ever), got {inference_timeout_s}"
            raise ValueError(msg)
        if not 0.0 <= added_latency_s < float("inf"):
            raise ValueError(f"added_latency_s must be finite and >= 0, got {added_latency_s}")
        self.runtime = runtime
        self._added_latency_s = added_latency_s
        self._worker = worker
        self._inference_timeout_s = inference_timeout_s
        self._clock = clock
        self._publish = publish
        self._on_chunk = on_chunk
        self._on_problem = on_problem
        self._on_tick = on_tick
        self._control_priority = control_priority
        self._stop = threading.Event()
        self._stopping = threading.Event()  # stop() is bringing the robot to rest: do not start it again
        self._threads: list[threading.Thread] = []
        self._failed: list[str] = []
        self._time_lock = threading.Lock()
        self.inference_timeouts = 0  # requests the worker left unanswered for inference_timeout_s
        self.worker_restarts = 0  # workers started again after a timeout or a crash
        self._restarts_in_a_row = 0  # restarts since the last answered request

    @property
    def failed_threads(self) -> tuple[str, ...]:
        """The threads ("control", "inference") that died: their e-stop must not be reset, nothing runs them."""
        return tuple(self._failed)

    def start(self) -> None:
        sys.setswitchinterval(min(sys.getswitchinterval(), GIL_SWITCH_INTERVAL_S))
        self._stop.clear()
        self._threads = [
            threading.Thread(target=self._guarded(self._control_loop, "control"), name="control", daemon=True),
            threading.Thread(target=self._guarded(self._inference_loop, "inference"), name="inference",
                             daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def stop(self, hold: Callable[[], None] | None = None, cause: str = "deactivate") -> None:
        """Brings the robot to rest with the controlled stop (the control thread keeps ticking until every
        joint is at rest, at most STOP_TIMEOUT_S), then ends both threads.

        ``hold`` runs only when the stop could not finish that way (no control thread, or it timed out): it
        sends what it can at once. An inference in flight is not waited for; its late chunk is dropped.
        """
        control = self._threads[0] if self._threads else None
        if control is not None and control.is_alive() and "control" not in self._failed:
            self._stopping.set()
            self.at_now(lambda now: self.runtime.request_stop(now, cause))
            deadline = time.monotonic() + STOP_TIMEOUT_S
            last_tick, last_progress = self.runtime.next_tick_ns, time.monotonic()
            while self.runtime.state is not RuntimeState.IDLE and control.is_alive() and time.monotonic() < deadline:
                time.sleep(STOP_POLL_S)
                if self.runtime.next_tick_ns != last_tick:
                    last_tick, last_progress = self.runtime.next_tick_ns, time.monotonic()
                elif time.monotonic() - last_progress > STOP_STALL_S:
                    break  # the clock stands still (sim time paused): no tick will come; send what we can
        self._stop.set()
        for thread in self._threads[:1]:
            thread.join(JOIN_TIMEOUT_S)
        if hold is not None and self.runtime.state is not RuntimeState.IDLE:
            hold()
        for thread in self._threads[1:]:
            thread.join(JOIN_TIMEOUT_S)
        self._threads = []
        self._stopping.clear()

    def clock_jumped(self) -> None:
        """The clock jumped back (call it after the jump): the runtime moves to the new time line. No thread
        can read the old time and hand it to the runtime after this."""
        with self._time_lock:
            self.runtime.clock_jumped(self._clock.now_ns())

    def at_now(self, call: Callable[[int], T]) -> T:
        """``call(now)``, reading the clock and calling as one step with respect to clock_jumped(): an input
        handed over this way can never carry a time read before a jump into the runtime after it."""
        with self._time_lock:
            return call(self._clock.now_ns())

    def _raise_priority(self) -> None:
        if self._control_priority <= 0:
            return
        try:
            os.sched_setscheduler(threading.get_native_id(), os.SCHED_FIFO, os.sched_param(self._control_priority))
        except (OSError, AttributeError) as err:
            self._on_problem("priority", f"control thread keeps normal priority: SCHED_FIFO "
                                         f"{self._control_priority} refused ({err}); grant CAP_SYS_NICE or set 0")

    def _guarded(self, loop: Callable[[], None], name: str) -> Callable[[], None]:
        """A loop that cannot die silently: an unexpected error latches an e-stop and is reported."""

        def run() -> None:
            try:
                loop()
            except Exception as err:  # any bug here must stop the robot, not just print a traceback
                message = f"{name} thread failed: {type(err).__name__}: {err}"
                self._failed.append(name)
                self.runtime.estop(message)
                if name == "control":  # nobody else will command the stop: run it from here
                    try:
                        self._finish_stop(message)
                    except Exception as stop_err:
                        message += f"; the controlled stop failed too ({stop_err}): hold sent at once"
                        output = self.runtime.hold_and_stop(self._clock.now_ns())
                        if output is not None:
                            self._publish(output)
                self._on_problem(f"{name}-failed", f"{message}; e-stop latched")

        return run

    def _finish_stop(self, cause: str) -> None:
        """Ticks the controlled stop to its end (the control loop died: this is its last duty)."""
        runtime, clock = self.runtime, self._clock
        period_s = runtime.config.rates.control_period_ns / NS_PER_S
        self.at_now(lambda now: runtime.request_stop(now, cause))
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while runtime.state is not RuntimeState.IDLE and time.monotonic() < deadline:
            clock.sleep_until(runtime.next_tick_ns, period_s)
            output = self.at_now(runtime.tick)
            if output is not None:
                self._publish(output)
        if runtime.state is not RuntimeState.IDLE:
            msg = f"not at rest after {STOP_TIMEOUT_S} s"
            raise PolicyRuntimeError(msg)

    def _control_loop(self) -> None:
        self._raise_priority()
        runtime, clock = self.runtime, self._clock
        period_ns = runtime.config.rates.control_period_ns
        period_s = period_ns / NS_PER_S
        held = False
        while not self._stop.is_set():
            if runtime.state is RuntimeState.IDLE and self._stopping.is_set():
                self._stop.wait(period_s)  # stopped on request: wait for stop() to end the thread
                continue
            if runtime.state is RuntimeState.IDLE:
                try:
                    self.at_now(runtime.start)
                except PolicyRuntimeError as err:
                    self._on_problem("start", f"waiting to start: {err}")
                    self._stop.wait(period_s)
                    continue
            clock.sleep_until(runtime.next_tick_ns, period_s)
            output = self.at_now(runtime.tick)
            if output is not None:
                if self._on_tick is not None:
                    self._on_tick(output.stamp_ns)
                self._publish(output)
                if (output.state == RuntimeState.HOLDING.value) != held:  # say why it holds, and how it resumed
                    held = not held
                    reason = runtime.status(output.stamp_ns).last_error
                    if held or reason.startswith("resumed"):
                        self._on_problem("hold" if held else "resume", f"holding: {reason}" if held else reason)

    def _inference_loop(self) -> None:
        runtime = self.runtime
        while not self._stop.is_set():
            observation = self.at_now(runtime.poll_observation)
            if observation is None:
                self._stop.wait(IDLE_POLL_S)
                continue
            try:
                result = self._worker.infer(observation, self._inference_timeout_s)
            except (InferenceTimeout, WorkerGone) as err:
                runtime.report_inference_failure(observation.stamp_ns, str(err))
                self.inference_timeouts += isinstance(err, InferenceTimeout)
                self._restart_worker(str(err))
                continue
            except PolicyRuntimeError as err:
                runtime.report_inference_failure(observation.stamp_ns, str(err))
                self._on_problem("inference", f"inference failed, holding: {err}")
                continue
            self._restarts_in_a_row = 0
            if self._added_latency_s and self._stop.wait(self._added_latency_s):
                break
            with self._time_lock:
                ready_ns = self._clock.now_ns()
                outcome = runtime.submit_chunk(result.actions, observation.stamp_ns, ready_ns)
            if not outcome.accepted:
                self._on_problem("chunk", f"chunk not executed: {outcome.reason}")
            self._on_chunk(ChunkEvent(observation, result, outcome, ready_ns))

    def _restart_worker(self, cause: str) -> None:
        """Replaces a worker that did not answer or died (it loads and warms up again) while the robot holds.
        A worker that cannot be started again, or dies again and again, fails the inference thread (e-stop)."""
        if self._restarts_in_a_row >= MAX_RESTARTS_IN_A_ROW:
            msg = f"the inference worker failed {self._restarts_in_a_row + 1} times in a row; last: {cause}"
            raise InferenceError(msg)
        reason = f"inference worker restarting: {cause}"
        self.runtime.hold_for(HOLD_WORKER_RESTART, reason)
        self._on_problem("worker-restart", f"{reason}; holding until it is ready again")
        try:
            self._worker.restart(cancel=self._stop)
        except PolicyRuntimeError as err:
            if self._stop.is_set():  # stopping: the worker stays down; the next start() restarts it
                self.runtime.release_hold(HOLD_WORKER_RESTART)
                return
            msg = f"the inference worker could not be restarted after '{cause}': {err}"
            raise InferenceError(msg) from err
        self.worker_restarts += 1
        self._restarts_in_a_row += 1
        self.runtime.release_hold(HOLD_WORKER_RESTART)
        self._on_problem("worker-restarted", f"inference worker restarted after '{cause}': resuming")
