"""RuntimeDriver in real time, without ROS: its threads, a hung inference worker, failed threads, and
a clock that jumps back.

The runtime is fed by a thread of the test (joint states at 100 Hz, cameras at 30 Hz, stamped with the
driver's clock); the policy is the analytic sine policy, in a real worker process or called in-process.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from internvla_ros.runtime.commands import ControlOutput
from internvla_ros.runtime.driver import MAX_RESTARTS_IN_A_ROW, ChunkEvent, RuntimeDriver, SteadyClock
from internvla_ros.runtime.observation import Observation
from internvla_ros.runtime.policy import PolicyResult
from internvla_ros.runtime.scheduler import PolicyRuntime
from internvla_ros.runtime.status import RuntimeState, RuntimeStatus
from internvla_ros.runtime.test_policies import SinePolicy
from internvla_ros.runtime.worker import InferenceError, InferenceTimeout, InferenceWorker

from .harness import CAMERAS, SimRobot, make_runtime

WAIT_S = 60.0  # upper bound of every wait (they end as soon as their condition holds)
HANG_TIMEOUT_S = 1.0
JUMP_NS = 600_000_000_000  # far longer than any wait here: a control loop sleeping it out would be caught
IMAGE = np.zeros((8, 8, 3), np.uint8)


class JumpingClock(SteadyClock):
    """Steady time plus an offset the test moves back, as `ros2 bag play --loop` moves ROS time."""

    def __init__(self) -> None:
        self.offset_ns = 0

    def now_ns(self) -> int:
        return super().now_ns() + self.offset_ns


class InProcess:
    """The Inference protocol with the policy called in the inference thread itself (no process): its
    first ``timeouts`` requests time out as a hung worker's would; restart() fails with ``restart_error``."""

    def __init__(self, policy: SinePolicy, timeouts: int = 0, restart_error: str = "") -> None:
        self.policy = policy
        self.timeouts = timeouts
        self.restart_error = restart_error

    def infer(self, observation: Observation, timeout_s: float | None = None) -> PolicyResult:
        if self.timeouts:
            self.timeouts -= 1
            raise InferenceTimeout(f"no reply within {timeout_s:g} s")
        return self.policy.infer(observation)

    def restart(self, cancel: threading.Event | None = None) -> object:
        if self.restart_error:
            raise InferenceError(self.restart_error)
        return {}


class Feeder:
    """Feeds the runtime fresh inputs from a thread, stamped with the driver's clock. ``lock`` is held from
    reading the clock to the last input of a round: the node's executor runs a clock jump's handler between
    two input callbacks, never inside one (a round stamped before a jump and handed over after it would be
    future input on the new time line)."""

    def __init__(self, runtime: PolicyRuntime, clock: SteadyClock) -> None:
        config = runtime.config
        self._robot = SimRobot(np.zeros(config.dim), tuple(j.state_field for j in config.joints))
        self._runtime, self._clock = runtime, clock
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.lock = threading.Lock()

    def _run(self) -> None:
        step = 0
        while not self._stop.wait(0.01):
            with self.lock:
                now_ns = self._clock.now_ns()
                self._runtime.update_joint_state(now_ns, *self._robot.joint_state())
                if step % 3 == 0:
                    for camera in CAMERAS:
                        self._runtime.update_camera(camera, now_ns, IMAGE)
            step += 1

    def __enter__(self) -> Feeder:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


