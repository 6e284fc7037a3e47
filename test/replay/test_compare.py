from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from internvla_ros.paths import config_path
from internvla_ros.replay.command_log import CommandLog, TrajectoryRecord, sample
from internvla_ros.replay.compare import Tolerance, compare
from internvla_ros.replay.errors import ReplayError
from internvla_ros.runtime import RuntimeConfig

MS = 1_000_000


def test_trajectory_timeline_is_replaced_and_interpolated() -> None:
    log = CommandLog(trajectories={"arm": [
        TrajectoryRecord(0, np.array([0, 100 * MS]), np.array([[0.0], [1.0]])),
        TrajectoryRecord(50 * MS, np.array([0, 100 * MS]), np.array([[2.0], [2.0]])),
    ]})
    values = sample(log, "arm", np.array([-MS, 0, 25 * MS, 50 * MS, 500 * MS]), ("j",)).positions[:, 0]
    assert np.isnan(values[0])
    assert values[1:].tolist() == [0.0, 0.25, 2.0, 2.0]


def test_identical_logs_pass_and_a_shifted_joint_fails() -> None:
    config = RuntimeConfig.from_yaml(config_path("conveyor_sorting.yaml"))
    stamps = range(0, 1000 * MS, 10 * MS)
    log = CommandLog(has_chunks=True, chunks=[(100 * MS, 0)])
    for controller in config.controllers:
        width = len(controller.joints)
        if controller.type == "joint_trajectory":
            log.trajectories[controller.name] = [TrajectoryRecord(0, np.array([0, MS]), np.zeros((2, width)))]
        else:
            log.forward[controller.name] = [(t, np.zeros(width)) for t in stamps]
    assert compare(log, log, config, Tolerance()).ok
    shifted = CommandLog(trajectories=log.trajectories, chunks=log.chunks, has_chunks=True,
                         forward={**log.forward, "conveyor_controller": [(t, np.full(1, 0.1)) for t in stamps]})
    result = compare(shifted, log, config, Tolerance())
    assert not result.ok
    assert [d.joint for d in result.joints if not d.ok] == ["conveyor_speed"]


def test_tolerance_file(tmp_path: Path) -> None:
    path = tmp_path / "tolerance.yaml"
    path.write_text("position: {max_abs: 0.1, joints: {conveyor_speed: {rms: 0.2}}}\ntiming: {max_ms: 5}\n")
    tolerance = Tolerance.from_yaml(path)
    assert tolerance.for_joint("conveyor_speed") == (0.1, 0.2)
    assert tolerance.for_joint("fr3_joint1") == (0.1, Tolerance().position_rms)
    assert tolerance.timing_max_ms == 5.0
    path.write_text("position: {maxabs: 0.1}\n")
    with pytest.raises(ReplayError, match="unknown keys"):
        Tolerance.from_yaml(path)
