"""What the inference server accepts: endpoints, limits, the model's metadata, and the checks of a request.

An /infer body is one frame of runtime/wire.py (the local inference worker's format): the header of
`encode_observation` plus ``robot_type`` (a key of the model's stats.json) and ``client`` (an id per
client, so the server never mixes cached foresight or frame encodings of two robots); the reply is the
frame of `encode_result` plus durations measured on the server (``queue_ns``, ``inference_ns``) and
the ``batch_size`` the request was computed in. Everything here is plain Python: no Ray, no ROS.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from internvla_ros.runtime.observation import Observation
from internvla_ros.runtime.wire import decode_observation
from internvla_ros.serve.errors import RequestRejected, ServeError

PATH_INFER, PATH_HEALTH, PATH_METADATA, PATH_STATS = "/infer", "/health", "/metadata", "/stats"
MAX_REQUEST_BYTES = 32 << 20  # three cameras at 1080p, current and history frames, fit in 37 MB: use --max-request-mb
MAX_IMAGE_SIDE = 4096
MAX_INSTRUCTION_CHARS = 4096
MAX_CLIENT_ID_CHARS = 64
MODEL_FILES = ("config.json", "arch.json", "stats.json", "model.safetensors")
HASH_BLOCK = 1 << 22
STATE_KEY = "observation.state"


def model_hash(directory: Path) -> str:
    """sha256 over the model directory's files that define its outputs (names and bytes), in hex."""
    digest = hashlib.sha256()
    for name in MODEL_FILES:
        path = directory / name
        if path.is_file():
            digest.update(name.encode() + b"\0")
            with path.open("rb") as file:
                while block := file.read(HASH_BLOCK):
                    digest.update(block)
    return digest.hexdigest()


def model_metadata(directory: Path, policy: str, backend: str, max_request_bytes: int,
                   noise_scale: float = 1.0) -> dict[str, Any]:
    """What a client checks before it sends anything: robot types (with their state sizes), cameras, chunk size."""
    stats_path = directory / "stats.json"
    try:
        stats = json.loads(stats_path.read_text())
        robot_types = {name: len(entry[STATE_KEY]["mean"]) for name, entry in stats.items()}
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ServeError(f"cannot read the robot types from {stats_path} ({err}): is --model a checkpoint "
                         "directory with stats.json?") from err
    config: dict[str, Any] = {}
    if (directory / "config.json").is_file():
        from internvla_ros.model.config import load_config

        model_config = load_config(directory)
        config = {"n_views": model_config.n_views, "chunk_size": model_config.chunk_size,
                  "max_action_dim": model_config.max_action_dim}
    return {"model": str(directory), "model_hash": model_hash(directory), "policy": policy, "backend": backend,
            "robot_types": robot_types, "n_views": config.get("n_views", 3),
            "chunk_size": config.get("chunk_size"), "max_action_dim": config.get("max_action_dim"),
            "camera_slots": {"0": "head", "1": "left wrist", "2": "right wrist"},
            "max_request_bytes": max_request_bytes, "max_image_side": MAX_IMAGE_SIDE, "noise_scale": noise_scale}


def check_token(authorization: str | None, token: str | None) -> None:
    """401 unless the request carries ``Authorization: Bearer <token>`` (when the server has a token)."""
    if token is None:
        return
    if not authorization or not authorization.startswith("Bearer "):
        raise RequestRejected(401, "missing bearer token: send 'Authorization: Bearer <token>'")
    if not hmac.compare_digest(authorization.removeprefix("Bearer ").strip().encode(), token.encode()):
        raise RequestRejected(401, "wrong bearer token")


def _field(header: Mapping[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    value = header.get(name)
    if value is None or not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise RequestRejected(400, f"header field '{name}' is missing or not a {getattr(kind, '__name__', kind)}")
    return value


def _vector(arrays: Mapping[str, np.ndarray], name: str, size: int | None) -> None:
    array = arrays[name]
    if array.dtype.kind != "f" or array.ndim != 1:
        raise RequestRejected(422, f"'{name}' must be a 1-D float array, got {array.dtype} {list(array.shape)}")
    if size is not None and array.shape[0] != size:
        raise RequestRejected(422, f"'{name}' has {array.shape[0]} values, the model expects {size}")


def _image(array: np.ndarray, name: str) -> None:
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise RequestRejected(422, f"'{name}' must be an HxWx3 uint8 RGB image, got {array.dtype} {list(array.shape)}")
    if not (1 <= array.shape[0] <= MAX_IMAGE_SIDE and 1 <= array.shape[1] <= MAX_IMAGE_SIDE):
        raise RequestRejected(422, f"'{name}' is {array.shape[1]}x{array.shape[0]} pixels: each side must be "
                                   f"1-{MAX_IMAGE_SIDE}")


def check_observation(header: Mapping[str, Any], arrays: Mapping[str, np.ndarray],
                      metadata: Mapping[str, Any]) -> tuple[str, str, Observation]:
    """(robot type, client id, observation) of a decoded /infer frame; RequestRejected names what is wrong."""
    robot_type = _field(header, "robot_type", str)
    robot_types = metadata["robot_types"]
    if robot_type not in robot_types:
        raise RequestRejected(422, f"unknown robot type '{robot_type}': this server's model knows "
                                   f"{sorted(robot_types)} (its stats.json)")
    client = _field(header, "client", str)
    if not 0 < len(client) <= MAX_CLIENT_ID_CHARS:
        raise RequestRejected(400, f"client id must have 1-{MAX_CLIENT_ID_CHARS} characters")
    for name in ("stamp_ns", "request_ns"):
        _field(header, name, int)
    for name in ("recompute_foresight", "decode_preview"):
        _field(header, name, bool)
    if len(_field(header, "instruction", str)) > MAX_INSTRUCTION_CHARS:
        raise RequestRejected(422, f"instruction longer than {MAX_INSTRUCTION_CHARS} characters")
    cameras = _field(header, "cameras", dict)
    n_views = int(metadata["n_views"])
    if not 1 <= len(cameras) <= n_views:
        raise RequestRejected(422, f"{len(cameras)} cameras sent; the model takes 1-{n_views}")
    expected = {"state", "normalized_state"} | {f"camera.{name}.{which}" for name in cameras
                                                for which in ("current", "history")}
    if set(arrays) != expected:
        raise RequestRejected(400, f"arrays {sorted(arrays)} do not match the header; expected {sorted(expected)}")
    slots = set()
    for name, info in cameras.items():
        slot = info.get("slot") if isinstance(info, dict) else None
        if not isinstance(slot, int) or isinstance(slot, bool) or not 0 <= slot < n_views or slot in slots:
            raise RequestRejected(422, f"camera '{name}': slot {slot!r} is not a free model slot 0-{n_views - 1}")
        slots.add(slot)
        for stamp in ("current_stamp_ns", "history_stamp_ns"):
            _field(info, stamp, int)
        for which in ("current", "history"):
            _image(arrays[f"camera.{name}.{which}"], f"camera.{name}.{which}")
    _vector(arrays, "state", robot_types[robot_type])
    _vector(arrays, "normalized_state", metadata.get("max_action_dim"))
    return robot_type, client, decode_observation(header, arrays)
