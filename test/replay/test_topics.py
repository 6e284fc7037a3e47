from __future__ import annotations

import pytest

from internvla_ros.paths import config_path
from internvla_ros.replay.errors import ReplayError
from internvla_ros.replay.topics import TopicMap, input_namespaces, resolve
from internvla_ros.runtime import RuntimeConfig


def test_resolve_like_rcl() -> None:
    assert resolve("joint_states", "/") == "/joint_states"
    assert resolve("joint_states", "cell_2/") == "/cell_2/joint_states"
    assert resolve("~/status", "/cell_2") == "/cell_2/policy_node/status"
    assert resolve("/clock", "/cell_2") == "/clock"


def test_namespace_and_remaps_apply_to_inputs_and_outputs() -> None:
    config = RuntimeConfig.from_yaml(config_path("conveyor_sorting.yaml"))
    topics = TopicMap.from_config(config, "/cell_2", ["joint_states:=/robot/joint_states",
                                                      "~/status:=/monitor/status"])
    assert topics.joint_states == "/robot/joint_states"
    assert topics.cameras["head"] == "/cell_2/cameras/head/image_raw"
    assert topics.compressed("wrist") == "/cell_2/cameras/wrist/image_raw/compressed"
    assert topics.trajectories == {"arm_controller": "/cell_2/arm_controller/joint_trajectory"}
    assert topics.forward["conveyor_controller"] == "/cell_2/conveyor_controller/commands"
    assert topics.action_chunk == "/cell_2/policy_node/action_chunk"
    assert topics.status == "/monitor/status"


def test_bad_remap_is_named() -> None:
    config = RuntimeConfig.from_yaml(config_path("conveyor_sorting.yaml"))
    with pytest.raises(ReplayError, match="FROM:=TO"):
        TopicMap.from_config(config, "/", ["joint_states=/x"])


def test_namespaces_holding_every_input() -> None:
    config = RuntimeConfig.from_yaml(config_path("conveyor_sorting.yaml"))
    cell = ["/plant/cell_2/joint_states", "/plant/cell_2/cameras/head/image_raw",
            "/plant/cell_2/cameras/wrist/image_raw/compressed", "/plant/cell_2/instruction"]
    assert input_namespaces(config, cell) == ["/plant/cell_2"]
    assert input_namespaces(config, cell[:2]) == []  # no wrist camera
    root = ["/joint_states", "/cameras/head/image_raw", "/cameras/wrist/image_raw"]
    assert input_namespaces(config, cell + root) == ["/", "/plant/cell_2"]
    # joint_states recorded elsewhere, remapped as the node was: the cameras' namespace still qualifies
    moved = ["/robot/joint_states", *cell[1:]]
    assert input_namespaces(config, moved) == []
    assert input_namespaces(config, moved, ["joint_states:=/robot/joint_states"]) == ["/plant/cell_2"]
