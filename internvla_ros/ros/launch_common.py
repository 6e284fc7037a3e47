"""What every policy launch file declares and starts: one place, so the cells differ only by defaults.

The launch files in launch/ call `policy_launch_description()`. launch and launch_ros are imported
inside the function, so this module can be imported (and its argument table tested) without them.
"""

from __future__ import annotations

from dataclasses import dataclass

PACKAGE = "internvla_ros"
POLICY_EXECUTABLE = "policy_node"
SIM_EXECUTABLE = "sim_robot"
POLICY_NODE_NAME = "policy_node"

# The camera names of each shipped cell config (config/<cell>.yaml, cameras.names).
CELL_CAMERAS = {
    "dual_arm": ("head", "left_wrist", "right_wrist"),
    "conveyor_sorting": ("head", "wrist"),
}


@dataclass(frozen=True)
class LaunchArgument:
    name: str
    default: str
    description: str


def camera_topic(camera: str) -> str:
    """The node's relative image topic for a camera (what the camera launch arguments remap)."""
    return f"cameras/{camera}/image_raw"


def policy_arguments(cell: str, cameras: tuple[str, ...]) -> tuple[LaunchArgument, ...]:
    """The documented launch arguments (README.md lists the same names)."""
    arguments = [
        LaunchArgument("model", "", "checkpoint directory (model.safetensors, config.json, stats.json); "
                       "empty = the package's default model"),
        LaunchArgument("config", f"{cell}.yaml", "robot parameter file: a name in the package's config/ "
                       "or an absolute path"),
        LaunchArgument("namespace", "", "namespace for the node and all its relative topics"),
        LaunchArgument("use_sim_time", "false", "use /clock (true for `ros2 bag play --clock`)"),
        LaunchArgument("dry_run", "false", "compute everything but publish no command"),
        LaunchArgument("autostart", "true", "configure and activate the lifecycle node at start"),
        LaunchArgument("instruction", "", "initial instruction (also settable on the instruction topic)"),
    ]
    arguments += [
        LaunchArgument(f"{camera}_camera", camera_topic(camera), f"image topic of the {camera} camera")
        for camera in cameras
    ]
    return tuple(arguments)


def policy_launch_description(cell: str, with_sim: bool = False):
    """A LaunchDescription for the policy node (and, with_sim, the simulated cell) of one cell."""
    from launch import LaunchDescription
    from launch.actions import DeclareLaunchArgument
    from launch.substitutions import LaunchConfiguration, PythonExpression
    from launch_ros.actions import Node
    from launch_ros.parameter_descriptions import ParameterValue
    from launch_ros.substitutions import FindPackageShare

    if cell not in CELL_CAMERAS:
        msg = f"cell:={cell} is unknown; use one of {sorted(CELL_CAMERAS)}"
        raise ValueError(msg)
    cameras = CELL_CAMERAS[cell]
    arguments = policy_arguments(cell, cameras)
    declared = [DeclareLaunchArgument(a.name, default_value=a.default, description=a.description)
                for a in arguments]
    config = LaunchConfiguration("config")
    # A bare file name is looked up in the package's config/ directory.
    config_path = PythonExpression([
        "'", config, "' if '", config, "'.startswith('/') else '",
        FindPackageShare(PACKAGE), "/config/", config, "'",
    ])
    use_sim_time = ParameterValue(LaunchConfiguration("use_sim_time"), value_type=bool)
    overrides = {
        "model_path": LaunchConfiguration("model"),
        "use_sim_time": use_sim_time,
        "safety.dry_run": ParameterValue(LaunchConfiguration("dry_run"), value_type=bool),
        "autostart": ParameterValue(LaunchConfiguration("autostart"), value_type=bool),
        "instruction": LaunchConfiguration("instruction"),
    }
    remappings = [(camera_topic(camera), LaunchConfiguration(f"{camera}_camera")) for camera in cameras]
    actions = [*declared]
    if with_sim:
        actions.append(Node(package=PACKAGE, executable=SIM_EXECUTABLE, name=SIM_EXECUTABLE,
                            namespace=LaunchConfiguration("namespace"),
                            parameters=[config_path, {"use_sim_time": use_sim_time}], output="screen"))
    actions.append(Node(package=PACKAGE, executable=POLICY_EXECUTABLE, name=POLICY_NODE_NAME,
                        namespace=LaunchConfiguration("namespace"), parameters=[config_path, overrides],
                        remappings=remappings, output="screen"))
    return LaunchDescription(actions)
