"""Chunk plans on the time axis: interpolation between steps and smooth hand-overs."""

from __future__ import annotations

import numpy as np
import pytest

from internvla_ros.runtime.plan import BlendedSchedule, ChunkPlan, HoldSchedule, hand_over, smoothstep

STEP_NS = 33_333_333


def ramp_plan(origin_ns: int = 0, steps: int = 50, slope: float = 1.0, offset: float = 0.0) -> ChunkPlan:
    positions = (offset + slope * np.arange(steps, dtype=float))[:, np.newaxis]
    return ChunkPlan(positions, origin_ns=origin_ns, step_ns=STEP_NS, obs_stamp_ns=origin_ns, start_index=0)


def test_sample_interpolates_between_steps_and_clamps_at_the_ends() -> None:
    plan = ramp_plan(origin_ns=1_000)
    assert plan.sample(1_000 + 3 * STEP_NS)[0] == pytest.approx(3.0)
    assert plan.sample(1_000 + STEP_NS // 4)[0] == pytest.approx(0.25, abs=1e-6)
    assert plan.sample(1_000 + int(7.5 * STEP_NS))[0] == pytest.approx(7.5, abs=1e-6)
    assert plan.sample(0)[0] == 0.0  # before index 0: the first step
    assert plan.sample(1_000 + 100 * STEP_NS)[0] == 49.0  # after the end: the last step
    assert plan.end_ns == 1_000 + 49 * STEP_NS


def test_smoothstep_is_flat_at_both_ends() -> None:
    assert smoothstep(0.0) == 0.0 and smoothstep(1.0) == 1.0 and smoothstep(0.5) == 0.5
    assert smoothstep(-1.0) == 0.0 and smoothstep(2.0) == 1.0
    h = 1e-6
    assert smoothstep(h) / h == pytest.approx(0.0, abs=1e-5)
    assert (1.0 - smoothstep(1.0 - h)) / h == pytest.approx(0.0, abs=1e-5)


def test_hand_over_starts_at_the_old_schedule_and_ends_on_the_new_plan() -> None:
    old = HoldSchedule(np.array([5.0]))
    new = ramp_plan(offset=0.0, slope=0.0)
    start, duration = 10 * STEP_NS, 5 * STEP_NS
    schedule = hand_over(old, new, start, duration)
    assert schedule.sample(start)[0] == pytest.approx(5.0)
    assert schedule.sample(start + duration)[0] == pytest.approx(0.0)
    samples = np.array([schedule.sample(start + k * duration // 100)[0] for k in range(101)])
    assert (np.diff(samples) <= 0).all()  # monotonic, no overshoot
    assert np.abs(np.diff(samples)).max() <= 5.0 * 1.5 / 100 + 1e-9  # smoothstep's peak slope is 1.5


def test_without_blend_steps_the_new_plan_takes_over_at_once() -> None:
    schedule = hand_over(HoldSchedule(np.array([5.0])), ramp_plan(slope=0.0), 0, 0)
    assert isinstance(schedule, ChunkPlan)
    assert schedule.sample(0)[0] == 0.0


def test_settle_drops_finished_hand_overs() -> None:
    first = hand_over(HoldSchedule(np.array([1.0])), ramp_plan(), 0, 5 * STEP_NS)
    second = hand_over(first, ramp_plan(offset=2.0), 2 * STEP_NS, 5 * STEP_NS)
    assert isinstance(second, BlendedSchedule) and isinstance(second.previous, BlendedSchedule)
    assert second.settle(3 * STEP_NS).sample(3 * STEP_NS)[0] == pytest.approx(second.sample(3 * STEP_NS)[0])
    assert second.settle(7 * STEP_NS) is second.plan
