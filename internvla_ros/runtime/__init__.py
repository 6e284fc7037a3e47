"""The policy runtime: ROS-independent chunk scheduling, action mapping and safety.

Imports neither rclpy nor torch; the model is reached through ``policy.Policy``. Time is integer
nanoseconds from an injected clock, so the ROS node and the bag replay drive it the same way.
"""

from internvla_ros.runtime.commands import (
    ControlOutput,
    ForwardCommand,
    JointTrajectoryCommand,
    TrajectoryPoint,
)
from internvla_ros.runtime.config import RuntimeConfig
from internvla_ros.runtime.errors import MappingError, PolicyRuntimeError, RuntimeConfigError
from internvla_ros.runtime.mapping import ActionMapper
from internvla_ros.runtime.observation import CameraFrames, Observation
from internvla_ros.runtime.policy import Policy, PolicyResult
from internvla_ros.runtime.scheduler import ChunkResult, PolicyRuntime
from internvla_ros.runtime.status import RuntimeState, RuntimeStatus

__all__ = [
    "ActionMapper",
    "CameraFrames",
    "ChunkResult",
    "ControlOutput",
    "ForwardCommand",
    "JointTrajectoryCommand",
    "MappingError",
    "Observation",
    "Policy",
    "PolicyResult",
    "PolicyRuntime",
    "PolicyRuntimeError",
    "RuntimeConfig",
    "RuntimeConfigError",
    "RuntimeState",
    "RuntimeStatus",
    "TrajectoryPoint",
]
