"""Static checks of launch/: launch_ros is not installable here, so what it would do is checked by
reading the files, and what it passes to the node is exercised in test/ros by starting the node with the
same --ros-args."""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest

from internvla_ros.ros import launch_common
from internvla_ros.runtime.config import RuntimeConfig

ROOT = Path(__file__).resolve().parents[2]
LAUNCH_FILES = sorted((ROOT / "launch").glob("*.launch.py"))
ALLOWED_IMPORT_ROOTS = {"launch", "launch_ros", "internvla_ros"}


def test_the_documented_launch_files_exist() -> None:
    names = {path.name for path in LAUNCH_FILES}
    assert {"dual_arm.launch.py", "conveyor_sorting.launch.py", "sim.launch.py", "replay.launch.py"} <= names


@pytest.mark.parametrize("path", LAUNCH_FILES, ids=lambda p: p.name)
def test_launch_file_parses_and_defines_its_entry_point(path: Path) -> None:
    tree = ast.parse(path.read_text(), filename=str(path))
    functions = {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}
    assert "generate_launch_description" in functions
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            assert node.module.split(".")[0] in ALLOWED_IMPORT_ROOTS, node.module
        elif isinstance(node, ast.Import):
            for alias in node.names:
                assert alias.name.split(".")[0] in ALLOWED_IMPORT_ROOTS, alias.name
    for node in ast.walk(tree):  # every cell named literally is one launch_common knows
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "policy_launch_description" and node.args:
            first = node.args[0]
            if isinstance(first, ast.Constant):
                assert first.value in launch_common.CELL_CAMERAS


@pytest.mark.parametrize("cell", sorted(launch_common.CELL_CAMERAS))
def test_each_cell_has_a_config_with_the_launch_cameras(cell: str) -> None:
    config = RuntimeConfig.from_yaml(ROOT / "config" / f"{cell}.yaml")
    assert tuple(camera.name for camera in config.cameras) == launch_common.CELL_CAMERAS[cell]
    for camera in config.cameras:  # the launch remaps target the topics the node subscribes to
        assert camera.topic == launch_common.camera_topic(camera.name)


@pytest.mark.parametrize("module", ["internvla_ros.ros.policy_node", "internvla_ros.ros.sim_robot"])
def test_launched_executables_exist(module: str) -> None:
    name = module.rsplit(".", 1)[-1]
    assert name in {launch_common.POLICY_EXECUTABLE, launch_common.SIM_EXECUTABLE}
    assert f'"{name}={module}"' in (ROOT / "CMakeLists.txt").read_text()
    assert callable(importlib.import_module(module).main)


def test_readme_documents_every_launch_argument() -> None:
    readme = (ROOT / "README.md").read_text()
    documented = set(re.findall(r"`([a-z_]+):=", readme))
    for cell, cameras in launch_common.CELL_CAMERAS.items():
        for argument in launch_common.policy_arguments(cell, cameras):
            assert argument.name in documented, f"README.md does not document {argument.name}:= ({cell})"
    assert "cell" in documented
