"""The execution modes on their own: where each places a chunk, when it wants an observation, how it hands over."""

from __future__ import annotations

import numpy as np
import pytest

from internvla_ros.runtime.config import EXECUTION_MODES
from internvla_ros.runtime.execution import execution_mode
from internvla_ros.runtime.plan import HoldSchedule

from .harness import CHUNK, MS, make_config

STEP_NS = 33_333_333  # the harness's 30 Hz chunk step


def chunk(start: float = 1.0) -> np.ndarray:
    """A (CHUNK, 4) joint-space chunk whose step k sits at start + k."""
    return start + np.repeat(np.arange(CHUNK, dtype=np.float64)[:, None], 4, axis=1)


@pytest.mark.parametrize("name", EXECUTION_MODES)
def test_every_configurable_mode_is_implemented(name: str) -> None:
    assert execution_mode(make_config(execution__mode=name)).name == name


def test_delay_compensated_starts_where_the_robot_would_be_without_latency() -> None:
    mode = execution_mode(make_config(execution__mode="delay_compensated"))
    plan = mode.plan(chunk(), obs_stamp_ns=1_000, ready_ns=1_000 + 250 * MS)  # 7.5 steps: rounds up
    assert plan is not None and plan.start_index == 8 and plan.origin_ns == 1_000
    assert mode.plan(chunk(), obs_stamp_ns=0, ready_ns=CHUNK * STEP_NS) is None  # all of it in the past


def test_uncompensated_starts_at_index_0_on_arrival_and_observes_on_its_grid() -> None:
    mode = execution_mode(make_config(execution__mode="uncompensated"))
    plan = mode.plan(chunk(), obs_stamp_ns=0, ready_ns=5 * STEP_NS)
    assert plan is not None and plan.start_index == 0 and plan.origin_ns == 5 * STEP_NS
    assert mode.overruns_apply
    assert not mode.observation_due(plan, now_ns=99, next_inference_ns=100)
    assert mode.observation_due(plan, now_ns=100, next_inference_ns=100)


def test_reference_executes_its_steps_then_observes_again() -> None:
    mode = execution_mode(make_config(execution__mode="reference", execution__reference_steps=10))
    assert mode.observation_due(None, now_ns=0, next_inference_ns=10**12)  # no plan yet: observe now
    plan = mode.plan(chunk(), obs_stamp_ns=0, ready_ns=0)
    assert plan is not None and plan.steps == 10 and not mode.overruns_apply
    assert not mode.observation_due(plan, now_ns=plan.end_ns - 1, next_inference_ns=0)
    assert mode.observation_due(plan, now_ns=plan.end_ns, next_inference_ns=10**12)


def test_hand_over_blends_over_blend_steps_then_follows_the_new_chunk() -> None:
    mode = execution_mode(make_config(execution__mode="uncompensated", execution__blend_steps=4))
    held = np.zeros(4)
    plan = mode.plan(chunk(), obs_stamp_ns=0, ready_ns=0)
    assert plan is not None
    schedule = mode.hand_over(HoldSchedule(held), plan, start_ns=0)
    middle = schedule.sample(2 * STEP_NS)
    assert np.all(middle > held) and np.all(middle < plan.sample(2 * STEP_NS))
    assert np.array_equal(schedule.sample(4 * STEP_NS), plan.sample(4 * STEP_NS))
    assert schedule.settle(4 * STEP_NS) is plan
