"""Homing the cell between episodes (sim.expert.HomingAgent through the expert's CommandStreamer), in simulated
time on the sim's own controllers and judge: from an arm away from home, the gripper closed and the belt running."""

from __future__ import annotations

import numpy as np

from internvla_ros.learning.expert_loop import CommandStreamer
from internvla_ros.runtime.config import NS_PER_S, RuntimeConfig
from internvla_ros.sim.cell import SimulatedCell, home_positions
from internvla_ros.sim.expert import ExpertCommand, HomingAgent, plan_move

STEP_NS = 5_000_000
HOMING_S = 6.0  # the move home here takes under 3 s at 70 % of the limits, the ramps under 1 s


def config() -> RuntimeConfig:
    from internvla_ros.paths import config_path

    return RuntimeConfig.from_yaml(config_path("conveyor_sorting.yaml"))


def drive(cell: SimulatedCell, streamer: CommandStreamer, act, start_ns: int, seconds: float) -> int:
    """Runs ``act`` through ``streamer`` into ``cell`` every control period for ``seconds``; returns the end time."""
    period_ns, now = cell.config.rates.control_period_ns, start_ns
    arm = streamer.arm.name
    while now < start_ns + seconds * NS_PER_S:
        for _ in range(period_ns // STEP_NS):
            now += STEP_NS
            cell.step(now, STEP_NS / NS_PER_S)
        positions = cell.joint_state().positions
        trajectory, forward = streamer.tick(now, act(now / NS_PER_S, positions), positions)
        if trajectory is not None:
            assert cell.submit_trajectory(arm, trajectory, now) is None
        for name, values in forward.items():
            assert cell.submit_forward_command(name, values, now) is None
    return now


def away(cell: SimulatedCell, on_limits: bool = False) -> tuple[CommandStreamer, int]:
    """The arm moved to a pose away from home (``on_limits``: fr3_joint2 on its upper and fr3_joint4 on its
    lower position limit, the rest at home), the gripper closed, the belt at its nominal speed."""
    cfg = cell.config
    streamer = CommandStreamer(cfg)
    index = np.array([cfg.joint_index[j] for j in streamer.arm.joints])
    limits = [cfg.joints[i].limits for i in index]
    goal = home_positions(cfg)[index]
    if on_limits:
        goal[1], goal[3] = limits[1].max_position, limits[3].min_position
    else:
        goal += np.array([0.8, -0.5, 0.6, -0.4, 0.7, 0.9, -1.0])
    move = plan_move(home_positions(cfg)[index], goal, np.array([lim.max_velocity for lim in limits]),
                     np.array([lim.max_acceleration for lim in limits]))
    gripper = cfg.grippers[0].closed_position
    sent = [False]

    def act(_: float, __: np.ndarray) -> ExpertCommand:
        first, sent[0] = not sent[0], True
        return ExpertCommand(move if first else None, gripper, 0.04)

    return streamer, drive(cell, streamer, act, NS_PER_S, move.duration_s + 2.0)


def test_homing_brings_arm_gripper_and_belt_home_within_the_limits_from_where_they_were_commanded() -> None:
    cell = SimulatedCell(config())
    streamer, now = away(cell)
    home = home_positions(cell.config)
    before = cell.joint_state()
    assert np.max(np.abs(before.positions - home)[:7]) > 0.5 and before.velocities[-1] > 0.03  # away, belt running
    agent = HomingAgent(cell.config, home)
    homing = CommandStreamer(cell.config, streamer.state)  # continues from the commands the controllers took
    drive(cell, homing, lambda t, p: agent.act(t, None, p), now, HOMING_S)
    after = cell.joint_state()
    assert np.max(np.abs(after.positions - home)[:8]) < 1e-3, after.positions - home
    assert abs(after.velocities[-1]) < 1e-3 and np.max(np.abs(after.velocities[:8])) < 1e-3
    assert (cell.limit_violations, cell.acceleration_violations) == (0, 0), cell.drain_violations()


def test_homing_that_ignored_the_last_commands_would_step_the_belt_and_gripper() -> None:
    """Why the runner tracks the forward commands: starting the ramps from rest at the measured joints (the
    streamer's default) steps the running belt's speed and the gripper's command, and the judge says so."""
    cell = SimulatedCell(config())
    _, now = away(cell)
    agent = HomingAgent(cell.config, home_positions(cell.config))
    drive(cell, CommandStreamer(cell.config), lambda t, p: agent.act(t, None, p), now, 1.0)
    messages = " ".join(cell.drain_violations())
    assert cell.limit_violations > 0 and "conveyor_speed" in messages, messages


def test_homing_from_an_arm_parked_on_its_position_limits_stays_inside_them() -> None:
    """An arm parked exactly on two position limits (a policy that pushed against them). The controller blends
    from its hold to the move's first point when the move arrives: a first point already under way (moving
    inwards) makes that blend dip outwards first, past the limit; the move starts at rest where the arm is."""
    cfg = config()
    cell = SimulatedCell(cfg)
    streamer, now = away(cell, on_limits=True)
    assert (cell.limit_violations, cell.acceleration_violations) == (0, 0), cell.drain_violations()
    home = home_positions(cfg)
    agent = HomingAgent(cfg, home)
    drive(cell, CommandStreamer(cfg, streamer.state), lambda t, p: agent.act(t, None, p), now, HOMING_S)
    assert np.max(np.abs(cell.joint_state().positions - home)[:8]) < 1e-3
    assert (cell.limit_violations, cell.acceleration_violations) == (0, 0), cell.drain_violations()


def test_a_move_home_from_an_arm_measured_past_a_limit_starts_on_the_limit_at_rest() -> None:
    cfg = config()
    agent = HomingAgent(cfg, home_positions(cfg))
    measured = home_positions(cfg).copy()
    joint4 = cfg.joint_index["fr3_joint4"]
    measured[joint4] = cfg.joints[joint4].limits.min_position - 2e-4  # a tracking error past it
    move = agent.act(0.0, None, measured).move
    assert move is not None and move.times_s[0] == 0.0
    assert move.positions[0][3] == cfg.joints[joint4].limits.min_position
    assert not move.velocities[0].any()
