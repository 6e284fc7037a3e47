"""The policy node on a dual-arm robot: two 7-DoF arms + grippers, head and wrist cameras.

ros2 launch internvla_ros dual_arm.launch.py model:=/path/to/checkpoint head_camera:=/head/image_raw
"""

from internvla_ros.ros.launch_common import policy_launch_description


def generate_launch_description():
    return policy_launch_description("dual_arm")
