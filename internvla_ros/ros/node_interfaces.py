"""The policy node's topics and services for one robot config: made on configure, destroyed on cleanup.

Outputs are lifecycle publishers (silent unless the node is active): one per controller (a trajectory or a
forward-command stream), the adopted chunks and the foresight previews. Inputs are the cameras (raw and
compressed), joint_states and the instruction; services are the operator's. Every topic's QoS can be
overridden with qos_overrides.<topic>.<kind>.<policy>.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Any

from rclpy.lifecycle import LifecycleNode
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from rclpy.qos_overriding_options import QoSOverridingOptions
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_msgs.msg import Float64MultiArray, String
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory

from internvla_ros.msg import ActionChunk
from internvla_ros.ros.messages import action_chunk_msg, forward_msg, rgb_image_msg, trajectory_msg
from internvla_ros.runtime import ControlOutput, RuntimeConfig
from internvla_ros.runtime.driver import ChunkEvent
from internvla_ros.runtime.health import ControllerLink

# Forward commands are a stream where each value is one control period's step: a slow reader must get them
# late rather than lose one (a lost command makes the next step twice as large). 1 s at 100 Hz.
FORWARD_COMMAND_DEPTH = 100
INSTRUCTION_QOS = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
QOS_OVERRIDES = QoSOverridingOptions.with_default_policies()
CHUNKS = "~/action_chunk"


class NodeInterfaces:
    """What a configured policy node publishes, subscribes to and serves. Every callback runs under ``lock``,
    the node's lock: a transition on the lifecycle thread never changes what a callback reads half-way (the
    lock is held for microseconds on both sides, never while the model loads)."""

    def __init__(self, node: LifecycleNode, lock: threading.RLock) -> None:
        self._node = node
        self._lock = lock
        self._outputs: dict[str, Any] = {}
        self._inputs: list[Any] = []
        self._services: list[Any] = []
        self._chunk_id = 0  # since the node started: chunk ids never repeat on a topic

    def create(self, config: RuntimeConfig, on_image: Callable[[str, Any], None],
               on_joint_state: Callable[[JointState], None], on_instruction: Callable[[String], None],
               services: Mapping[str, Callable[[Trigger.Request, Trigger.Response], Trigger.Response]]) -> None:
        for controller in config.controllers:
            if controller.type == "joint_trajectory":
                self._outputs[controller.name] = self._publisher(JointTrajectory, f"{controller.name}/joint_trajectory")
            else:
                self._outputs[controller.name] = self._publisher(Float64MultiArray, f"{controller.name}/commands",
                                                                 FORWARD_COMMAND_DEPTH)
        self._outputs[CHUNKS] = self._publisher(ActionChunk, CHUNKS)
        for camera in config.cameras:
            self._outputs[f"foresight/{camera.name}"] = self._publisher(Image, f"~/foresight/{camera.name}",
                                                                        qos_profile_sensor_data)
            for msg_type, topic in ((Image, camera.topic), (CompressedImage, f"{camera.topic}/compressed")):
                self._inputs.append(self._subscription(msg_type, topic, lambda m, c=camera.name: on_image(c, m)))
        self._inputs += [self._subscription(JointState, "joint_states", on_joint_state),
                         self._subscription(String, "instruction", on_instruction, INSTRUCTION_QOS)]
        self._services += [self._node.create_service(Trigger, f"~/{name}", self._locked(callback))
                           for name, callback in services.items()]

    def release(self) -> None:
        """Destroys every topic and service (call it without holding the lock: rclpy may wait on callbacks)."""
        with self._lock:
            inputs, services, outputs = self._inputs, self._services, self._outputs
            self._inputs, self._services, self._outputs = [], [], {}
        for subscription in inputs:
            self._node.destroy_subscription(subscription)
        for service in services:
            self._node.destroy_service(service)
        for publisher in outputs.values():
            self._node.destroy_lifecycle_publisher(publisher)

    def publish_commands(self, output: ControlOutput) -> int:
        """Sends the tick's commands to their controllers; how many were sent."""
        for command in output.trajectories:
            self._outputs[command.controller].publish(trajectory_msg(command))
        for command in output.forward:
            self._outputs[command.controller].publish(forward_msg(command))
        return len(output.trajectories) + len(output.forward)

    def publish_chunk(self, event: ChunkEvent, config: RuntimeConfig) -> None:
        """An adopted chunk on ~/action_chunk, and the foresight previews of any inference."""
        if event.outcome.accepted:
            self._chunk_id += 1
            self._outputs[CHUNKS].publish(action_chunk_msg(
                self._chunk_id, event.ready_ns, event.observation.stamp_ns, config.rates.chunk_step_ns,
                event.outcome.start_index, config.joint_names, event.outcome.positions))
        for camera, pixels in event.result.preview.items():
            self._outputs[f"foresight/{camera}"].publish(
                rgb_image_msg(pixels, event.ready_ns, f"{camera}_camera_optical_frame"))

    def controller_links(self, config: RuntimeConfig | None) -> tuple[ControllerLink, ...]:
        """Each controller's topic and how many controllers read it (for /diagnostics)."""
        controllers = config.controllers if config is not None else ()
        return tuple(ControllerLink(c.name, self._outputs[c.name].topic_name,
                                    self._outputs[c.name].get_subscription_count())
                     for c in controllers if c.name in self._outputs)

    def _locked(self, callback: Callable[..., Any]) -> Callable[..., Any]:
        def run(*args: Any) -> Any:
            with self._lock:
                return callback(*args)

        return run

    def _publisher(self, msg_type: Any, topic: str, qos: QoSProfile | int = 10) -> Any:
        return self._node.create_lifecycle_publisher(msg_type, topic, qos, qos_overriding_options=QOS_OVERRIDES)

    def _subscription(self, msg_type: Any, topic: str, callback: Callable[[Any], None],
                      qos: QoSProfile = qos_profile_sensor_data) -> Any:
        return self._node.create_subscription(msg_type, topic, self._locked(callback), qos,
                                              qos_overriding_options=QOS_OVERRIDES)
