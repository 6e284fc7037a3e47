"""The cell's judge: executed motion on the update grid, forward commands, arrival delays, independence."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest

from internvla_ros.runtime.config import JointLimits, RuntimeConfig
from internvla_ros.sim.cell import SimulatedCell
from internvla_ros.sim.judge import ForwardCommandJudge, JudgeSettings, MotionStats, TrajectoryJudge, ViolationLog
from internvla_ros.sim.trajectory import JointTrajectoryExecutor, Trajectory, TrajectoryPoint

SIM_DIR = Path(__file__).resolve().parents[2] / "internvla_ros" / "sim"
CONFIG_DIR = Path(__file__).resolve().parents[2] / "config"
MS = 1_000_000
T0 = 1_000_000 * MS  # an arbitrary absolute time, on the 5 ms grid
SETTINGS = JudgeSettings(grid_hz=200.0, delay_s=0.25)


def limits(velocity: float = 1.0, acceleration: float = 8.0) -> JointLimits:
    return JointLimits(min_position=-1.0, max_position=1.0, max_velocity=velocity, max_acceleration=acceleration,
                       max_jump=0.05)


def point(position: float, t_ms: float, velocity: float | None = 0.0) -> TrajectoryPoint:
    return TrajectoryPoint(np.array([position]), None if velocity is None else np.array([velocity]),
                           round(t_ms * MS))


def judged(trajectories: list[tuple[int, Trajectory]], joint_limits: JointLimits, seconds: float = 2.0,
           motion: MotionStats | None = None) -> ViolationLog:
    """Submits (arrival, trajectory) pairs to a one-joint controller and judges `seconds` of its motion,
    advancing the judge in irregular steps as the sim's timer would."""
    log = ViolationLog()
    executor = JointTrajectoryExecutor(("j",), np.zeros(1))
    judge = TrajectoryJudge("arm_controller", executor, [joint_limits], SETTINGS, log, motion)
    pending = sorted(trajectories, key=lambda item: item[0])
    now, rng = T0, np.random.default_rng(0)
    while now < T0 + round((seconds + SETTINGS.delay_s) * 1e9):
        while pending and pending[0][0] <= now:
            arrival, trajectory = pending.pop(0)
            executor.submit(trajectory, arrival)
        judge.advance(now)
        now += int(rng.integers(1 * MS, 12 * MS))  # a jittery timer must not matter
    return log


def test_a_cubic_that_overshoots_the_velocity_between_points_is_caught() -> None:
    # Rest to rest over 1 s: both points at 0 velocity, mean speed 0.6, but the cubic peaks at 0.9 rad/s.
    trajectory = Trajectory(("j",), 0, (point(0.6, 1000),))
    log = judged([(T0, trajectory)], limits(velocity=0.8, acceleration=100.0))
    assert (log.limit_violations, log.acceleration_violations) == (1, 0)
    message = log.drain()[0]  # reported where the excursion starts
    assert message.startswith("arm_controller: j velocity 0.80") and " above 0.8 at t=" in message, message
    assert judged([(T0, trajectory)], limits(velocity=0.91, acceleration=100.0)).limit_violations == 0


def test_a_jump_where_a_trajectory_replaces_another_is_an_acceleration_violation() -> None:
    hold = Trajectory(("j",), 0, (point(0.0, 100),))
    switch = T0 + 500 * MS
    # Stamped 20 ms before it arrives, with its first point at its stamp: the controller starts from the
    # trajectory's own points, 0.01 away from where the joint is.
    jumping = Trajectory(("j",), switch - 20 * MS, (point(0.01, 0), point(0.01, 500)))
    log = judged([(T0, hold), (switch, jumping)], limits())
    assert log.acceleration_violations == 1
    assert log.limit_violations == 1  # 0.01 in 5 ms is also 2 rad/s
    assert any(m.startswith("arm_controller: j acceleration") and "at t=1000.50" in m for m in log.drain())
    continuous = Trajectory(("j",), switch - 20 * MS, (point(0.0, 0), point(0.0, 500)))
    log = judged([(T0, hold), (switch, continuous)], limits())
    assert (log.limit_violations, log.acceleration_violations) == (0, 0)


def test_a_smooth_motion_at_exactly_the_limits_passes() -> None:
    """Accelerate at the limit to the velocity limit, then decelerate at the limit to rest, through
    points every 25 ms carrying their exact velocities: cubic segments reproduce each parabola."""
    v_max, a_max, ramp_ms = 1.0, 8.0, 125
    points = []
    for t_ms in range(25, 2 * ramp_ms + 1, 25):
        t = t_ms / 1e3
        if t_ms <= ramp_ms:
            position, velocity = 0.5 * a_max * t**2, a_max * t
        else:
            d = t - ramp_ms / 1e3
            position = 0.5 * a_max * (ramp_ms / 1e3) ** 2 + v_max * d - 0.5 * a_max * d**2
            velocity = v_max - a_max * d
        points.append(point(position, t_ms, velocity))
    log = judged([(T0, Trajectory(("j",), 0, tuple(points)))], limits(velocity=v_max, acceleration=a_max))
    assert (log.limit_violations, log.acceleration_violations) == (0, 0), log.drain()
    # The same motion 5 % faster everywhere breaks both limits.
    fast = Trajectory(("j",), 0, tuple(point(p.positions[0], p.time_from_start_ns / MS / 1.05,
                                             p.velocities[0] * 1.05) for p in points))
    log = judged([(T0, fast)], limits(velocity=v_max, acceleration=a_max))
    assert log.limit_violations >= 1 and log.acceleration_violations >= 1


