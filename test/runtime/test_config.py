"""Config loading: the shipped parameter files load; every bad value names its dotted key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from internvla_ros.runtime.config import RuntimeConfig
from internvla_ros.runtime.errors import RuntimeConfigError
from internvla_ros.runtime.params import flatten_parameters

from .harness import BASE_PARAMETERS, make_config, parameters

CONFIG_DIR = Path(__file__).resolve().parents[2] / "config"


def test_dual_arm_loads_as_genie1_layout() -> None:
    config = RuntimeConfig.from_yaml(CONFIG_DIR / "dual_arm.yaml")
    assert config.dim == 16
    assert [c.name for c in config.cameras] == ["head", "left_wrist", "right_wrist"]
    assert [c.slot for c in config.cameras] == [0, 1, 2]
    assert config.absolute_mask == (False,) * 14 + (True, True)
    types = {c.name: c.type for c in config.controllers}
    assert types == {
        "left_arm_controller": "joint_trajectory",
        "right_arm_controller": "joint_trajectory",
        "left_gripper_controller": "forward_command",
        "right_gripper_controller": "forward_command",
    }
    assert [g.joint for g in config.grippers] == ["left_gripper_joint", "right_gripper_joint"]
    assert config.rates.foresight_rate_hz == config.rates.inference_rate_hz


def test_conveyor_sorting_loads_with_a_velocity_joint() -> None:
    config = RuntimeConfig.from_yaml(CONFIG_DIR / "conveyor_sorting.yaml")
    assert config.dim == 9
    belt = config.joints[config.joint_index["conveyor_speed"]]
    assert belt.state_field == "velocity"
    conveyor = next(c for c in config.controllers if c.name == "conveyor_controller")
    assert conveyor.type == "forward_command"
    assert conveyor.joints == ("conveyor_speed",)
    assert config.rates.control_rate_hz > config.rates.chunk_step_hz


@pytest.mark.parametrize("name", ["dual_arm.yaml", "conveyor_sorting.yaml"])
def test_shipped_files_are_ros_parameter_files(name: str) -> None:
    """Every value is a ROS parameter: a scalar or a flat single-type list under ros__parameters."""
    document = yaml.safe_load((CONFIG_DIR / name).read_text())
    flat = flatten_parameters(document["/**/policy_node"]["ros__parameters"])  # any namespace
    for key, value in flat.items():
        assert isinstance(value, bool | int | float | str | list), key
        if isinstance(value, list):
            assert len({type(v) for v in value}) == 1, key


def test_defaults_fill_optional_rates() -> None:
    config = make_config(rates__chunk_step_hz=None)
    assert config.rates.chunk_step_hz == 30.0
    assert config.rates.foresight_rate_hz == config.rates.inference_rate_hz
    assert config.rates.foresight_preview_rate_hz == 0.0
    assert config.execution.chunk_size == 50 and config.execution.action_dim == 32
    assert config.execution.frame_history_steps == 15


BAD_VALUES = [
    # (dotted key, bad value, words the message must contain)
    ("robot_type", "", ["robot_type", "non-empty string"]),
    ("robot_type", 3, ["robot_type", "string"]),
    ("rates.control_rate_hz", 50, ["rates.control_rate_hz", "float", "50.0"]),
    ("rates.control_rate_hz", -1.0, ["rates.control_rate_hz", "out of range", "(0.0, 1000.0]"]),
    ("rates.control_rate_hz", 2.0, ["rates.control_rate_hz", "inference_rate_hz"]),
    ("rates.inference_rate_hz", 0.0, ["rates.inference_rate_hz", "out of range"]),
    ("rates.inference_rate_hz", 0.5, ["rates.inference_rate_hz", "chunk lasts"]),
    ("rates.inference_rate_hz", "fast", ["rates.inference_rate_hz", "float"]),
    ("rates.foresight_rate_hz", 10.0, ["rates.foresight_rate_hz", "out of range", "5.0"]),
    ("rates.foresight_preview_rate_hz", -1.0, ["rates.foresight_preview_rate_hz", "out of range"]),
    ("rates.chunk_step_hz", float("nan"), ["rates.chunk_step_hz", "out of range"]),
    ("execution.mode", "fastest", ["execution.mode", "delay_compensated"]),
    ("execution.blend_steps", -1, ["execution.blend_steps", "[0, 49]"]),
    ("execution.blend_steps", 2.0, ["execution.blend_steps", "integer"]),
    ("execution.reference_steps", 51, ["execution.reference_steps", "[1, 50]"]),
    ("execution.action_dim", 3, ["execution.action_dim", "4 configured joints"]),
    ("execution.frame_history_steps", True, ["execution.frame_history_steps", "integer"]),
    ("safety.max_jump", 0.0, ["safety.max_jump", "out of range"]),
    ("safety.camera_max_age_s", 11.0, ["safety.camera_max_age_s", "out of range", "10.0"]),
    ("safety.joint_state_max_age_s", 0.0, ["safety.joint_state_max_age_s", "out of range"]),
    ("safety.dry_run", "yes", ["safety.dry_run", "true or false"]),
    ("joints.names", ["a", "a"], ["joints.names", "unique"]),
    ("joints.names", [], ["joints.names", "non-empty list"]),
    ("joints.limits.elbow.max_velocity", 0.0, ["joints.limits.elbow.max_velocity", "out of range"]),
    ("joints.limits.elbow.max_acceleration", 1, ["joints.limits.elbow.max_acceleration", "float"]),
    ("joints.limits.elbow.max_position", -1.5, ["joints.limits.elbow.max_position", "greater than"]),
    ("joints.limits.elbow.state_field", "effort", ["joints.limits.elbow.state_field", "position"]),
    ("joints.limits.elbow.max_jump", -0.1, ["joints.limits.elbow.max_jump", "out of range"]),
    ("cameras.names", ["a", "b", "c", "d"], ["cameras.names", "3 image slots"]),
    ("cameras.wrist.slot", 3, ["cameras.wrist.slot", "[0, 2]"]),
    ("cameras.wrist.slot", 0, ["cameras.wrist.slot", "one camera"]),
    ("cameras.head.topic", 5, ["cameras.head.topic", "string"]),
    ("controllers.arm_controller.type", "effort", ["controllers.arm_controller.type", "joint_trajectory"]),
    ("controllers.arm_controller.joints", ["shoulder", "wrist"], ["controllers.arm_controller.joints", "wrist"]),
    ("controllers.arm_controller.joints", ["shoulder"], ["controllers.names", "elbow"]),
    ("controllers.belt_controller.joints", ["belt", "gripper"], ["controllers.belt_controller.joints", "already"]),
    ("action.absolute_mask", [False, False, True], ["action.absolute_mask", "4"]),
    ("action.absolute_mask", [0, 0, 1, 1], ["action.absolute_mask", "booleans"]),
    ("action.absolute_mask", [False, False, False, True], ["action.absolute_mask", "gripper"]),
    ("grippers.gripper.mode", "pwm", ["grippers.gripper.mode", "threshold"]),
    ("grippers.gripper.threshold", 1.5, ["grippers.gripper.threshold", "[0.0, 1.0]"]),
    ("grippers.gripper.closed_position", 0.08, ["grippers.gripper.closed_position", "differ"]),
    ("grippers.names", ["claw"], ["grippers.names", "claw"]),
    ("rates.typo_hz", 1.0, ["rates.typo_hz", "unknown parameter"]),
    ("joints.limits.wrist.max_velocity", 1.0, ["joints.limits.wrist", "not in joints.names"]),
]


@pytest.mark.parametrize(("key", "value", "words"), BAD_VALUES, ids=[f"{k}={v!r}" for k, v, _ in BAD_VALUES])
def test_bad_value_names_the_key(key: str, value: object, words: list[str]) -> None:
    params = parameters()
    params[key] = value
    with pytest.raises(RuntimeConfigError) as caught:
        RuntimeConfig.from_parameters(params)
    message = str(caught.value)
    assert message.startswith(words[0]), message
    for word in words[1:]:
        assert word in message, message


@pytest.mark.parametrize("key", sorted(k for k in BASE_PARAMETERS if not k.startswith("grippers")))
def test_missing_required_key_is_named(key: str) -> None:
    optional = {"execution.blend_steps", "execution.reference_steps", "rates.chunk_step_hz", "grippers.names"}
    optional |= {k for k in BASE_PARAMETERS if k.startswith("joints.limits.") and k.endswith(("_jump", "_field"))}
    params = parameters()
    del params[key]
    if key in optional:
        RuntimeConfig.from_parameters(params)
        return
    with pytest.raises(RuntimeConfigError, match=rf"^{key.split('.')[0]}"):
        RuntimeConfig.from_parameters(params)


def test_yaml_errors_name_the_node_and_file(tmp_path: Path) -> None:
    path = tmp_path / "robot.yaml"
    path.write_text("other_node:\n  ros__parameters: {robot_type: x}\n")
    with pytest.raises(RuntimeConfigError, match=r"policy_node\.ros__parameters: not found"):
        RuntimeConfig.from_yaml(path)
    path.write_text("policy_node: [1, 2\n")
    with pytest.raises(RuntimeConfigError, match="cannot read"):
        RuntimeConfig.from_yaml(path)


def test_other_parameters_are_ignored_only_when_named() -> None:
    params = parameters(model_path="models/default", use_sim_time=True)
    assert RuntimeConfig.from_parameters(params, ignore={"model_path", "use_sim_time"}) == make_config()
    with pytest.raises(RuntimeConfigError, match=r"^model_path: unknown parameter"):
        RuntimeConfig.from_parameters(params, ignore={"use_sim_time"})


def test_yaml_wildcard_node_and_nesting(tmp_path: Path) -> None:
    """``/**`` works, and nested YAML maps to the same dotted names the node receives."""
    nested: dict = {}
    for key, value in parameters().items():
        node = nested
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    path = tmp_path / "robot.yaml"
    path.write_text(yaml.safe_dump({"/**": {"ros__parameters": nested}}))
    assert RuntimeConfig.from_yaml(path) == make_config()


@pytest.mark.parametrize(
    ("tree", "words"),
    [
        ({"a": {"b": None}}, ["a.b", "empty value"]),
        ({"a": [1, 2.0]}, ["a", "one scalar type"]),
        ({"a": []}, ["a", "empty list"]),
        ({"a": [{"b": 1}]}, ["a", "one scalar type"]),
        ({"a": (1, 2)}, ["a", "not a ROS parameter type"]),
    ],
)
def test_flatten_rejects_non_ros_values(tree: dict, words: list[str]) -> None:
    with pytest.raises(RuntimeConfigError) as caught:
        flatten_parameters(tree)
    assert str(caught.value).startswith(words[0])
    assert words[1] in str(caught.value)
