"""Offline replay of a recorded rosbag2 through the policy runtime, in bag time, without ROS.

The same ``PolicyRuntime``, ``ActionMapper`` and policy as the node, driven by the bag's clock with a
modelled inference latency, so a replay is deterministic: the same bag, model, config and seed give a
byte-identical output bag. See ``internvla replay --help``.
"""

from internvla_ros.replay.errors import ReplayError

__all__ = ["ReplayError"]
