"""policy_node's ~/status and /diagnostics, from one snapshot of the node taken at each status tick."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from diagnostic_msgs.msg import DiagnosticArray
from rclpy.node import Node

from internvla_ros.msg import PolicyStatus
from internvla_ros.ros.conversions import ns_to_time
from internvla_ros.ros.messages import diagnostics_msg, status_msg
from internvla_ros.runtime.health import (
    ComponentHealth,
    ControllerLink,
    EndpointHealth,
    EndpointReport,
    HealthMonitor,
    Level,
)
from internvla_ros.runtime.status import RuntimeStatus, status_report

NO_INSTRUCTION = "no instruction yet: publish one on the instruction topic (holding until then)"


@dataclass(frozen=True)
class NodeSnapshot:
    """What the status and diagnostics need, copied under the node's lock."""

    stamp_ns: int
    lifecycle: str  # the lifecycle state's label
    progress: str  # what a running transition is doing ("loading the model ... 12 s"), else ""
    failure: str  # why the last transition failed, until one succeeds
    instruction: str
    runtime: RuntimeStatus | None = None
    active: bool = False
    latencies_ns: tuple[int, ...] = ()
    commands_sent: int = 0
    invalid_inputs: int = 0
    inference_timeouts: int = 0
    worker_restarts: int = 0
    controllers: tuple[ControllerLink, ...] = field(default=())
    endpoint: EndpointReport | None = None  # the inference server, when the policy runs on one


def lifecycle_health(snapshot: NodeSnapshot) -> ComponentHealth:
    if snapshot.failure:
        return ComponentHealth("lifecycle", Level.ERROR, f"{snapshot.lifecycle}: {snapshot.failure}")
    message = f"{snapshot.lifecycle}: {snapshot.progress}" if snapshot.progress else snapshot.lifecycle
    return ComponentHealth("lifecycle", Level.OK, message)


class StatusReporter:
    """Publishes ~/status and /diagnostics (plain publishers: they report in every lifecycle state)."""

    def __init__(self, node: Node) -> None:
        self._node = node
        self._status = node.create_publisher(PolicyStatus, "~/status", 10)
        self._diagnostics = node.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.health = HealthMonitor()
        self.endpoint_health = EndpointHealth()

    def publish(self, snapshot: NodeSnapshot) -> None:
        components: Sequence[ComponentHealth] = [lifecycle_health(snapshot)]
        if snapshot.runtime is None:
            msg = PolicyStatus(state=PolicyStatus.STATE_INACTIVE, instruction=snapshot.instruction)
            msg.header.stamp = ns_to_time(snapshot.stamp_ns)
            msg.last_error = snapshot.failure or (f"{snapshot.lifecycle}: {snapshot.progress}"
                                                  if snapshot.progress else "")
        else:
            report = status_report(snapshot.runtime, snapshot.instruction, snapshot.latencies_ns,
                                   snapshot.commands_sent, snapshot.invalid_inputs,
                                   inference_timeouts=snapshot.inference_timeouts,
                                   worker_restarts=snapshot.worker_restarts)
            msg = status_msg(report, snapshot.active)
            components += self.health.assess(snapshot.runtime, snapshot.active, snapshot.instruction,
                                             snapshot.invalid_inputs, snapshot.controllers)
            server = self.endpoint_health.assess(snapshot.endpoint) if snapshot.endpoint is not None else None
            components += [server] if server is not None else []
            # What only an operator can fix goes into the status too: a missing instruction or controller.
            notes = [NO_INSTRUCTION] if snapshot.active and not snapshot.instruction else []
            notes += [c.message for c in components if c.name.startswith("controller ") and c.level >= Level.WARN]
            if server is not None and server.level >= Level.ERROR:
                notes.append(f"inference server {server.message}")
            msg.last_error = "; ".join([msg.last_error, *notes] if msg.last_error else notes)
        self._status.publish(msg)
        self._diagnostics.publish(diagnostics_msg(snapshot.stamp_ns, self._node.get_fully_qualified_name(),
                                                  components))
