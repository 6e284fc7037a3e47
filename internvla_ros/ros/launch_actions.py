"""launch_ros actions for the plans of internvla_ros.launch_plan: the only code in launch/ that needs launch_ros.

A translation and nothing else: what starts, with which files, parameters, names and remaps, is decided
(and tested) in launch_plan. launch and launch_ros are imported inside the functions, so this module
imports where they are not installed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from internvla_ros.launch_plan import PACKAGE, LaunchFile, launch_arguments, plan_nodes


def declare_arguments(launch: LaunchFile) -> list[Any]:
    """One DeclareLaunchArgument per plan argument, so `ros2 launch ... --show-args` lists them all."""
    from launch.actions import DeclareLaunchArgument

    return [DeclareLaunchArgument(a.name, default_value=a.default, description=a.description,
                                  **({"choices": list(a.choices)} if a.choices else {}))
            for a in launch_arguments(launch)]


def node_actions(launch: LaunchFile, configurations: Mapping[str, str]) -> list[Any]:
    """The Node / LifecycleNode actions for the launch configurations (an OpaqueFunction's context)."""
    from launch_ros.actions import LifecycleNode, Node

    declared = {a.name for a in launch_arguments(launch)}
    values = {name: value for name, value in configurations.items() if name in declared}
    actions = []
    for node in plan_nodes(launch, values):
        kind = LifecycleNode if node.lifecycle else Node
        actions.append(kind(package=PACKAGE, executable=node.executable, name=node.name, namespace=node.namespace,
                            parameters=[*(str(f) for f in node.parameter_files), dict(node.parameters)],
                            remappings=list(node.remappings), output="screen"))
    return actions
