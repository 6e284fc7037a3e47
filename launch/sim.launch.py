"""The simulated cell (sim_robot) and the policy node together: the closed loop without hardware.

ros2 launch internvla_ros sim.launch.py cell:=conveyor_sorting instruction:="sort the parcels"
The policy node actuates by default here (dry_run:=false): the sim is the robot.
"""

from launch import LaunchDescription
from launch.actions import OpaqueFunction

from internvla_ros.launch_plan import LAUNCH_FILES
from internvla_ros.ros.launch_actions import declare_arguments, node_actions

LAUNCH = LAUNCH_FILES["sim.launch.py"]


def _nodes(context):
    # At launch time, in Python: config:= is looked up and every argument checked (internvla_ros.launch_plan).
    return node_actions(LAUNCH, context.launch_configurations)


def generate_launch_description():
    return LaunchDescription([*declare_arguments(LAUNCH), OpaqueFunction(function=_nodes)])
