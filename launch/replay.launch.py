"""The policy node on bag time, for `ros2 bag play --clock BAG` on the robot computer.

ros2 launch internvla_ros replay.launch.py cell:=dual_arm model:=/path/to/checkpoint dry_run:=true
then, in another terminal: ros2 bag play --clock BAG
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction

from internvla_ros.ros.launch_common import policy_launch_description


def _for_cell(context):
    return policy_launch_description(context.launch_configurations["cell"]).entities


def generate_launch_description():
    # Declared before the policy arguments, so bag time is the default here (the first declaration wins).
    return LaunchDescription([
        DeclareLaunchArgument("cell", default_value="dual_arm", description="dual_arm or conveyor_sorting"),
        DeclareLaunchArgument("use_sim_time", default_value="true", description="bag time from /clock"),
        OpaqueFunction(function=_for_cell),
    ])
