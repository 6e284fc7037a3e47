"""The ROS fixtures of test/ros (an rclpy context of the test's own, spinning until a condition holds)."""

from test.ros.conftest import ros_context, spin_until

__all__ = ["ros_context", "spin_until"]
