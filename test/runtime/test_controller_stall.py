"""The runtime against a stalled controller: trajectories delivered late, joint states paused.

The controller is the sim's joint_trajectory_controller model (sim/trajectory.py, written from the
controller's documentation); its executed motion is judged on a 1 ms grid, independently of the runtime.
A controller that stalls longer than ``safety.trajectory_lead_s`` runs the trajectory it had while the runtime
stops on stale joint states; the stop arrives too late (rejected, or joined far from where the arm is).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from internvla_ros.runtime.commands import JointTrajectoryCommand
from internvla_ros.runtime.observation import Observation
from internvla_ros.runtime.scheduler import PolicyRuntime
from internvla_ros.runtime.status import RuntimeState
from internvla_ros.sim.trajectory import JointTrajectoryExecutor, Trajectory, TrajectoryPoint, TrajectoryRejected

from .harness import ACTION_DIM, CAMERAS, CHUNK, JOINTS, MS, make_runtime

ARM = ("shoulder", "elbow")


def ramp_policy(observation: Observation) -> np.ndarray:
    """Arm deltas ramping to +0.6 rad over the chunk: the arm keeps moving, chunk after chunk."""
    actions = np.zeros((CHUNK, ACTION_DIM))
    actions[:, 0] = np.linspace(0.0, 0.6, CHUNK)
    actions[:, 1] = np.linspace(0.0, -0.4, CHUNK)
    return actions


def to_controller(command: JointTrajectoryCommand) -> Trajectory:
    return Trajectory(command.joint_names, command.stamp_ns, tuple(
        TrajectoryPoint(np.asarray(p.positions), np.asarray(p.velocities) if p.velocities else None,
                        p.time_from_start_ns) for p in command.points))


def run(tmp_path: Path, stall: tuple[int, int], end_ns: int) -> tuple[list[np.ndarray], list[str], PolicyRuntime]:
    """Runs the runtime at 1 ms steps; during ``stall`` the controller receives nothing (delivered at its
    end, in order) and publishes no joint state. Returns the controller's positions every 1 ms."""
    runtime = make_runtime(tmp_path, rates__control_rate_hz=100.0, safety__joint_state_max_age_s=0.05)
    controller = JointTrajectoryExecutor(ARM, np.zeros(len(ARM)))
    queue: list[Trajectory] = []
    rejected: list[str] = []
    pending: list[tuple[int, np.ndarray, int]] = []
    samples = []
    gripper_belt = [0.08, 0.0]
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
                runtime.update_joint_state(now, list(JOINTS), [*arm, gripper_belt[0], 0.0],
                                           [0.0, 0.0, 0.0, gripper_belt[1]])
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
        samples.append(controller.sample(now)[0])
        now += MS
    return samples, rejected, runtime


@pytest.mark.parametrize("stall_ms", [60, 200, 1_200])
def test_a_stalled_controller_is_never_made_to_jump(tmp_path: Path, stall_ms: int) -> None:
    """60 ms: the stop joins within the lead. 200 ms and 1.2 s: the stop arrives after it would have ended
    (rejected) while the controller ran its old trajectory on; the motion resumes from where the arm is."""
    stall = (1_500 * MS, (1_500 + stall_ms) * MS)
    samples, rejected, runtime = run(tmp_path, stall=stall, end_ns=4_500 * MS)
    positions = np.asarray(samples)
    velocity = np.diff(positions, axis=0) / 1e-3
    acceleration = np.diff(velocity, axis=0) / 1e-3
    limits = [runtime.config.joints[runtime.config.joint_index[j]].limits for j in ARM]
    assert np.max(np.abs(velocity) / [lim.max_velocity for lim in limits]) <= 1.0 + 1e-6, rejected
    assert np.max(np.abs(acceleration) / [lim.max_acceleration for lim in limits]) <= 1.0 + 1e-3, rejected
    status = runtime.status(4_500 * MS)
    assert status.state is RuntimeState.RUNNING and status.stale == {"joint_state": 1}
    assert np.linalg.norm(positions[-1] - positions[stall[1] // MS + 200]) > 0.3  # moving on after the stall
    if stall_ms > 100:
        assert len(rejected) == 1 and "ends in the past" in rejected[0]
        assert status.last_error.startswith("resumed from the measured joints: shoulder measured at")
