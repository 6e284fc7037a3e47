"""The runtime against a stalled controller: trajectories delivered late, joint states paused.

The controller is the sim's joint_trajectory_controller model (sim/trajectory.py, written from the
controller's documentation); its executed motion is judged on a 1 ms grid, independently of the runtime.
A controller that stalls longer than ``safety.trajectory_lead_s`` runs the trajectory it had while the runtime
stops on stale joint states; the stop arrives too late (rejected, or joined far from where the arm is).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from internvla_ros.runtime.commands import JointTrajectoryCommand
from internvla_ros.runtime.observation import Observation
from internvla_ros.runtime.scheduler import PolicyRuntime
from internvla_ros.runtime.status import RuntimeState
from internvla_ros.sim.trajectory import JointTrajectoryExecutor, Trajectory, TrajectoryPoint, TrajectoryRejected

from .harness import ACTION_DIM, CAMERAS, CHUNK, JOINTS, MS, SimLoop, SimRobot, make_runtime

ARM = ("shoulder", "elbow")


def ramp_policy(observation: Observation) -> np.ndarray:
    """Arm deltas ramping to +0.6 rad over the chunk: the arm keeps moving, chunk after chunk; the belt runs."""
    actions = np.zeros((CHUNK, ACTION_DIM))
    actions[:, 0] = np.linspace(0.0, 0.6, CHUNK)
    actions[:, 1] = np.linspace(0.0, -0.4, CHUNK)
    actions[:, 3] = 0.3
    return actions


def hold_policy_chunk(observation: Observation) -> np.ndarray:
    """Zero deltas: the arm stays where it is."""
    return np.zeros((CHUNK, ACTION_DIM))


def to_controller(command: JointTrajectoryCommand) -> Trajectory:
    return Trajectory(command.joint_names, command.stamp_ns, tuple(
        TrajectoryPoint(np.asarray(p.positions), np.asarray(p.velocities) if p.velocities else None,
                        p.time_from_start_ns) for p in command.points))


@dataclass
class Run:
    arm: np.ndarray  # the arm controller's positions every 1 ms
    belt: np.ndarray  # the belt speed commands, one per control tick
    rejected: list[str]
    runtime: PolicyRuntime


def run(tmp_path: Path, stall: tuple[int, int], end_ns: int) -> Run:
    """Runs the runtime at 1 ms steps; during ``stall`` the controllers receive nothing (delivered at its
    end, in order) and no joint state is published. The belt reports the speed it was commanded 20 ms before."""
    runtime = make_runtime(tmp_path, rates__control_rate_hz=100.0, safety__joint_state_max_age_s=0.05)
    controller = JointTrajectoryExecutor(ARM, np.zeros(len(ARM)))
    queue: list[Trajectory] = []
    rejected: list[str] = []
    pending: list[tuple[int, np.ndarray, int]] = []
    samples = []
    belt: list[float] = [0.0]
    now = 0
    started = False
    while now <= end_ns:
        stalled = stall[0] <= now < stall[1]
        if not stalled:
            for trajectory in queue:
                try:
                    controller.submit(trajectory, now)
                except TrajectoryRejected as err:
                    rejected.append(str(err))
            queue.clear()
            if now % (10 * MS) == 0:
                arm = controller.sample(now)[0]
                runtime.update_joint_state(now, list(JOINTS), [*arm, 0.08, 0.0], [0.0, 0.0, 0.0, belt[-3:][0]])
        if now % (33 * MS) == 0:
            for camera in CAMERAS:
                runtime.update_camera(camera, now, np.zeros(1))
        if not started and now >= 50 * MS:
            runtime.start(now)
            started = True
        if started:
            for item in [p for p in pending if p[0] <= now]:
                pending.remove(item)
                runtime.submit_chunk(item[1], item[2], now)
            observation = runtime.poll_observation(now)
            if observation is not None:
                pending.append((now + 150 * MS, ramp_policy(observation), observation.stamp_ns))
            output = runtime.tick(now)
            if output is not None:
                queue.extend(to_controller(t) for t in output.trajectories)
                belt.append(output.positions[JOINTS.index("belt")])
        samples.append(controller.sample(now)[0])
        now += MS
    return Run(np.asarray(samples), np.asarray(belt), rejected, runtime)


@pytest.mark.parametrize("stall_ms", [60, 150, 300, 1_200])
def test_a_stalled_controller_is_never_made_to_jump(tmp_path: Path, stall_ms: int) -> None:
    """60 and 150 ms: the stop (sent 50 ms into the stall) arrives within the lead and joins exactly. 300 ms and
    1.2 s: it arrives after the arm would have been at rest, and is refused, while the controller ran its old
    trajectory on; the motion resumes from where the arm is. (Arriving in between, after the lead and before
    its end, the controller joins it late and jumps: its own semantics, which no sender can undo.)"""
    stall = (1_500 * MS, (1_500 + stall_ms) * MS)
    result = run(tmp_path, stall=stall, end_ns=4_500 * MS)
    positions, rejected, runtime = result.arm, result.rejected, result.runtime
    velocity = np.diff(positions, axis=0) / 1e-3
    acceleration = np.diff(velocity, axis=0) / 1e-3
    limits = [runtime.config.joints[runtime.config.joint_index[j]].limits for j in ARM]
    assert np.max(np.abs(velocity) / [lim.max_velocity for lim in limits]) <= 1.0 + 1e-6, rejected
    assert np.max(np.abs(acceleration) / [lim.max_acceleration for lim in limits]) <= 1.0 + 1e-3, rejected
    belt = runtime.config.joints[runtime.config.joint_index["belt"]].limits
    period_s = runtime.config.rates.control_period_ns / 1e9
    assert np.max(result.belt) > 0.25  # it ran
    assert np.max(np.abs(np.diff(result.belt))) <= belt.max_velocity * period_s + 1e-9
    assert np.max(np.abs(np.diff(result.belt, 2))) <= belt.max_acceleration * period_s**2 + 1e-9
    status = runtime.status(4_500 * MS)
    assert status.state is RuntimeState.RUNNING and status.stale == {"joint_state": 1}
    assert np.linalg.norm(positions[-1] - positions[stall[1] // MS + 200]) > 0.3  # moving on after the stall
    if stall_ms > 200:
        assert len(rejected) == 1 and "ends in the past" in rejected[0]
        assert status.last_error.startswith("resumed from the measured joints: shoulder measured at")


@dataclass
class OffsetRobot(SimRobot):
    """Reports the shoulder ``offset`` away from where it was commanded: a tracking error, or a controller that
    is somewhere else."""

    offset: float = 0.0

    def joint_state(self) -> tuple[list[str], list[float], list[float]]:
        names, positions, velocities = super().joint_state()
        positions[0] += self.offset
        return names, positions, velocities


@pytest.mark.parametrize(("offset", "from_measurement"), [(0.02, False), (0.3, True)])
def test_resume_keeps_the_command_within_a_tracking_error(tmp_path: Path, offset: float,
                                                          from_measurement: bool) -> None:
    """After a pause, a measured arm within max_jump (0.1 rad here) of the command resumes from the command; one
    further away restarts from the measurement, and says so."""
    runtime = make_runtime(tmp_path)
    robot = OffsetRobot(np.zeros(4), tuple(j.state_field for j in runtime.config.joints))
    loop = SimLoop(runtime, hold_policy_chunk, robot=robot)
    loop.start()
    result = loop.run_until(500 * MS)
    runtime.pause()
    result = loop.run_until(1_000 * MS, result)
    commanded = result.outputs[-1].positions[0]
    robot.offset = offset
    runtime.resume()
    result = loop.run_until(1_600 * MS, result)
    resumed = [o for o in result.outputs if o.stamp_ns > 1_000 * MS and o.state == "running"]
    assert resumed
    first = resumed[0].positions[0]
    message = runtime.status(loop.now_ns).last_error
    if from_measurement:
        assert first == pytest.approx(commanded + offset) and message.startswith("resumed from the measured joints")
    else:
        assert first == pytest.approx(commanded) and not message.startswith("resumed")
