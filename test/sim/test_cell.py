"""The simulated cell: controllers drive the joints, bad commands are refused and counted."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from internvla_ros.runtime.config import RuntimeConfig
from internvla_ros.sim.cell import SimulatedCell
from internvla_ros.sim.layout import arm_layouts
from internvla_ros.sim.render import HEAD_SIZE, WRIST_SIZE, WRIST_TIP_AT, CellRenderer, wrist_tip_at_from_yaml
from internvla_ros.sim.trajectory import Trajectory, TrajectoryPoint

CONFIG_DIR = Path(__file__).resolve().parents[2] / "config"
MS = 1_000_000


def load(cell: str) -> RuntimeConfig:
    return RuntimeConfig.from_yaml(CONFIG_DIR / f"{cell}.yaml")


def run(cell: SimulatedCell, start_ns: int, seconds: float, dt_s: float = 0.005) -> int:
    now = start_ns
    for _ in range(int(seconds / dt_s)):
        now += int(dt_s * 1e9)
        cell.step(now, dt_s)
    return now


def test_arm_follows_a_trajectory_and_gripper_a_forward_command() -> None:
    config = load("dual_arm")
    cell = SimulatedCell(config)
    arm = next(c for c in config.controllers if c.name == "left_arm_controller")
    start = cell.joint_state().positions[[config.joint_index[j] for j in arm.joints]]
    target = start + 0.2
    # A cubic from rest to rest: peak 0.6 rad/s and 4.8 rad/s^2, inside the arm's 1.5 and 8.
    trajectory = Trajectory(arm.joints, 0, (TrajectoryPoint(target, np.zeros(7), 500 * MS),))
    assert cell.submit_trajectory("left_arm_controller", trajectory, 0) is None
    gripper = 0.08 - 0.0004 * np.arange(1, 11) ** 2 / 2  # accelerating closing: steps <= 3.8 mm (limit 4)
    for k, value in enumerate(gripper):
        assert cell.submit_forward_command("left_gripper_controller", np.array([value]), k * 20 * MS) is None
    run(cell, 0, 1.0)
    measured = cell.joint_state().positions
    np.testing.assert_allclose(measured[[config.joint_index[j] for j in arm.joints]], target, atol=1e-3)
    assert cell.position_of("left_gripper_joint") == pytest.approx(gripper[-1], abs=1e-3)
    assert (cell.limit_violations, cell.acceleration_violations) == (0, 0), cell.drain_violations()
    assert cell.accepted["left_arm_controller"] == 1


def test_out_of_limit_and_non_finite_commands_are_counted_or_dropped() -> None:
    cell = SimulatedCell(load("dual_arm"))
    assert cell.submit_forward_command("left_gripper_controller", np.array([0.5])) is None  # limit is 0.08
    messages = cell.drain_violations()
    assert any(m.startswith("left_gripper_controller: left_gripper_joint position 0.5 outside [0.0, 0.08]")
               for m in messages), messages
    assert cell.limit_violations == 3  # outside the range, a step above max_velocity * period, above max_jump
    assert "non-finite" in cell.submit_forward_command("left_gripper_controller", np.array([np.nan]))
    assert "1 joints" in cell.submit_forward_command("left_gripper_controller", np.array([0.0, 0.0]))
    assert cell.rejected["left_gripper_controller"] == 2


def test_conveyor_joint_is_commanded_in_speed_and_integrates_travel() -> None:
    cell = SimulatedCell(load("conveyor_sorting"))
    assert cell.submit_forward_command("conveyor_controller", np.array([0.2])) is None
    assert cell.limit_violations > 0  # 0 -> 0.2 m/s at once: above the belt's rate and jump limits
    run(cell, 0, 2.0)
    assert cell.speed_of("conveyor_speed") == pytest.approx(0.2, rel=1e-3)
    assert cell.position_of("conveyor_speed") == pytest.approx(0.2 * 2.0, rel=0.05)


@pytest.mark.parametrize("cell_name", ["dual_arm", "conveyor_sorting"])
def test_every_camera_renders_and_the_scene_moves_with_the_robot(cell_name: str) -> None:
    config = load(cell_name)
    cell = SimulatedCell(config)
    renderer = CellRenderer(config)
    before = {c.name: renderer.render(c.name, cell.joint_state()) for c in config.cameras}
    for camera in config.cameras:
        expected = HEAD_SIZE if camera.slot == 0 else WRIST_SIZE
        assert before[camera.name].shape == (*expected, 3)
        assert before[camera.name].dtype == np.uint8
    arm = next(c for c in config.controllers if c.type == "joint_trajectory")
    index = [config.joint_index[j] for j in arm.joints]
    target = cell.joint_state().positions[index] + 0.5
    cell.submit_trajectory(arm.name, Trajectory(arm.joints, 0, (TrajectoryPoint(target, None, 200 * MS),)), 0)
    run(cell, 0, 0.5)
    after = renderer.render("head", cell.joint_state())
    assert np.abs(after.astype(int) - before["head"].astype(int)).sum() > 0


def test_forward_commands_lost_on_the_way_are_counted_not_judged_as_a_step() -> None:
    """A starved reader loses commands from its queue (a sequence gap): the step across the gap was never
    commanded, so it is counted as lost; without sequence numbers the same gap reads as a violation."""
    config = load("conveyor_sorting")
    steps = np.minimum(0.0005 * np.arange(1, 31), 0.005)  # the belt speeding up within its rate and jerk limits
    speeds = np.cumsum(steps)
    for numbered in (True, False):
        cell = SimulatedCell(config)
        for k, speed in enumerate(speeds):
            if k == 12:
                continue  # this command never reaches the reader
            cell.submit_forward_command("conveyor_controller", np.array([speed]), k * 10 * MS,
                                        k + 1 if numbered else None)
        violations = cell.drain_violations()
        if numbered:
            assert cell.commands_lost == 1 and violations == []
        else:
            assert cell.commands_lost == 0 and any("conveyor_speed step" in v for v in violations), violations


@pytest.mark.parametrize("tip_at", [0.8, 0.5])
def test_the_wrist_camera_puts_the_gripper_tip_where_the_config_says(tip_at: float) -> None:
    """The wrist crop's rows are the head view's rows tip_y - 120 * tip_at ... : read back from a head view
    whose every row is painted with its own row number."""
    config = load("conveyor_sorting")
    state = SimulatedCell(config).joint_state()
    tip_y = arm_layouts(config)[0].chain(state.positions)[-1][1]
    rows = np.repeat((np.arange(HEAD_SIZE[0]) // 2).astype(np.uint8)[:, None], HEAD_SIZE[1], axis=1)
    scene = np.repeat(rows[:, :, None], 3, axis=2)
    wrist = CellRenderer(config, wrist_tip_at=tip_at).render("wrist", state, scene=scene)
    centre_row = float(wrist[WRIST_SIZE[0] // 2, :, 0].mean()) * 2  # the head row at the crop's middle
    assert centre_row == pytest.approx(tip_y + 120 * (0.5 - tip_at), abs=3.0)


def test_the_wrist_camera_setting_is_read_from_the_sims_block_and_checked(tmp_path: Path) -> None:
    text = (CONFIG_DIR / "conveyor_sorting.yaml").read_text(encoding="utf-8")
    assert wrist_tip_at_from_yaml(CONFIG_DIR / "conveyor_sorting.yaml") == WRIST_TIP_AT
    assert wrist_tip_at_from_yaml(CONFIG_DIR / "dual_arm.yaml") == WRIST_TIP_AT  # no sim section: the default
    for value, problem in (("0.5", None), ("near", "number"), ("true", "number")):
        path = tmp_path / "cell.yaml"
        path.write_text(text.replace("wrist_camera: {tip_at: 0.8}", f"wrist_camera: {{tip_at: {value}}}"))
        if problem is None:
            assert wrist_tip_at_from_yaml(path) == 0.5
        else:
            with pytest.raises(ValueError, match=problem):
                wrist_tip_at_from_yaml(path)
    path.write_text(text.replace("wrist_camera: {tip_at: 0.8}", "wrist_camera: {tip: 0.5}"))
    with pytest.raises(ValueError, match=r"unknown \['tip'\]"):
        wrist_tip_at_from_yaml(path)
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        CellRenderer(load("conveyor_sorting"), wrist_tip_at=1.5)