class Run:
    """A driver on a fresh runtime, and everything it published and reported."""

    def __init__(self, runtime: PolicyRuntime, worker: object, clock: SteadyClock,
                 on_chunk: Callable[[ChunkEvent], None], **kwargs: object) -> None:
        self.runtime, self.clock = runtime, clock
        self.outputs: list[ControlOutput] = []
        self.problems: list[str] = []
        self.feeder: Feeder | None = None
        self.driver = RuntimeDriver(runtime, worker, clock, self.outputs.append, on_chunk=on_chunk,
                                    on_problem=lambda key, text: self.problems.append(text), **kwargs)

    def status(self) -> RuntimeStatus:
        return self.runtime.status(self.clock.now_ns())

    def wait(self, condition: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + WAIT_S
        while not condition():
            assert time.monotonic() < deadline, f"{what}: not within {WAIT_S} s; {self.status()}; {self.problems}"
            time.sleep(0.02)


@pytest.fixture
def run_driver(tmp_path: Path) -> Iterator[Callable[..., Run]]:
    """Starts a driver (and a feeder) on a fresh runtime; stops both at the end of the test."""
    stack: list[tuple[RuntimeDriver, Feeder]] = []

    def start(worker: object, clock: SteadyClock | None = None,
              on_chunk: Callable[[ChunkEvent], None] = lambda event: None, **kwargs: object) -> Run:
        clock = clock or SteadyClock()
        run = Run(make_runtime(tmp_path), worker, clock, on_chunk, **kwargs)
        feeder = run.feeder = Feeder(run.runtime, clock).__enter__()
        run.driver.start()
        stack.append((run.driver, feeder))
        return run

    yield start
    for driver, feeder in stack:
        driver.stop()
        feeder.__exit__()


def within_limits(run: Run) -> bool:
    joints = run.runtime.config.joints
    low = np.array([j.limits.min_position for j in joints])
    high = np.array([j.limits.max_position for j in joints])
    positions = np.array([o.positions for o in run.outputs])
    return bool(np.all(positions >= low - 1e-9) and np.all(positions <= high + 1e-9))


@pytest.mark.slow
def test_a_hung_worker_is_restarted_while_the_robot_holds(tmp_path: Path, run_driver) -> None:
    worker = InferenceWorker("test_sine_hang_once", {"model": str(tmp_path)})
    worker.start(timeout_s=WAIT_S)
    try:
        run = run_driver(worker, inference_timeout_s=HANG_TIMEOUT_S)
        run.wait(lambda: run.driver.inference_timeouts == 1, "the hung request timed out")
        timed_out_at = len(run.outputs)
        run.wait(lambda: run.driver.worker_restarts == 1, "the worker was restarted")
        chunks = run.status().chunks_accepted
        run.wait(lambda: run.status().chunks_accepted >= chunks + 3, "chunks after the restart")
        states = [o.state for o in run.outputs[timed_out_at:]]
        assert RuntimeState.HOLDING.value in states, "the robot must hold while the worker restarts"
        assert states[-1] == RuntimeState.RUNNING.value
        assert any("inference worker restarting: no reply within 1 s" in p for p in run.problems), run.problems
        assert run.driver.failed_threads == () and run.status().estop_reason == ""
        assert within_limits(run)
    finally:
        worker.close()


@pytest.mark.slow
def test_a_crashed_worker_is_restarted(run_driver) -> None:
    worker = InferenceWorker("test_sine")
    worker.start(timeout_s=WAIT_S)
    try:
        run = run_driver(worker, inference_timeout_s=WAIT_S)
        run.wait(lambda: run.status().chunks_accepted >= 2, "chunks before the crash")
        os.kill(worker.pid, signal.SIGKILL)
        run.wait(lambda: run.driver.worker_restarts == 1, "the worker was restarted")
        chunks = run.status().chunks_accepted
        run.wait(lambda: run.status().chunks_accepted >= chunks + 2, "chunks after the restart")
        assert run.driver.inference_timeouts == 0 and run.driver.failed_threads == ()
        assert any(p.startswith("inference worker restarting") and ("not running" in p or "exit code -9" in p)
                   for p in run.problems), run.problems
    finally:
        worker.close()


def test_a_worker_that_keeps_failing_latches_an_estop(run_driver) -> None:
    run = run_driver(InProcess(SinePolicy(), timeouts=100), inference_timeout_s=HANG_TIMEOUT_S)
    run.wait(lambda: run.driver.failed_threads == ("inference",), "the inference thread gave up")
    run.wait(lambda: run.status().state is RuntimeState.ESTOPPED, "the e-stop latched")
    assert run.driver.worker_restarts == MAX_RESTARTS_IN_A_ROW
    assert f"failed {MAX_RESTARTS_IN_A_ROW + 1} times in a row" in run.status().estop_reason


def test_a_worker_that_cannot_restart_latches_an_estop(run_driver) -> None:
    run = run_driver(InProcess(SinePolicy(), timeouts=1, restart_error="the inference worker did not start: "
                                                                      "out of memory"),
                     inference_timeout_s=HANG_TIMEOUT_S)
    run.wait(lambda: run.driver.failed_threads == ("inference",), "the inference thread failed")
    run.wait(lambda: run.status().state is RuntimeState.ESTOPPED, "the e-stop latched")
    reason = run.status().estop_reason
    assert "inference thread failed" in reason and "could not be restarted" in reason and "out of memory" in reason
    assert run.driver.inference_timeouts == 1 and run.driver.worker_restarts == 0
    ticks = run.status().control_ticks
    run.wait(lambda: run.status().control_ticks > ticks + 5, "the control thread holds on")


def test_a_failed_thread_is_named_and_latches_an_estop(run_driver) -> None:
    def broken_consumer(event: ChunkEvent) -> None:
        raise RuntimeError("chunk consumer broke")

    run = run_driver(InProcess(SinePolicy()), on_chunk=broken_consumer)
    run.wait(lambda: run.driver.failed_threads == ("inference",), "the inference thread failed")
    run.wait(lambda: run.status().state is RuntimeState.ESTOPPED, "the e-stop latched")
    assert run.status().estop_reason.startswith("inference thread failed: RuntimeError: chunk consumer broke")
    assert any("e-stop latched" in p for p in run.problems)


def test_control_and_inference_go_on_after_the_clock_jumps_back(run_driver) -> None:
    clock = JumpingClock()
    run = run_driver(InProcess(SinePolicy()), clock=clock)
    run.wait(lambda: run.status().chunks_accepted >= 2, "chunks before the jump")
    chunks, ticks = run.status().chunks_accepted, run.status().control_ticks
    assert run.feeder is not None
    with run.feeder.lock:  # between two rounds of input, as the node's executor runs it
        clock.offset_ns -= JUMP_NS  # what rclpy does first; then it calls the node's jump handler:
        run.driver.clock_jumped()
    run.wait(lambda: run.status().control_ticks > ticks + 25, "control ticks after the jump")
    run.wait(lambda: run.status().chunks_accepted > chunks + 2, "chunks after the jump")
    assert run.status().state is RuntimeState.RUNNING
    recent = [o.stamp_ns for o in run.outputs[-25:]]
    assert recent == sorted(recent) and recent[-1] <= clock.now_ns(), "commands stamped on the new time line"
    assert within_limits(run)


@pytest.mark.parametrize("added_ms", [0.0, 150.0])
def test_added_latency_holds_every_answer_before_the_runtime_takes_it(run_driver, added_ms: float) -> None:
    """`internvla eval --added-latency-ms`: the delay the runtime measures (observation stamp to the chunk taken)
    includes the added time, while control goes on."""
    events: list[ChunkEvent] = []
    run = run_driver(InProcess(SinePolicy()), on_chunk=events.append, added_latency_s=added_ms / 1000.0)
    run.wait(lambda: len(events) >= 3, "three chunks")
    delays_ms = [(e.ready_ns - e.observation.stamp_ns) / 1e6 for e in events]
    assert min(delays_ms) >= added_ms, delays_ms
    if added_ms == 0.0:
        assert min(delays_ms) < 100.0, delays_ms  # the sine policy answers at once
    assert run.status().state is RuntimeState.RUNNING and within_limits(run)


@pytest.mark.parametrize("added_s", [-0.1, float("nan"), float("inf")])
def test_added_latency_must_be_finite_and_not_negative(tmp_path: Path, added_s: float) -> None:
    with pytest.raises(ValueError, match="added_latency_s must be finite and >= 0"):
        RuntimeDriver(make_runtime(tmp_path), InProcess(SinePolicy()), SteadyClock(), lambda output: None,
                      added_latency_s=added_s)
