"""The one wire format between the runtime and a policy process: the inference worker's pipes and the
inference server's HTTP bodies (internvla_ros/serve/).

A frame is an 8-byte little-endian length, a JSON header naming each array's name, dtype and shape, then
the arrays' raw bytes in that order. Nothing is pickled: a frame can only ever decode to plain numeric
arrays and JSON values. `write_frame`/`read_frame` move frames over streams (the worker's stdin/stdout);
`frame_to_bytes`/`frame_from_bytes` make and check one whole frame in memory (an HTTP body), where the
declared arrays must account for the body exactly, so a header cannot make the reader allocate more than
was sent.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from typing import Any, BinaryIO

import numpy as np

from internvla_ros.runtime.observation import CameraFrames, Observation, RtcRequest
from internvla_ros.runtime.policy import PolicyResult

LENGTH = struct.Struct("<Q")
MAX_HEADER_BYTES = 1 << 20
ARRAYS_KEY = "__arrays__"
ALLOWED_DTYPE_KINDS = "biuf"  # bool, signed/unsigned integers, floats: nothing that can hold objects
MAX_ARRAY_DIMS = 8
CONTENT_TYPE = "application/x-internvla-frame"

Frame = tuple[dict[str, Any], dict[str, np.ndarray]]


class FrameError(ValueError):
    """A frame that does not follow the format (corrupt stream, or a malformed body)."""


def frame_parts(header: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> list[bytes | memoryview]:
    """A frame as the buffers to send in order: the length, the JSON header, each array's raw bytes.

    The arrays are passed straight from their buffers: no serialised copy of several megabytes of
    camera frames is made while holding the GIL, which the control thread of the same process needs.
    """
    contiguous = {name: np.ascontiguousarray(value) for name, value in arrays.items()}
    specs = [{"name": name, "dtype": value.dtype.str, "shape": list(value.shape)} for name, value in contiguous.items()]
    head = json.dumps({**header, ARRAYS_KEY: specs}).encode()
    return [LENGTH.pack(len(head)), head, *(memoryview(value).cast("B") for value in contiguous.values()
                                           if value.nbytes)]


def write_frame(stream: BinaryIO, header: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> None:
    """A length-prefixed JSON header (with each array's name, dtype and shape), then the raw array bytes."""
    for part in frame_parts(header, arrays):
        stream.write(part)
    stream.flush()


def frame_to_bytes(header: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> bytes:
    return b"".join(frame_parts(header, arrays))


def _read_exactly(stream: BinaryIO, size: int) -> bytes:
    data = stream.read(size)
    if data is None or len(data) != size:
        raise EOFError(f"stream closed after {0 if data is None else len(data)} of {size} bytes")
    return data


def _array_spec(spec: Any) -> tuple[str, np.dtype, tuple[int, ...]]:
    """(name, dtype, shape) of one header entry; FrameError names what is wrong."""
    if not isinstance(spec, dict) or not {"name", "dtype", "shape"} <= spec.keys():
        raise FrameError(f"array entry {spec!r} needs name, dtype and shape")
    name, shape = spec["name"], spec["shape"]
    try:
        dtype = np.dtype(spec["dtype"])
    except TypeError as err:
        raise FrameError(f"array {name!r}: dtype {spec['dtype']!r} is not a numpy dtype") from err
    if dtype.kind not in ALLOWED_DTYPE_KINDS:
        raise FrameError(f"array {name!r}: dtype {spec['dtype']!r} is not a plain numeric type")
    if (not isinstance(shape, list) or len(shape) > MAX_ARRAY_DIMS
            or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape)):
        raise FrameError(f"array {name!r}: shape {shape!r} is not a list of at most {MAX_ARRAY_DIMS} sizes >= 0")
    return str(name), dtype, tuple(shape)


def _header(raw: bytes) -> dict[str, Any]:
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise FrameError(f"frame header is not JSON: {err}") from err
    if not isinstance(header, dict):
        raise FrameError("frame header is not a JSON object")
    return header


def read_frame(stream: BinaryIO) -> Frame:
    """One frame from a stream; EOFError when the stream ends or is corrupt."""
    (size,) = LENGTH.unpack(_read_exactly(stream, LENGTH.size))
    if size > MAX_HEADER_BYTES:
        raise EOFError(f"frame header of {size} bytes is larger than {MAX_HEADER_BYTES}: the stream is corrupt")
    try:
        header = _header(_read_exactly(stream, size))
        specs = [_array_spec(spec) for spec in header.pop(ARRAYS_KEY, [])]
    except FrameError as err:
        raise EOFError(f"{err}: the stream is corrupt") from err
    arrays = {}
    for name, dtype, shape in specs:
        array = np.empty(shape, dtype=dtype)
        view = memoryview(array).cast("B") if array.nbytes else None
        if view is not None and stream.readinto(view) != array.nbytes:
            raise EOFError(f"stream closed inside array {name!r}")
        arrays[name] = array
    return header, arrays


def frame_from_bytes(data: bytes) -> Frame:
    """One whole frame held in memory (read-only arrays viewing ``data``); FrameError says what is wrong."""
    if len(data) < LENGTH.size:
        raise FrameError(f"body of {len(data)} bytes is shorter than the {LENGTH.size}-byte frame length")
    (size,) = LENGTH.unpack_from(data)
    if size > min(MAX_HEADER_BYTES, len(data) - LENGTH.size):
        raise FrameError(f"frame header length {size} exceeds the body or the {MAX_HEADER_BYTES}-byte limit")
    header = _header(data[LENGTH.size:LENGTH.size + size])
    raw_specs = header.pop(ARRAYS_KEY, [])
    if not isinstance(raw_specs, list):
        raise FrameError(f"{ARRAYS_KEY} must be a list of array entries")
    specs = [_array_spec(spec) for spec in raw_specs]
    offset = LENGTH.size + size
    declared = sum(int(np.prod(shape, dtype=np.int64)) * dtype.itemsize for _, dtype, shape in specs)
    if declared != len(data) - offset:
        raise FrameError(f"the arrays declare {declared} bytes but the body carries {len(data) - offset}")
    arrays = {}
    for name, dtype, shape in specs:
        count = int(np.prod(shape, dtype=np.int64))
        arrays[name] = np.frombuffer(data, dtype=dtype, count=count, offset=offset).reshape(shape)
        offset += count * dtype.itemsize
    return header, arrays


def encode_observation(observation: Observation) -> Frame:
    arrays = {"state": observation.state, "normalized_state": observation.normalized_state}
    cameras = {}
    for name, frames in observation.cameras.items():
        arrays[f"camera.{name}.current"] = np.asarray(frames.current)
        arrays[f"camera.{name}.history"] = np.asarray(frames.history)
        cameras[name] = {"slot": frames.slot, "current_stamp_ns": frames.current_stamp_ns,
                         "history_stamp_ns": frames.history_stamp_ns}
    header = {"stamp_ns": observation.stamp_ns, "request_ns": observation.request_ns, "cameras": cameras,
              "instruction": observation.instruction, "recompute_foresight": observation.recompute_foresight,
              "decode_preview": observation.decode_preview}
    if observation.rtc is not None:
        rtc = observation.rtc
        arrays["rtc.target"] = np.asarray(rtc.target, np.float32)
        header["rtc"] = {"delay": rtc.delay, "horizon": rtc.horizon, "beta": rtc.beta, "schedule": rtc.schedule}
    return header, arrays


def decode_observation(header: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> Observation:
    cameras = {
        name: CameraFrames(slot=info["slot"], current=arrays[f"camera.{name}.current"],
                           current_stamp_ns=info["current_stamp_ns"], history=arrays[f"camera.{name}.history"],
                           history_stamp_ns=info["history_stamp_ns"])
        for name, info in header["cameras"].items()
    }
    return Observation(stamp_ns=header["stamp_ns"], request_ns=header["request_ns"], cameras=cameras,
                       state=arrays["state"], normalized_state=arrays["normalized_state"],
                       instruction=header["instruction"], recompute_foresight=header["recompute_foresight"],
                       decode_preview=header["decode_preview"],
                       rtc=RtcRequest(target=arrays["rtc.target"], **header["rtc"]) if "rtc" in header else None)


def encode_result(result: PolicyResult) -> Frame:
    arrays = {"actions": np.asarray(result.actions)}
    arrays.update({f"preview.{name}": np.asarray(image) for name, image in result.preview.items()})
    return {"timing_ns": dict(result.timing_ns)}, arrays


def decode_result(header: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> PolicyResult:
    preview = {name.removeprefix("preview."): image for name, image in arrays.items() if name.startswith("preview.")}
    return PolicyResult(actions=arrays["actions"], timing_ns=header["timing_ns"], preview=preview)
