"""The policy node on a conveyor-sorting cell: one arm + gripper + conveyor, head and wrist cameras.

ros2 launch internvla_ros conveyor_sorting.launch.py model:=/path/to/checkpoint wrist_camera:=/wrist/image_raw
ros2 launch internvla_ros conveyor_sorting.launch.py --show-args   # every argument, with its default
"""

from launch import LaunchDescription
from launch.actions import OpaqueFunction

from internvla_ros.launch_plan import LAUNCH_FILES
from internvla_ros.ros.launch_actions import declare_arguments, node_actions

LAUNCH = LAUNCH_FILES["conveyor_sorting.launch.py"]


def _nodes(context):
    # At launch time, in Python: config:= is looked up and every argument checked (internvla_ros.launch_plan).
    return node_actions(LAUNCH, context.launch_configurations)


def generate_launch_description():
    return LaunchDescription([*declare_arguments(LAUNCH), OpaqueFunction(function=_nodes)])
