"""The launch plan: which nodes each launch file starts for given arguments, and its refusals."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from internvla_ros.launch_plan import (
    CELL_CAMERAS,
    LAUNCH_FILES,
    LaunchFile,
    LaunchPlanError,
    NodePlan,
    camera_argument,
    launch_arguments,
    plan_nodes,
)
from test.launch.launcher import ros_arguments

ROOT = Path(__file__).resolve().parents[2]
CONFIG_DIR = ROOT / "config"
SIM, REPLAY = LAUNCH_FILES["sim.launch.py"], LAUNCH_FILES["replay.launch.py"]
DUAL_ARM = LAUNCH_FILES["dual_arm.launch.py"]


def _policy(nodes: tuple[NodePlan, ...]) -> NodePlan:
    (policy,) = [node for node in nodes if node.executable == "policy_node"]
    return policy


def _changed_value(launch: LaunchFile, name: str, default: str, tmp_path: Path) -> dict[str, str]:
    """Arguments that set ``name`` to a usable value other than its default."""
    if name.endswith("_camera"):
        if launch.cell:
            return {name: "/elsewhere/image_raw"}
        cell = next(c for c, cameras in CELL_CAMERAS.items() if name in {camera_argument(x) for x in cameras})
        return {"cell": cell, name: "/elsewhere/image_raw"}
    other = {"true": "false", "false": "true", "": "true"}
    values = {
        "cell": "conveyor_sorting" if default == "dual_arm" else "dual_arm",
        "model": str(tmp_path),
        "config": str(shutil.copy(CONFIG_DIR / f"{launch.cell or 'dual_arm'}.yaml", tmp_path / "robot.yaml")),
        "params_file": str(shutil.copy(CONFIG_DIR / "dual_arm.yaml", tmp_path / "extra.yaml")),
        "namespace": "cell_2",
        "instruction": "stack the cups",
    }
    return {name: values.get(name, other.get(default, ""))}


@pytest.mark.parametrize("launch", LAUNCH_FILES.values(), ids=lambda launch: launch.name)
def test_every_declared_argument_changes_the_plan(launch: LaunchFile, tmp_path: Path) -> None:
    default_plan = plan_nodes(launch, {})  # reads no argument that is not declared (it would raise KeyError)
    for argument in launch_arguments(launch):
        given = _changed_value(launch, argument.name, argument.default, tmp_path)
        assert plan_nodes(launch, given) != default_plan, f"{launch.name}: {argument.name}:= has no effect"


def test_every_argument_has_a_description_and_cells_their_cameras() -> None:
    for launch in LAUNCH_FILES.values():
        arguments = launch_arguments(launch)
        assert all(a.description for a in arguments)
        names = {a.name for a in arguments}
        cells = [launch.cell] if launch.cell else list(CELL_CAMERAS)
        assert {camera_argument(c) for cell in cells for c in CELL_CAMERAS[cell]} <= names
        assert ("cell" in names) == (launch.cell is None)


def test_sim_gets_the_robot_file_as_its_config_parameter(tmp_path: Path) -> None:
    sim, policy = plan_nodes(SIM, {"cell": "conveyor_sorting", "namespace": "/plant/cell_2/",
                                   "wrist_camera": "/wrist/image_raw"})
    assert sim.executable == "sim_robot" and not sim.lifecycle and policy.lifecycle
    assert sim.parameters["config"] == str(CONFIG_DIR / "conveyor_sorting.yaml")
    assert policy.parameter_files == (CONFIG_DIR / "conveyor_sorting.yaml",)
    assert sim.namespace == policy.namespace == "/plant/cell_2"
    # The sim publishes where the node listens.
    assert sim.remappings == policy.remappings == (
        ("cameras/wrist/image_raw", "/wrist/image_raw"),
        ("cameras/wrist/image_raw/compressed", "/wrist/image_raw/compressed"))
    assert policy.parameters["safety.dry_run"] is False, "the sim is the robot: the node actuates it by default"


def test_config_by_name_by_relative_path_and_with_quotes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    quoted = tmp_path / "it's a \"robot\"" / "cell's.yaml"
    quoted.parent.mkdir()
    shutil.copy(CONFIG_DIR / "dual_arm.yaml", quoted)
    assert _policy(plan_nodes(DUAL_ARM, {"config": str(quoted)})).parameter_files == (quoted,)
    monkeypatch.chdir(tmp_path)
    relative = Path(quoted.parent.name) / quoted.name
    assert _policy(plan_nodes(DUAL_ARM, {"config": str(relative)})).parameter_files == (quoted,)
    assert _policy(plan_nodes(DUAL_ARM, {"config": "conveyor_sorting.yaml"})).parameter_files == (
        CONFIG_DIR / "conveyor_sorting.yaml",)
    with pytest.raises(LaunchPlanError, match=r"config:=nowhere.yaml: no such file, neither as a path nor in .*config"):
        plan_nodes(DUAL_ARM, {"config": "nowhere.yaml"})


def test_empty_arguments_keep_the_parameter_files_values() -> None:
    policy = _policy(plan_nodes(DUAL_ARM, {}))
    assert dict(policy.parameters) == {"use_sim_time": False, "autostart": True}
    assert _policy(plan_nodes(REPLAY, {})).parameters["use_sim_time"] is True
    policy = _policy(plan_nodes(DUAL_ARM, {"dry_run": "True", "instruction": " yes ", "use_sim_time": "TRUE"}))
    assert dict(policy.parameters) == {"use_sim_time": True, "autostart": True, "safety.dry_run": True,
                                       "instruction": "yes"}


@pytest.mark.parametrize(("launch", "given", "message"), [
    (SIM, {"cell": "mobile"}, "cell:=mobile is not one of dual_arm, conveyor_sorting"),
    (SIM, {"wrist_camera": "/w"}, "wrist_camera:= is for another cell; cell:=dual_arm has cameras head, left_wrist"),
    (DUAL_ARM, {"wrist_camera": "/w"}, "dual_arm.launch.py has no argument wrist_camera; it takes model, config"),
    (DUAL_ARM, {"namespace": "cell 2"}, "namespace:=cell 2 is not a ROS namespace"),
    (DUAL_ARM, {"namespace": "/2nd"}, "namespace:=/2nd is not a ROS namespace"),
    (DUAL_ARM, {"dry_run": "maybe"}, "dry_run:=maybe is not a boolean; pass dry_run:=true or dry_run:=false"),
    (DUAL_ARM, {"model": "/no/such/checkpoint"}, "model:=/no/such/checkpoint: no such directory"),
    (DUAL_ARM, {"params_file": "/no/such.yaml"}, "params_file:=/no/such.yaml: no such file"),
    (DUAL_ARM, {"head_camera": "/head camera"}, "head_camera:=/head camera is not a topic name"),
])
def test_unusable_arguments_are_refused_by_name(launch: LaunchFile, given: dict[str, str], message: str) -> None:
    with pytest.raises(LaunchPlanError) as error:
        plan_nodes(launch, given)
    assert message in str(error.value)


def test_launch_ros_arguments_of_a_plan(tmp_path: Path) -> None:
    """What the test launcher passes: launch_ros' order, overrides as a file keyed by the node's full name."""
    (policy,) = plan_nodes(DUAL_ARM, {"namespace": "cell_2", "head_camera": "/head/image_raw", "instruction": "no"})
    arguments = ros_arguments(policy, tmp_path / "overrides.yaml")
    assert arguments == [
        "--ros-args", "-r", "__node:=policy_node", "-r", "__ns:=/cell_2",
        "--params-file", str(CONFIG_DIR / "dual_arm.yaml"), "--params-file", str(tmp_path / "overrides.yaml"),
        "-r", "cameras/head/image_raw:=/head/image_raw",
        "-r", "cameras/head/image_raw/compressed:=/head/image_raw/compressed"]
    overrides = yaml.safe_load((tmp_path / "overrides.yaml").read_text())
    assert overrides == {"/cell_2/policy_node": {"ros__parameters": {
        "use_sim_time": False, "autostart": True, "instruction": "no"}}}  # a string, though YAML reads no as false
