"""The first trajectory after a (re)start, as the controller executes it: no jump from where the controller is.

The runtime (re)starts from the measured joints; a position-controlled arm at rest is measured a tracking error
away from the controller's desired state, which is where the controller holds it. The first trajectory must not
make the controller jump across that gap when it arrives (a few ms after its stamp, or tens of ms on a loaded
machine). The controller is the sim's joint_trajectory_controller model (sim/trajectory.py) and the motion is
judged by the sim's judge on its 200 Hz grid (sim/judge.py), independently of the runtime.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from internvla_ros.runtime.observation import Observation
from internvla_ros.runtime.scheduler import PolicyRuntime
from internvla_ros.sim.judge import JudgeSettings, TrajectoryJudge, ViolationLog
from internvla_ros.sim.trajectory import JointTrajectoryExecutor, Trajectory, TrajectoryPoint

from .harness import ACTION_DIM, CAMERAS, CHUNK, JOINTS, MS, make_runtime
from .test_controller_stall import to_controller

ARM = ("shoulder", "elbow")


def reach_policy(observation: Observation) -> np.ndarray:
    """Arm deltas ramping to +0.3 / -0.2 rad over the chunk: the arm moves as soon as it may."""
    actions = np.zeros((CHUNK, ACTION_DIM))
    actions[:, 0] = np.linspace(0.0, 0.3, CHUNK)
    actions[:, 1] = np.linspace(0.0, -0.2, CHUNK)
    return actions


@dataclass
class Cell:
    """One arm controller and its judge; the arm is measured ``offset`` away from the controller's desired
    state (a tracking error at rest), and trajectories reach the controller ``delay_ns`` after their stamp."""

    runtime: PolicyRuntime
    offset: np.ndarray
    delay_ns: int
    start: np.ndarray = field(default_factory=lambda: np.zeros(len(ARM)))
    now: int = 0

    def __post_init__(self) -> None:
        config = self.runtime.config
        self.controller = JointTrajectoryExecutor(ARM, self.start)
        self.log = ViolationLog()
        limits = [config.joints[config.joint_index[j]].limits for j in ARM]
        self.judge = TrajectoryJudge("arm_controller", self.controller, limits, JudgeSettings(), self.log)
        self.in_flight: list[tuple[int, Trajectory]] = []
        self.first_points: list[np.ndarray] = []
        self.pending: list[tuple[int, np.ndarray, int]] = []
        self.joint_states = True

    def measured(self) -> np.ndarray:
        return self.controller.sample(self.now)[0] + self.offset

    def send(self, trajectory: Trajectory) -> None:
        """Another sender on the controller's topic (the runner bringing the arm home), arriving at once."""
        self.controller.submit(trajectory, self.now)
        self.judge.note_submission(self.now)

    def run_until(self, end_ns: int, policy: Callable[[Observation], np.ndarray] = reach_policy) -> None:
        runtime = self.runtime
        while self.now <= end_ns:
            now = self.now
            for item in [item for item in self.in_flight if item[0] <= now]:
                self.in_flight.remove(item)
                self.controller.submit(item[1], now)
                self.judge.note_submission(now)
            if self.joint_states and now % (10 * MS) == 0:
                runtime.update_joint_state(now, list(JOINTS), [*self.measured(), 0.08, 0.0], [0.0] * 4)
            if now % (33 * MS) == 0:
                for camera in CAMERAS:
                    runtime.update_camera(camera, now, np.zeros(1))
            for item in [p for p in self.pending if p[0] <= now]:
                self.pending.remove(item)
                runtime.submit_chunk(item[1], item[2], now)
            observation = runtime.poll_observation(now)
            if observation is not None:
                self.pending.append((now + 150 * MS, policy(observation), observation.stamp_ns))
            output = runtime.tick(now)
            if output is not None:
                for command in output.trajectories:
                    self.first_points.append(np.asarray(command.points[0].positions))
                    self.in_flight.append((command.stamp_ns + self.delay_ns, to_controller(command)))
            self.judge.advance(now + 250 * MS)  # every grid instant up to now (the judge lags 0.25 s)
            self.now += MS


