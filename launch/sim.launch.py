"""The simulated cell (sim_robot) and the policy node together: the closed loop without hardware.

ros2 launch internvla_ros sim.launch.py cell:=conveyor_sorting
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction

from internvla_ros.ros.launch_common import policy_launch_description


def _for_cell(context):
    return policy_launch_description(context.launch_configurations["cell"], with_sim=True).entities


def generate_launch_description():
    return LaunchDescription([
        DeclareLaunchArgument("cell", default_value="dual_arm", description="dual_arm or conveyor_sorting"),
        OpaqueFunction(function=_for_cell),
    ])
