"""The two threads that drive a PolicyRuntime in real time: control and inference.

The control thread sleeps until the runtime's next tick and emits its command; the inference thread
requests observations when due and waits for the policy (in the node: an inference worker process,
so the model's compute and GIL never sit on the control thread). The clock is injected, so the ROS
node drives this with its node clock (sim time included) and the runtime benchmark with the monotonic
clock; both run the same code.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from internvla_ros.runtime.commands import ControlOutput
from internvla_ros.runtime.config import NS_PER_S
from internvla_ros.runtime.errors import PolicyRuntimeError
from internvla_ros.runtime.observation import Observation
from internvla_ros.runtime.policy import PolicyResult
from internvla_ros.runtime.scheduler import ChunkResult, PolicyRuntime
from internvla_ros.runtime.status import RuntimeState

IDLE_POLL_S = 0.005  # how often the inference thread checks for a due observation
JOIN_TIMEOUT_S = 30.0
# How long a thread may hold the GIL while another waits (CPython's default is 5 ms, a quarter of a
# 50 Hz period): the control thread gets the interpreter back within this after it wakes.
GIL_SWITCH_INTERVAL_S = 0.0005
# SCHED_FIFO priority of the control thread, as ros2_control's controller manager uses for its loop:
# on 2 shared cores it keeps the 50 Hz period jitter p99 well under 1 ms while the model infers.
DEFAULT_CONTROL_PRIORITY = 50


class Clock(Protocol):
    def now_ns(self) -> int: ...

    def sleep_until(self, deadline_ns: int) -> None:
        """Returns at (or just after) deadline_ns; may return early only on shutdown."""
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
        infer: Callable[[Observation], PolicyResult],
        clock: Clock,
        publish: Callable[[ControlOutput], None],
        on_chunk: Callable[[ChunkEvent], None] = lambda event: None,
        on_problem: Callable[[str, str], None] = lambda key, message: None,
        on_tick: Callable[[int], None] | None = None,
        control_priority: int = 0,
    ) -> None:
        """``control_priority`` > 0 runs the control thread with SCHED_FIFO at that priority (needs
        CAP_SYS_NICE or root; refused permission is reported through on_problem, and the loop goes on)."""
        self.runtime = runtime
        self._infer = infer
        self._clock = clock
        self._publish = publish
        self._on_chunk = on_chunk
        self._on_problem = on_problem
        self._on_tick = on_tick
        self._control_priority = control_priority
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

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

    def stop(self, hold: Callable[[], None] | None = None) -> None:
        """Stops the control thread, runs ``hold`` (the last command), then waits for the inference thread.

        The hold does not wait for an inference in flight (seconds for a large model on a CPU); the late
        chunk is then dropped by the runtime, which is no longer running.
        """
        self._stop.set()
        control, *others = self._threads or [None]
        if control is not None:
            control.join(JOIN_TIMEOUT_S)
        if hold is not None:
            hold()
        for thread in others:
            thread.join(JOIN_TIMEOUT_S)
        self._threads = []

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
                self.runtime.estop(message)
                if name == "control":  # nobody else will command the hold: send it from here, once
                    try:
                        output = self.runtime.hold_and_stop(self._clock.now_ns())
                        if output is not None:
                            self._publish(output)
                    except Exception as hold_err:
                        message += f"; the hold could not be sent either: {hold_err}"
                self._on_problem(f"{name}-failed", f"{message}; e-stop latched")

        return run

    def _control_loop(self) -> None:
        self._raise_priority()
        runtime, clock = self.runtime, self._clock
        period_ns = runtime.config.rates.control_period_ns
        while not self._stop.is_set():
            now_ns = clock.now_ns()
            if runtime.state is RuntimeState.IDLE:
                try:
                    runtime.start(now_ns)
                except PolicyRuntimeError as err:
                    self._on_problem("start", f"waiting to start: {err}")
                    self._stop.wait(period_ns / NS_PER_S)
                    continue
            clock.sleep_until(max(runtime.next_tick_ns, now_ns - period_ns))
            tick_ns = clock.now_ns()
            output = runtime.tick(tick_ns)
            if output is not None:
                if self._on_tick is not None:
                    self._on_tick(tick_ns)
                self._publish(output)

    def _inference_loop(self) -> None:
        runtime, clock = self.runtime, self._clock
        while not self._stop.is_set():
            observation = runtime.poll_observation(clock.now_ns())
            if observation is None:
                self._stop.wait(IDLE_POLL_S)
                continue
            try:
                result = self._infer(observation)
            except PolicyRuntimeError as err:
                runtime.report_inference_failure(observation.stamp_ns, str(err))
                self._on_problem("inference", f"inference failed, holding: {err}")
                continue
            ready_ns = clock.now_ns()
            outcome = runtime.submit_chunk(result.actions, observation.stamp_ns, ready_ns)
            if not outcome.accepted:
                self._on_problem("chunk", f"chunk not executed: {outcome.reason}")
            self._on_chunk(ChunkEvent(observation, result, outcome, ready_ns))
