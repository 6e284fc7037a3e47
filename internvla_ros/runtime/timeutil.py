"""ROS time stamps as the integer nanoseconds used everywhere else, without rclpy."""

from __future__ import annotations

from typing import Any

from internvla_ros.runtime.config import NS_PER_S


def stamp_to_ns(stamp: Any) -> int:
    """A ``builtin_interfaces`` Time or Duration (rclpy or rosbags message: ``sec``, ``nanosec``) in nanoseconds."""
    return int(stamp.sec) * NS_PER_S + int(stamp.nanosec)
