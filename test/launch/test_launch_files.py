"""Static checks of launch/: launch_ros is not installable here, so the files are read, not run.

What they start is internvla_ros.launch_plan's plan (tested in test_launch_plan.py, and started over
the real middleware in test_launched_nodes.py); these checks make sure each file hands its own plan to
launch_ros, declares its arguments, evaluates nothing, and that the README documents every argument.
"""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest

from internvla_ros import launch_plan
from internvla_ros.launch_plan import LAUNCH_FILES, launch_arguments
from internvla_ros.runtime.config import RuntimeConfig
from test.launch.launcher import entry_points

ROOT = Path(__file__).resolve().parents[2]
LAUNCH_PATHS = sorted((ROOT / "launch").glob("*.launch.py"))
ADAPTER = ROOT / "internvla_ros" / "ros" / "launch_actions.py"
ALLOWED_IMPORTS = {"launch", "launch.actions", "internvla_ros.launch_plan", "internvla_ros.ros.launch_actions"}


def _calls(tree: ast.AST) -> set[str]:
    return {node.func.id for node in ast.walk(tree) if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)}


def test_every_launch_file_has_a_plan_and_every_plan_a_file() -> None:
    assert {path.name for path in LAUNCH_PATHS} == set(LAUNCH_FILES)
    documented = {"dual_arm.launch.py", "conveyor_sorting.launch.py", "sim.launch.py", "replay.launch.py"}
    assert documented <= set(LAUNCH_FILES)


@pytest.mark.parametrize("path", LAUNCH_PATHS, ids=lambda p: p.name)
def test_launch_file_hands_its_own_plan_to_launch_ros(path: Path) -> None:
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            assert node.module in ALLOWED_IMPORTS, node.module
        assert not isinstance(node, ast.Import), "only the plan and its launch_ros adapter are imported"
    keys = [node.slice.value for node in ast.walk(tree)
            if isinstance(node, ast.Subscript) and getattr(node.value, "id", "") == "LAUNCH_FILES"]
    assert keys == [path.name], "the file must look up its own name in LAUNCH_FILES"
    functions = {node.name: node for node in tree.body if isinstance(node, ast.FunctionDef)}
    generate = functions["generate_launch_description"]
    assert {"declare_arguments", "OpaqueFunction", "LaunchDescription"} <= _calls(generate)
    opaque = [node for node in ast.walk(generate)
              if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "OpaqueFunction"]
    target = opaque[0].keywords[0].value.id
    assert "node_actions" in _calls(functions[target]), "the nodes are planned at launch time, in Python"


@pytest.mark.parametrize("path", [*LAUNCH_PATHS, ADAPTER], ids=lambda p: p.name)
def test_no_launch_code_evaluates_strings(path: Path) -> None:
    text = path.read_text()
    for evaluating in ("PythonExpression", "eval(", "exec("):
        assert evaluating not in text, f"{path.name} uses {evaluating}"


def test_the_adapter_passes_every_field_of_a_node_plan() -> None:
    """launch_actions cannot run here; at least every NodePlan field must reach the launch_ros action."""
    text = ADAPTER.read_text()
    for field in launch_plan.NodePlan.__dataclass_fields__:
        assert f"node.{field}" in text, f"launch_actions.py ignores NodePlan.{field}"
    for field in launch_plan.LaunchArgument.__dataclass_fields__:
        assert f"a.{field}" in text, f"launch_actions.py ignores LaunchArgument.{field}"


@pytest.mark.parametrize("cell", sorted(launch_plan.CELL_CAMERAS))
def test_each_cell_has_a_config_with_the_launch_cameras(cell: str) -> None:
    config = RuntimeConfig.from_yaml(ROOT / "config" / f"{cell}.yaml")
    assert tuple(camera.name for camera in config.cameras) == launch_plan.CELL_CAMERAS[cell]
    for camera in config.cameras:  # the launch remaps target the topics the node subscribes to
        assert camera.topic == launch_plan.camera_topic(camera.name)


@pytest.mark.parametrize("executable", [launch_plan.POLICY_EXECUTABLE, launch_plan.SIM_EXECUTABLE])
def test_launched_executables_are_installed(executable: str) -> None:
    module = entry_points()[executable]
    assert callable(importlib.import_module(module).main)


def _launch_table() -> dict[str, str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("### Launch arguments", 1)[1].split("\n#", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    return {name: row for row in rows for name in re.findall(r"`([a-z_]+):=", row.split("|")[1])}


def test_readme_launch_table_documents_every_argument_and_only_those() -> None:
    table = _launch_table()
    declared = {a.name for launch in LAUNCH_FILES.values() for a in launch_arguments(launch)}
    assert declared <= set(table), f"README.md's launch table lacks {sorted(declared - set(table))}"
    assert set(table) <= declared, f"README.md documents arguments no launch file has: {sorted(set(table) - declared)}"