def test_forward_commands_are_judged_by_step_and_second_difference_once_per_excursion() -> None:
    log = ViolationLog()
    belt = JointLimits(min_position=0.0, max_position=0.5, max_velocity=0.5, max_acceleration=5.0, max_jump=0.02)
    judge = ForwardCommandJudge("conveyor_controller", ("conveyor_speed",), [belt], np.zeros(1), 0.01, log)
    speed, t = 0.0, T0
    for step in (0.0004, 0.0008, 0.0012, 0.0016, 0.0020, 0.0024, 0.0028, 0.0032, 0.0036, 0.0040):
        speed, t = speed + step, t + 10 * MS  # ramps: second difference 0.0004 <= 5 * 0.01^2
        judge.judge(np.array([speed]), t)
    assert (log.limit_violations, log.acceleration_violations) == (0, 0), log.drain()
    for _ in range(3):  # three steps of 0.006 > 0.5 * 0.01: one excursion
        speed, t = speed + 0.006, t + 10 * MS
        judge.judge(np.array([speed]), t)
    assert log.limit_violations == 1
    assert log.acceleration_violations == 1  # 0.004 -> 0.006 is a second difference of 0.002 > 0.0005
    messages = log.drain()
    assert any(m.startswith("conveyor_controller: conveyor_speed step 0.006 above max_velocity * period = 0.005")
               for m in messages), messages
    speed, t = speed - 0.006, t + 10 * MS  # back below the step limit, but a second difference of 0.012
    judge.judge(np.array([speed]), t)
    assert (log.limit_violations, log.acceleration_violations) == (1, 2)


def test_violation_messages_name_the_controller_and_joint_they_happened_on() -> None:
    config = RuntimeConfig.from_yaml(CONFIG_DIR / "dual_arm.yaml")
    cell = SimulatedCell(config, SETTINGS)
    right = next(c for c in config.controllers if c.name == "right_arm_controller")
    start = cell.desired()[[config.joint_index[j] for j in right.joints]]
    target = start.copy()
    target[2] += 0.3  # positions only: a velocity step at the start and at the end
    now = T0
    cell.submit_trajectory("right_arm_controller", Trajectory(right.joints, 0, (TrajectoryPoint(target, None,
                                                                                                 500 * MS),)), now)
    cell.submit_forward_command("left_gripper_controller", np.array([0.0]), now)  # 0.08 -> 0 at once
    for _ in range(300):
        now += 5 * MS
        cell.step(now, 0.005)
    messages = cell.drain_violations()
    arm = [m for m in messages if m.startswith("right_arm_controller: ")]
    gripper = [m for m in messages if m.startswith("left_gripper_controller: ")]
    assert arm and gripper and len(arm) + len(gripper) == len(messages), messages
    assert all(m.startswith("right_arm_controller: right_joint3 acceleration") for m in arm), arm
    assert len(arm) == 2  # the start and the end of the straight segment
    assert all(m.startswith("left_gripper_controller: left_gripper_joint ") for m in gripper)
    assert cell.diagnostics()["acceleration_violations"] == cell.acceleration_violations == 3


def test_arrival_delays_late_and_after_end_trajectories_are_counted() -> None:
    config = RuntimeConfig.from_yaml(CONFIG_DIR / "conveyor_sorting.yaml")
    cell = SimulatedCell(config, JudgeSettings(late_threshold_s=0.1))
    arm = next(c for c in config.controllers if c.name == "arm_controller")
    here = cell.desired()[[config.joint_index[j] for j in arm.joints]]

    def stamped(stamp: int) -> Trajectory:
        return Trajectory(arm.joints, stamp, (TrajectoryPoint(here, np.zeros(7), 0),
                                              TrajectoryPoint(here, np.zeros(7), 200 * MS)))

    for delay_ms in (2, 4, 150):
        assert cell.submit_trajectory("arm_controller", stamped(T0 - delay_ms * MS), T0) is None
    assert "ends in the past" in cell.submit_trajectory("arm_controller", stamped(T0 - 300 * MS), T0)
    assert cell.submit_trajectory("arm_controller", Trajectory(arm.joints, 0, stamped(0).points), T0) is None
    values = cell.diagnostics()
    assert values["late_trajectories"] == 2  # 150 and 300 ms
    assert values["trajectories_after_end"] == 1
    assert values["trajectory_arrival_delay_ms_p50"] == pytest.approx(77.0)  # of 2, 4, 150, 300
    assert values["trajectory_arrival_delay_ms_max"] == pytest.approx(300.0)
    assert values["arm_controller.accepted"] == 4 and values["arm_controller.rejected"] == 1


