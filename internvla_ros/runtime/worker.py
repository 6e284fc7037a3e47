"""Inference in a child process, so the control loop never waits on the GIL or competes for BLAS threads.

The parent (the node, the runtime benchmark) starts `python -m internvla_ros.runtime.worker` with the
policy's factory ("module:function") and its JSON keyword arguments. Both sides exchange frames over the
child's stdin/stdout: a length-prefixed JSON header naming each array's dtype and shape, then the arrays'
raw bytes. Nothing is pickled: a frame can only ever decode to plain numeric arrays and JSON values.

    worker = InferenceWorker("internvla_ros.runtime.internvla_policy:load_policy", {"model": "models/default"})
    worker.start()                      # returns once the child has loaded and warmed up the policy
    result = worker.infer(observation)  # blocking; call it from an inference thread
    worker.close()
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, BinaryIO

import numpy as np

from internvla_ros.runtime.errors import PolicyRuntimeError
from internvla_ros.runtime.observation import CameraFrames, Observation
from internvla_ros.runtime.policy import Policy, PolicyResult

LENGTH = struct.Struct("<Q")
MAX_HEADER_BYTES = 1 << 20
ARRAYS_KEY = "__arrays__"
ALLOWED_DTYPE_KINDS = "biuf"  # bool, signed/unsigned integers, floats: nothing that can hold objects
READY = "ready"


class InferenceError(PolicyRuntimeError):
    """The inference worker failed to start, crashed, or reported an error for one request."""


def write_frame(stream: BinaryIO, header: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> None:
    """A length-prefixed JSON header (with each array's name, dtype and shape), then the raw array bytes.

    The arrays are written straight from their buffers: no serialised copy of several megabytes of
    camera frames is made while holding the GIL, which the control thread of the same process needs.
    """
    contiguous = {name: np.ascontiguousarray(value) for name, value in arrays.items()}
    specs = [{"name": name, "dtype": value.dtype.str, "shape": list(value.shape)} for name, value in contiguous.items()]
    head = json.dumps({**header, ARRAYS_KEY: specs}).encode()
    stream.write(LENGTH.pack(len(head)))
    stream.write(head)
    for value in contiguous.values():
        if value.nbytes:
            stream.write(memoryview(value).cast("B"))
    stream.flush()


def _read_exactly(stream: BinaryIO, size: int) -> bytes:
    data = stream.read(size)
    if data is None or len(data) != size:
        raise EOFError(f"stream closed after {0 if data is None else len(data)} of {size} bytes")
    return data


def _array_dtype(text: str) -> np.dtype:
    dtype = np.dtype(text)
    if dtype.kind not in ALLOWED_DTYPE_KINDS:
        raise EOFError(f"array dtype {text!r} is not a plain numeric type: the stream is corrupt")
    return dtype


def read_frame(stream: BinaryIO) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    (size,) = LENGTH.unpack(_read_exactly(stream, LENGTH.size))
    if size > MAX_HEADER_BYTES:
        raise EOFError(f"frame header of {size} bytes is larger than {MAX_HEADER_BYTES}: the stream is corrupt")
    header = json.loads(_read_exactly(stream, size))
    arrays = {}
    for spec in header.pop(ARRAYS_KEY, []):
        array = np.empty(spec["shape"], dtype=_array_dtype(spec["dtype"]))
        view = memoryview(array).cast("B") if array.nbytes else None
        if view is not None and stream.readinto(view) != array.nbytes:
            raise EOFError(f"stream closed inside array {spec['name']!r}")
        arrays[spec["name"]] = array
    return header, arrays


def encode_observation(observation: Observation) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
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
                       decode_preview=header["decode_preview"])


def encode_result(result: PolicyResult) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    arrays = {"actions": np.asarray(result.actions)}
    arrays.update({f"preview.{name}": np.asarray(image) for name, image in result.preview.items()})
    return {"timing_ns": dict(result.timing_ns)}, arrays


def decode_result(header: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> PolicyResult:
    preview = {name.removeprefix("preview."): image for name, image in arrays.items() if name.startswith("preview.")}
    return PolicyResult(actions=arrays["actions"], timing_ns=header["timing_ns"], preview=preview)


def resolve_factory(spec: str) -> Callable[..., Policy]:
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise InferenceError(f"policy factory '{spec}' must look like 'package.module:function'")
    return getattr(importlib.import_module(module_name), attribute)


class InferenceWorker:
    """The parent's handle on one worker process. `infer` is thread-safe (one request at a time)."""

    def __init__(self, factory: str, kwargs: Mapping[str, Any] | None = None, threads: int = 1,
                 nice: int = 5) -> None:
        self._command = [sys.executable, "-m", "internvla_ros.runtime.worker", "--factory", factory,
                         "--kwargs", json.dumps(dict(kwargs or {})), "--threads", str(threads), "--nice", str(nice)]
        self._process: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        self.info: dict[str, Any] = {}

    def start(self, timeout_s: float = 600.0) -> dict[str, Any]:
        """Starts the child and waits until it has built and warmed up the policy; returns its info."""
        self._process = subprocess.Popen(self._command, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        result: list[Any] = []
        reader = threading.Thread(target=lambda: result.append(self._receive()), daemon=True)
        reader.start()
        reader.join(timeout_s)
        if not result:
            self.close()
            raise InferenceError(f"the inference worker did not become ready within {timeout_s:.0f} s")
        header, _ = result[0]
        if header.get("status") != READY:
            self.close()
            raise InferenceError(f"the inference worker failed to start: {header.get('error', header)}")
        self.info = header.get("info", {})
        return self.info

    def _receive(self, process: subprocess.Popen[bytes] | None = None) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        process = process or self._process
        try:
            return read_frame(process.stdout)
        except (EOFError, OSError, ValueError) as err:  # ValueError: the pipe was closed by close()
            code = process.poll()
            return {"status": "error", "error": f"worker process ended (exit code {code}): {err}"}, {}

    def infer(self, observation: Observation) -> PolicyResult:
        with self._lock:
            process = self._process  # close() may clear it from another thread
            if process is None or process.poll() is not None:
                raise InferenceError("the inference worker is not running")
            try:
                write_frame(process.stdin, *encode_observation(observation))
            except (OSError, ValueError) as err:
                raise InferenceError(f"the inference worker is gone: {err}") from err
            header, arrays = self._receive(process)
        if header.get("status") != "ok":
            raise InferenceError(str(header.get("error", header)))
        return decode_result(header, arrays)

    def close(self, timeout_s: float = 10.0) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        if process.stdin is not None:
            process.stdin.close()  # EOF: the child leaves its loop
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()


def serve(factory: str, kwargs: Mapping[str, Any], threads: int, stdin: BinaryIO, stdout: BinaryIO) -> int:
    """The child's loop: build the policy, report ready, answer one frame per request until EOF."""
    try:
        import torch

        torch.set_num_threads(threads)
        torch.set_num_interop_threads(1)
    except ImportError:
        pass
    try:
        started = time.monotonic()
        policy = resolve_factory(factory)(**kwargs)
        info = dict(getattr(policy, "info", {}), startup_s=round(time.monotonic() - started, 3))
    except Exception as err:  # the parent must learn why, whatever the policy raised
        write_frame(stdout, {"status": "error", "error": f"{type(err).__name__}: {err}"}, {})
        return 1
    write_frame(stdout, {"status": READY, "info": info}, {})
    while True:
        try:
            header, arrays = read_frame(stdin)
        except EOFError:
            return 0
        try:
            result = policy.infer(decode_observation(header, arrays))
            out_header, out_arrays = encode_result(result)
            write_frame(stdout, {"status": "ok", **out_header}, out_arrays)
        except Exception as err:  # one failed request must not kill the worker; the parent decides
            write_frame(stdout, {"status": "error", "error": f"{type(err).__name__}: {err}"}, {})


def main() -> int:
    parser = argparse.ArgumentParser(description="internvla_ros inference worker (started by InferenceWorker)")
    parser.add_argument("--factory", required=True)
    parser.add_argument("--kwargs", default="{}")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--nice", type=int, default=0)
    args = parser.parse_args()
    if args.nice:
        os.nice(args.nice)  # the control loop in the parent keeps priority over inference
    # Frames own the original stdout; anything a library prints goes to stderr instead of corrupting them.
    frames = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    return serve(args.factory, json.loads(args.kwargs), args.threads, sys.stdin.buffer, frames)


if __name__ == "__main__":
    sys.exit(main())
