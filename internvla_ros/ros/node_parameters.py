"""The policy node's own parameters as ROS parameters with descriptors (runtime/node_parameters.py lists them)."""

from __future__ import annotations

from typing import Any

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from rclpy.node import Node
from rclpy.parameter import Parameter

from internvla_ros.runtime.node_parameters import NODE_PARAMETERS, NodeParameter


def descriptor(name: str, spec: NodeParameter) -> ParameterDescriptor:
    result = ParameterDescriptor(name=name, description=spec.description, read_only=spec.read_only)
    if spec.low is not None and spec.high is not None:
        if isinstance(spec.default, bool) or not isinstance(spec.default, int | float):
            raise TypeError(f"node parameter '{name}': a range needs a numeric default, got {spec.default!r}")
        if isinstance(spec.default, int):
            result.integer_range = [IntegerRange(from_value=int(spec.low), to_value=int(spec.high), step=1)]
        else:
            result.floating_point_range = [FloatingPointRange(from_value=float(spec.low), to_value=float(spec.high),
                                                              step=0.0)]
    return result


def declare_node_parameters(node: Node) -> None:
    """Declares each node parameter with its descriptor, keeping a value given at start.

    A node that declares parameters from overrides has already declared those given on the command
    line or in the parameter file, without descriptor (so not read-only, no range): they are declared
    again here, and the start value, which rclpy keeps as an override, is checked against the range.
    """
    for name, spec in NODE_PARAMETERS.items():
        if node.has_parameter(name):
            node.undeclare_parameter(name)
        node.declare_parameter(name, spec.default, descriptor(name, spec))


def robot_parameters(node: Node) -> dict[str, Any]:
    """Every set parameter as dotted names (arrays as lists); the robot config ignores the node's own."""
    parameters = node.get_parameters_by_prefix("")
    return {name: list(p.value) if isinstance(p.value, list | tuple) or hasattr(p.value, "tolist") else p.value
            for name, p in parameters.items() if p.type_ != Parameter.Type.NOT_SET}