@pytest.mark.parametrize("delay_ms", [1, 20, 60])
def test_a_start_measured_off_the_controllers_hold_joins_it_smoothly(tmp_path: Path, delay_ms: int) -> None:
    """Measured 1 mrad and 0.5 mrad off the controller's hold (a tracking error at rest): whenever the first
    trajectory arrives within its lead, the controller moves within the acceleration limits, and the arm
    moves on as the policy asks."""
    runtime = make_runtime(tmp_path, rates__control_rate_hz=100.0)
    cell = Cell(runtime, offset=np.array([1e-3, -5e-4]), delay_ns=delay_ms * MS)
    cell.run_until(50 * MS)
    runtime.start(cell.now)
    cell.run_until(1_500 * MS)
    assert cell.first_points, "nothing was sent"
    assert cell.controller.sample(cell.now)[0][0] > 0.1  # it moved
    assert (cell.log.limit_violations, cell.log.acceleration_violations) == (0, 0), list(cell.log.messages)


def test_a_restart_after_homing_starts_from_the_fresh_measurement(tmp_path: Path) -> None:
    """The evaluation's homing: the runtime paused and silenced, another sender moves the arm 0.2 rad, the
    runtime's joint states stop for a while (a loaded machine) so that actuation is switched back on with a
    measurement from the middle of that move; by the resume fresh ones show the arm still at its new place.
    The first trajectory starts there, and the controller never leaves its limits."""
    runtime = make_runtime(tmp_path, rates__control_rate_hz=100.0)
    cell = Cell(runtime, offset=np.zeros(len(ARM)), delay_ns=5 * MS)
    cell.run_until(50 * MS)
    runtime.start(cell.now)
    cell.run_until(1_000 * MS, policy=lambda observation: np.zeros((CHUNK, ACTION_DIM)))
    runtime.pause()
    runtime.set_dry_run(True)
    cell.run_until(1_500 * MS)
    home = cell.controller.sample(cell.now)[0] + np.array([0.2, -0.1])
    cell.send(Trajectory(ARM, 0, (TrajectoryPoint(home, np.zeros(len(ARM)), 400 * MS),)))
    cell.run_until(1_800 * MS)  # the arm is still on its way home when the runtime's joint states stop
    cell.joint_states = False
    cell.run_until(2_300 * MS)
    stale = runtime.status(cell.now).last_error
    runtime.set_dry_run(False)  # restarts from the last measurement it has: part of the way home
    cell.joint_states = True
    cell.run_until(2_600 * MS)
    runtime.resume()
    sent_before = len(cell.first_points)
    cell.run_until(4_000 * MS)
    assert "stale input" in stale
    assert len(cell.first_points) > sent_before
    np.testing.assert_allclose(cell.first_points[sent_before], home, atol=1e-9)
    assert (cell.log.limit_violations, cell.log.acceleration_violations) == (0, 0), list(cell.log.messages)


@pytest.mark.parametrize("after_ms", [10, 50])
def test_a_stop_sent_within_the_first_trajectorys_lead_continues_its_blend(tmp_path: Path, after_ms: int) -> None:
    """A pause right after the first trajectory: the stop reaches the controller while it is still blending from
    its hold to the measured joints. Neither trajectory makes it jump."""
    runtime = make_runtime(tmp_path, rates__control_rate_hz=100.0)
    cell = Cell(runtime, offset=np.array([1e-3, -5e-4]), delay_ns=20 * MS)
    cell.run_until(50 * MS)
    runtime.start(cell.now)
    while not cell.first_points:
        cell.run_until(cell.now)
    cell.run_until(cell.now + after_ms * MS)
    runtime.pause()
    cell.run_until(cell.now + 1_000 * MS)
    assert len(cell.first_points) == 2  # the first trajectory and the stop
    assert (cell.log.limit_violations, cell.log.acceleration_violations) == (0, 0), list(cell.log.messages)
