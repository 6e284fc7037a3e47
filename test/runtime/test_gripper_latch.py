"""A threshold gripper with ``min_hold_s`` keeps each open or close that long, whatever later chunks say."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from internvla_ros.runtime.config import RuntimeConfig, RuntimeConfigError
from internvla_ros.runtime.gripper_latch import GripperLatch
from internvla_ros.runtime.observation import Observation

from .harness import CHUNK, MS, SimLoop, SimRobot, make_config, make_runtime, padded, parameters
from .motion_checks import assert_commands_within, forward_values

OPEN, CLOSED = 0.08, 0.0  # the harness gripper's positions
GRIPPER = 2  # its column in the config's joint order


def target(gripper: float) -> np.ndarray:
    return np.array([0.3, -0.2, gripper, 0.1])


def test_a_change_is_kept_for_the_hold_then_follows_the_target() -> None:
    latch = GripperLatch(make_config(grippers__gripper__min_hold_s=0.5))
    assert latch.apply(target(OPEN), 0)[GRIPPER] == OPEN
    assert latch.apply(target(CLOSED), 100 * MS)[GRIPPER] == CLOSED  # the first change is free
    for t_ms in (101, 300, 599):  # a later chunk reopens at once: held closed
        held = latch.apply(target(OPEN), t_ms * MS)
        assert held[GRIPPER] == CLOSED
        assert held[[0, 1, 3]].tolist() == [0.3, -0.2, 0.1]  # the other joints as given
    assert latch.apply(target(OPEN), 600 * MS)[GRIPPER] == OPEN
    assert latch.apply(target(CLOSED), 700 * MS)[GRIPPER] == OPEN  # the hold guards the opening too


def test_a_blended_target_snaps_to_the_nearer_position() -> None:
    latch = GripperLatch(make_config(grippers__gripper__min_hold_s=0.5))
    assert latch.apply(target(0.05), 0)[GRIPPER] == OPEN
    latch.reset()
    assert latch.apply(target(0.03), 0)[GRIPPER] == CLOSED


def test_after_a_reset_the_first_target_is_taken_and_may_change_at_once() -> None:
    latch = GripperLatch(make_config(grippers__gripper__min_hold_s=0.5))
    latch.apply(target(OPEN), 0)
    latch.apply(target(CLOSED), 10 * MS)
    latch.reset()  # a pause or hold: the fingers may have been reopened by hand
    assert latch.apply(target(OPEN), 20 * MS)[GRIPPER] == OPEN
    assert latch.apply(target(CLOSED), 30 * MS)[GRIPPER] == CLOSED


def test_without_a_hold_the_target_passes_unchanged() -> None:
    latch = GripperLatch(make_config())
    assert not latch.active
    assert latch.apply(target(0.03), 0)[GRIPPER] == 0.03


@pytest.mark.parametrize(("changes", "words"), [
    ({"grippers.gripper.min_hold_s": -0.1}, ["grippers.gripper.min_hold_s", "out of range"]),
    ({"grippers.gripper.min_hold_s": 0.5, "grippers.gripper.mode": "scale"}, ["min_hold_s", "threshold"]),
    ({"grippers.gripper.min_hold_s": 0.5, "controllers.arm_controller.joints": ["shoulder", "elbow", "gripper"],
      "controllers.gripper_controller.joints": [], "controllers.names": ["arm_controller", "belt_controller"]},
     ["min_hold_s", "joint_trajectory", "forward_command"]),
], ids=["negative", "scale-mode", "trajectory-controller"])
def test_a_hold_that_cannot_apply_is_refused_by_name(changes: dict, words: list[str]) -> None:
    params = parameters()
    params.update(changes)
    with pytest.raises(RuntimeConfigError) as caught:
        RuntimeConfig.from_parameters(params)
    message = str(caught.value)
    assert message.startswith("grippers.gripper.min_hold_s"), message
    assert all(word in message for word in words), message


def first_close_then_open_policy() -> Callable[[Observation], np.ndarray]:
    """The first chunk closes at once; every later one says open for its whole horizon (a policy that
    changed its mind about when to close, as consecutive chunks of a trained policy do)."""
    calls = []

    def policy(observation: Observation) -> np.ndarray:
        calls.append(observation.stamp_ns)
        actions = np.zeros((CHUNK, 4))
        actions[:, 2] = 1.0 if len(calls) == 1 else 0.0
        return padded(actions)

    return policy


def closed_span_s(tmp_path: Path, min_hold_s: float) -> float:
    """How long the commanded gripper stays in its closed half after the policy's one close, in a closed loop."""
    runtime = make_runtime(tmp_path, grippers__gripper__min_hold_s=min_hold_s)
    fields = tuple(j.state_field for j in runtime.config.joints)
    robot = SimRobot(np.array([0.0, 0.0, OPEN, 0.0]), fields)  # the fingers start open
    loop = SimLoop(runtime, first_close_then_open_policy(), latency_ns=100 * MS, robot=robot)
    loop.start()
    outputs = loop.run_until(2_000 * MS).outputs
    values = forward_values(outputs, [GRIPPER])
    config = runtime.config
    limits = config.joints[GRIPPER].limits
    assert_commands_within(values, config.rates.control_period_ns / 1e9, np.array([limits.min_position]),
                           np.array([limits.max_position]), np.array([limits.max_velocity]),
                           np.array([limits.max_acceleration]))
    closed = np.flatnonzero(values[:, 0] < (OPEN + CLOSED) / 2)
    assert closed.size and values[-1, 0] == pytest.approx(OPEN)  # closed once, open at the end
    began = next(o.stamp_ns for o in outputs if o.positions[GRIPPER] < OPEN)
    return (outputs[closed[-1]].stamp_ns - began) / 1e9


def test_in_a_closed_loop_the_close_is_kept_for_the_hold(tmp_path: Path) -> None:
    held = closed_span_s(tmp_path, 0.5)
    unheld = closed_span_s(tmp_path, 0.0)
    # The fingers start closing with the first chunk; the second (200 ms later) reopens them at once unless
    # the latch holds the close for 0.5 s (the fingers then take about 0.1 s to pass their half-way mark).
    assert unheld < 0.35 and held > 0.5, (unheld, held)
