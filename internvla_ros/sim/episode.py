"""The sorting task's ground truth, from a task and the cell it runs in (sim_robot publishes it).

`snapshot_of` is the `task/state` message: the task's snapshot plus stamp, measured gripper tip,
gripper opening and belt speed; `step_task` advances a task with the cell's measured state.
"""

from __future__ import annotations

from typing import Any

from internvla_ros.runtime.config import NS_PER_S
from internvla_ros.sim.cell import SimulatedCell
from internvla_ros.sim.layout import arm_layouts
from internvla_ros.sim.task import SortingTask


def snapshot_of(task: SortingTask, cell: SimulatedCell, now_ns: int) -> dict[str, Any]:
    """The ground truth the sim publishes on `task/state`: the task's snapshot plus stamp, tip, opening, belt."""
    config = cell.config
    state = cell.joint_state()
    arm = arm_layouts(config)[0]
    gripper = config.grippers[0]
    span = gripper.open_position - gripper.closed_position
    opening = (state.positions[config.joint_index[gripper.joint]] - gripper.closed_position) / span
    belt = next(j.name for j in config.joints if j.state_field == "velocity")
    return {**task.snapshot(), "stamp_s": now_ns / NS_PER_S, "tip": [round(v, 2) for v in arm.tip(state.positions)],
            "opening": round(float(opening), 4), "belt_speed_m_s": round(cell.speed_of(belt), 5)}


def step_task(task: SortingTask, cell: SimulatedCell, now_ns: int) -> list[Any]:
    """Advances the task with the cell's measured state; returns the outcomes decided."""
    snap = snapshot_of(task, cell, now_ns)
    belt = next(j.name for j in cell.config.joints if j.state_field == "velocity")
    return task.step(now_ns / NS_PER_S, cell.position_of(belt), tuple(snap["tip"]), snap["opening"])
