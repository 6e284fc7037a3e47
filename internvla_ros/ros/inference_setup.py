"""Where the policy node's inference runs, from its parameters: a local worker process that loads the model,
or an inference server (``inference_endpoint``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rclpy.node import Node

from internvla_ros.runtime import RuntimeConfig
from internvla_ros.runtime.worker import InferenceWorker
from internvla_ros.serve.client import RemoteInference, remote_inference


def node_inference(node: Node, config: RuntimeConfig, model_dir: Path) -> tuple[InferenceWorker | RemoteInference, str]:
    """The inference the node's parameters ask for, not started yet, and what starting it will be doing (for
    ~/status). A bad endpoint or token file raises ValueError or ServeError, with the reason."""
    parameter = node.get_parameter
    endpoint = str(parameter("inference_endpoint").value).strip()
    if endpoint:  # the server must answer and know this robot
        server = remote_inference(endpoint, config.robot_type, str(parameter("inference_token_file").value))
        return server, f"waiting for the inference server {endpoint}"
    threads = int(parameter("inference_threads").value)
    worker = InferenceWorker(
        str(parameter("policy_factory").value),
        {"model": str(model_dir), "tokenizer": parameter("tokenizer_path").value or None,
         "dtype": parameter("dtype").value, "backend": parameter("backend").value,
         "fallback": bool(parameter("backend_fallback").value), "threads": threads,
         "noise_scale": float(parameter("noise_scale").value),
         "cameras": {camera.name: camera.slot for camera in config.cameras}},
        threads=threads)
    return worker, f"loading the model from {model_dir}"


def noise_scale_warning(node_noise_scale: float, server_info: dict[str, Any]) -> str | None:
    """The warning when an inference server samples with another noise scale than the node's parameter
    (the server's applies; a server that does not report one samples as trained, at 1)."""
    server = server_info.get("noise_scale")
    if (1.0 if server is None else server) == node_noise_scale:
        return None
    return (f"noise_scale {node_noise_scale:g} is not used: the inference server samples with its own "
            f"--noise-scale {server}")
