"""The robot side of node tests: joint_states and camera streams from the test process, breakable on purpose."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import rclpy
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import Image, JointState

from internvla_ros.runtime.config import RuntimeConfig

IMAGE_SHAPE = (48, 64, 3)


class FakeRobot:
    """Publishes joint_states at 100 Hz and every camera at 15 Hz; each stream can be broken on purpose."""

    def __init__(self, node: rclpy.node.Node, config: RuntimeConfig, namespace: str,
                 remaps: Mapping[str, str] | None = None) -> None:
        """``remaps``: camera name -> absolute topic, for cameras remapped away from the namespace."""
        remaps = remaps or {}
        self.node = node
        self.names = list(config.joint_names)
        self.positions = [0.5 * (j.limits.min_position + j.limits.max_position) for j in config.joints]
        self.joint_fault: Callable[[JointState], JointState | None] | None = None
        self.image_fault: dict[str, Callable[[Image], Image | None]] = {}
        self._joints = node.create_publisher(JointState, f"{namespace}/joint_states", qos_profile_sensor_data)
        self._cameras = {
            c.name: node.create_publisher(Image, remaps.get(c.name, f"{namespace}/{c.topic}"), qos_profile_sensor_data)
            for c in config.cameras}
        node.create_timer(0.01, self._publish_joints)
        node.create_timer(1 / 15, self._publish_images)

    def _publish_joints(self) -> None:
        msg = JointState(name=self.names, position=self.positions)
        msg.header.stamp = self.node.get_clock().now().to_msg()
        if self.joint_fault is not None:
            msg = self.joint_fault(msg)
        if msg is not None:
            self._joints.publish(msg)

    def _publish_images(self) -> None:
        pixels = np.full(IMAGE_SHAPE, 90, np.uint8)
        for name, publisher in self._cameras.items():
            msg = Image(height=IMAGE_SHAPE[0], width=IMAGE_SHAPE[1], encoding="rgb8", step=IMAGE_SHAPE[1] * 3)
            msg.header.stamp = self.node.get_clock().now().to_msg()
            msg.data = pixels.tobytes()
            fault = self.image_fault.get(name)
            if fault is not None:
                msg = fault(msg)
            if msg is not None:
                publisher.publish(msg)
