"""The policy node on a conveyor-sorting cell: one arm + gripper + conveyor, head and wrist cameras.

ros2 launch internvla_ros conveyor_sorting.launch.py model:=/path/to/checkpoint wrist_camera:=/wrist/image_raw
"""

from internvla_ros.ros.launch_common import policy_launch_description


def generate_launch_description():
    return policy_launch_description("conveyor_sorting")