def test_the_sim_does_not_import_the_runtime_it_judges() -> None:
    forbidden = ("internvla_ros.runtime.plan", "internvla_ros.runtime.safety")
    modules = sorted(SIM_DIR.glob("*.py"))
    assert len(modules) >= 5
    for module in modules:
        for node in ast.walk(ast.parse(module.read_text())):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
            bad = [name for name in names if name.startswith(forbidden)]
            assert not bad, f"{module.name} imports {bad}"


def test_a_trajectory_handled_after_the_grid_passed_its_arrival_is_judged_from_its_arrival() -> None:
    """The sim's callback may run later than the judge's delay under load: the judge rewinds to the
    arrival instead of seeing a jump the controller never made."""
    log = ViolationLog()
    executor = JointTrajectoryExecutor(("j",), np.zeros(1))
    judge = TrajectoryJudge("arm_controller", executor, [limits()], SETTINGS, log)
    for step in range(1, 201):
        judge.advance(T0 + step * 5 * MS)  # judged up to T0 + 0.75 s
    arrival = T0 + 600 * MS  # rest to rest, 0.1 in 0.5 s: peak 0.3 rad/s, 2.4 rad/s^2
    active = executor.submit(Trajectory(("j",), 0, (point(0.1, 500),)), arrival)
    judge.note_submission(active.activation_ns)
    for step in range(201, 601):
        judge.advance(T0 + step * 5 * MS)
    assert judge.late_submissions == 1
    assert (log.limit_violations, log.acceleration_violations) == (0, 0), log.drain()


def test_motion_smoothness_is_measured_on_the_executed_motion() -> None:
    """A rest-to-rest cubic over 1 s to 0.6 rad: acceleration 3.6 (1 - 2 s) rad/s^2, a peak of 0.45 of an
    8 rad/s^2 limit; jerk 7.2 rad/s^3 for 1 s plus the two 3.6 rad/s^2 steps at its ends: 14.4 rad/s^2 of
    summed |jerk| dt over the 2.25 s judged (from 0.25 s before the start), a mean of 6.4 rad/s^3."""
    motion = MotionStats()
    assert motion.summary() == {"max_acceleration_ratio": None, "mean_abs_jerk": None}
    judged([(T0, Trajectory(("j",), 0, (point(0.6, 1000),)))], limits(velocity=2.0), motion=motion)
    summary = motion.summary()
    assert summary["max_acceleration_ratio"] == pytest.approx(0.45, rel=0.03)
    assert summary["mean_abs_jerk"] == pytest.approx(6.4, rel=0.05)
    motion.reset()
    hold = Trajectory(("j",), 0, (point(0.0, 100),))
    switch = T0 + 500 * MS
    judged([(T0, hold), (switch, Trajectory(("j",), switch - 20 * MS, (point(0.0, 0), point(0.0, 500))))],
           limits(), motion=motion)
    assert motion.summary() == {"max_acceleration_ratio": 0.0, "mean_abs_jerk": 0.0}  # at rest throughout
    motion.reset()
    jumping = Trajectory(("j",), switch - 20 * MS, (point(0.01, 0), point(0.01, 500)))
    judged([(T0, hold), (switch, jumping)], limits(), motion=motion)
    assert motion.summary()["max_acceleration_ratio"] == pytest.approx(0.01 / 0.005**2 / 8.0, rel=1e-6)  # 50x


def test_samples_judged_again_after_a_rewind_count_once_in_the_jerk() -> None:
    """The same executed motion gives the same smoothness whether its trajectory was handled on time or after
    the grid had passed its arrival (the judge rewinds and judges those samples again)."""
    summaries = []
    for late in (False, True):
        motion = MotionStats()
        executor = JointTrajectoryExecutor(("j",), np.zeros(1))
        judge = TrajectoryJudge("arm_controller", executor, [limits()], SETTINGS, ViolationLog(), motion)
        arrival = T0 + 600 * MS
        trajectory = Trajectory(("j",), 0, (point(0.1, 500),))
        handled = T0 + 1000 * MS if late else arrival  # late: the grid has been judged to 0.75 s
        for step in range(1, 601):
            now = T0 + step * 5 * MS
            if now == handled:
                judge.note_submission(executor.submit(trajectory, arrival).activation_ns)
            judge.advance(now)
        assert judge.late_submissions == int(late)
        summaries.append(motion.summary())
    assert summaries[0]["mean_abs_jerk"] > 0 and summaries[1] == summaries[0]


def test_a_rewind_past_a_reset_takes_nothing_from_the_new_episodes_jerk() -> None:
    motion = MotionStats()
    added = motion.add_jerk(np.array([4.0]))
    motion.reset()  # a new episode
    kept = motion.add_jerk(np.array([2.0]))
    motion.remove_jerk(added)  # judged before the reset: already dropped with it
    assert motion.summary()["mean_abs_jerk"] == 2.0
    motion.remove_jerk(kept)
    assert motion.summary() == {"max_acceleration_ratio": None, "mean_abs_jerk": None}
