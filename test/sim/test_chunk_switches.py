"""The hand-over judge: how far a published chunk disagrees with the one it replaces, at its arrival."""

from __future__ import annotations

import numpy as np
import pytest

from internvla_ros.sim.chunk_switches import SwitchJudge, switch_summary

STEP = 100_000_000  # 0.1 s
JOINTS = ("a", "b", "gripper")


def line(origin_s: float, velocity: tuple[float, float], start: tuple[float, float] = (0.0, 0.0),
         gripper: float = 0.0, horizon: int = 10) -> list[float]:
    """A chunk whose rows follow start + velocity * t (t from 0 at ``origin_s``), gripper column constant."""
    rows = [[start[0] + velocity[0] * (origin_s + i * 0.1), start[1] + velocity[1] * (origin_s + i * 0.1), gripper]
            for i in range(horizon)]
    return list(np.asarray(rows).ravel())


def ns(seconds: float) -> int:
    return round(seconds * 1e9)


def test_chunks_on_one_straight_motion_hand_over_without_a_jump() -> None:
    judge = SwitchJudge(JOINTS, ("a", "b"), "delay_compensated")
    assert judge.add(1, ns(0.25), ns(0.0), STEP, line(0.0, (1.0, -0.5))) is None  # nothing to compare with yet
    switch = judge.add(2, ns(0.55), ns(0.3), STEP, line(0.3, (1.0, -0.5)))
    assert switch is not None
    assert switch.position_gap == pytest.approx(0.0, abs=1e-12) and switch.velocity_jump == pytest.approx(0.0, abs=1e-9)


def test_a_new_velocity_is_the_jump_and_the_offset_at_the_arrival_the_gap() -> None:
    judge = SwitchJudge(JOINTS, ("a", "b"), "rtc")
    judge.add(1, ns(0.25), ns(0.0), STEP, line(0.0, (1.0, 0.0)))
    # Rows for t = 0.3 + 0.1 i: joint a at 2 rad/s from 0.1 at t = 0.3 (the old chunk is at 0.5 there)
    # and joint b at -3 rad/s; at the arrival t = 0.55: a old 0.55, new 0.1 + 2 * 0.25 = 0.6.
    new = [[0.1 + 2.0 * 0.1 * i, -3.0 * 0.1 * i, 1.0] for i in range(10)]
    switch = judge.add(2, ns(0.55), ns(0.3), STEP, list(np.asarray(new).ravel()))
    assert switch is not None
    assert switch.velocity_jump == pytest.approx(3.0)  # joint b: 0 -> -3 rad/s; joint a only 1 -> 2
    assert switch.position_gap == pytest.approx(0.75)  # joint b: 0 -> -0.75; the gripper's 0 -> 1 is not judged
    assert judge.take() == [switch] and judge.take() == []


def test_a_chunk_after_one_that_was_not_seen_is_not_compared() -> None:
    judge = SwitchJudge(JOINTS, ("a",), "delay_compensated")
    judge.add(1, ns(0.25), 0, STEP, line(0.0, (1.0, 0.0)))
    assert judge.add(3, ns(0.55), ns(0.3), STEP, line(0.3, (5.0, 0.0))) is None
    assert judge.add(4, ns(0.85), ns(0.6), STEP, line(0.3, (5.0, 0.0))) is not None


def test_modes_that_start_a_chunk_on_arrival_place_its_rows_from_the_arrival() -> None:
    # The same rows: placed at the arrival they continue the old motion exactly; placed at the observation
    # stamp they would lie 0.25 s (0.25 rad) behind it.
    for mode, gap in (("uncompensated", 0.0), ("delay_compensated", 0.25)):
        judge = SwitchJudge(JOINTS, ("a",), mode)
        judge.add(1, ns(0.25), 0, STEP, line(0.25 if mode == "uncompensated" else 0.0, (1.0, 0.0)))
        switch = judge.add(2, ns(0.55), ns(0.3), STEP, line(0.55, (1.0, 0.0)))
        assert switch is not None and switch.position_gap == pytest.approx(gap)


def test_past_its_last_row_a_chunk_holds_still() -> None:
    judge = SwitchJudge(JOINTS, ("a",), "delay_compensated")
    judge.add(1, ns(0.2), 0, STEP, line(0.0, (1.0, 0.0), horizon=3))  # ends at 0.2 s, at 0.2 rad
    switch = judge.add(2, ns(2.0), ns(1.9), STEP, line(0.0, (0.0, 0.0), start=(0.2, 0.0)))
    assert switch is not None and switch.velocity_jump == 0.0 and switch.position_gap == pytest.approx(0.0)


def test_judged_joints_must_be_among_the_chunks_columns() -> None:
    with pytest.raises(ValueError, match=r"judged joints \['elbow'\] are not among"):
        SwitchJudge(JOINTS, ("a", "elbow"), "rtc")


def test_summary_gives_median_90th_percentile_and_largest_and_none_without_a_switch() -> None:
    assert switch_summary([0.1, 0.3, 0.2], [1.0, 4.0, 2.0]) == {
        "switches": 3, "velocity_jump_p50": 2.0, "velocity_jump_p90": 3.6, "velocity_jump_max": 4.0,
        "position_gap_p50": 0.2, "position_gap_p90": 0.28, "position_gap_max": 0.3}
    assert switch_summary([], [])["velocity_jump_max"] is None


def test_a_chunk_of_another_shape_is_counted_and_not_compared() -> None:
    judge = SwitchJudge(JOINTS, ("a",), "delay_compensated")
    judge.add(1, ns(0.25), 0, STEP, line(0.0, (1.0, 0.0)))
    assert judge.add(2, ns(0.55), ns(0.3), STEP, [0.0, 1.0]) is None  # 2 values for 3 joints
    assert judge.add(3, ns(0.85), ns(0.6), STEP, line(0.6, (1.0, 0.0))) is None  # nothing judged to compare with
    assert judge.add(4, ns(1.15), ns(0.9), STEP, line(0.9, (1.0, 0.0))) is not None
    assert judge.unjudged == 1
