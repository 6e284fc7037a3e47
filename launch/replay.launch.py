"""The policy node on bag time, for `ros2 bag play --clock BAG` on the robot computer.

ros2 launch internvla_ros replay.launch.py cell:=dual_arm model:=/path/to/checkpoint dry_run:=true
then, in another terminal: ros2 bag play --clock BAG
"""

from launch import LaunchDescription
from launch.actions import OpaqueFunction

from internvla_ros.launch_plan import LAUNCH_FILES
from internvla_ros.ros.launch_actions import declare_arguments, node_actions

LAUNCH = LAUNCH_FILES["replay.launch.py"]


def _nodes(context):
    # At launch time, in Python: config:= is looked up and every argument checked (internvla_ros.launch_plan).
    return node_actions(LAUNCH, context.launch_configurations)


def generate_launch_description():
    return LaunchDescription([*declare_arguments(LAUNCH), OpaqueFunction(function=_nodes)])
