"""The inference worker: the frame format, and a real child process running a policy."""

from __future__ import annotations

import io
import json
import re
import struct

import numpy as np
import pytest

from internvla_ros.runtime.internvla_policy import warmup_observation
from internvla_ros.runtime.worker import InferenceError, InferenceWorker, read_frame, write_frame


def round_trip(header: dict, arrays: dict) -> tuple[dict, dict]:
    stream = io.BytesIO()
    write_frame(stream, header, arrays)
    stream.seek(0)
    return read_frame(io.BufferedReader(stream))


def test_frames_round_trip_arrays_exactly() -> None:
    arrays = {"image": np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3), "state": np.array([0.5, -1.0]),
              "empty": np.zeros((0, 4), np.float32), "flag": np.array([True, False]),
              "strided": np.arange(12, dtype=np.int64).reshape(3, 4)[:, ::2]}
    header, out = round_trip({"instruction": "pick", "stamp_ns": 7}, arrays)
    assert header == {"instruction": "pick", "stamp_ns": 7}
    for name, value in arrays.items():
        assert out[name].dtype == value.dtype and out[name].shape == value.shape
        np.testing.assert_array_equal(out[name], value)


def test_a_frame_cannot_smuggle_objects_or_lie_about_its_size() -> None:
    head = json.dumps({"__arrays__": [{"name": "x", "dtype": "|O", "shape": [1]}]}).encode()
    with pytest.raises(EOFError, match="not a plain numeric type"):
        read_frame(io.BufferedReader(io.BytesIO(struct.pack("<Q", len(head)) + head + b"\0" * 8)))
    head = json.dumps({"__arrays__": [{"name": "x", "dtype": "<f8", "shape": [4]}]}).encode()
    with pytest.raises(EOFError, match="inside array 'x'"):
        read_frame(io.BufferedReader(io.BytesIO(struct.pack("<Q", len(head)) + head + b"\0" * 8)))


@pytest.mark.slow
def test_worker_process_answers_and_reports_policy_errors() -> None:
    worker = InferenceWorker("test.ros.policies:sine_policy")
    info = worker.start(timeout_s=60)
    try:
        assert info["policy"] == "sine" and info["startup_s"] >= 0
        observation = warmup_observation(3)
        result = worker.infer(observation)
        assert result.actions.shape == (50, 32) and np.isfinite(result.actions).all()
        assert result.timing_ns["total"] > 0
        too_long = type(observation)(**{**observation.__dict__, "instruction": "go " * 100})
        with pytest.raises(InferenceError, match="shorten the instruction"):
            worker.infer(too_long)
        assert worker.infer(observation).actions.shape == (50, 32)  # one bad request does not kill it
    finally:
        worker.close()
    with pytest.raises(InferenceError, match="not running"):
        worker.infer(observation)


def test_worker_start_failure_names_the_cause() -> None:
    worker = InferenceWorker("test.ros.policies:failing_policy")
    with pytest.raises(InferenceError, match="failed to start: RuntimeError: this policy cannot be built"):
        worker.start(timeout_s=60)
    with pytest.raises(InferenceError, match=re.escape("must look like 'package.module:function'")):
        InferenceWorker("no_colon").start(timeout_s=60)
