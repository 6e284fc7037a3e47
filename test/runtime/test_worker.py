"""The inference worker: the frame format, and a real child process running a policy."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import struct
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from internvla_ros.runtime.internvla_policy import warmup_observation
from internvla_ros.runtime.test_policies import HANG_ON_CALL, SLOW_START_S
from internvla_ros.runtime.worker import (
    InferenceError,
    InferenceTimeout,
    InferenceWorker,
    WorkerGone,
    read_frame,
    write_frame,
)

ANSWER_TIMEOUT_S = 30.0  # for requests that must be answered: generous on a loaded machine
HANG_TIMEOUT_S = 1.0


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
    worker = InferenceWorker("test_sine")
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
    worker = InferenceWorker("test_failing")
    with pytest.raises(InferenceError, match="failed to start: RuntimeError: this policy cannot be built"):
        worker.start(timeout_s=60)
    # Only registered names: a module path that could import anything is refused by the child itself.
    refused = "'os:system' is not registered in the 'internvla_ros.policies'"
    with pytest.raises(InferenceError, match=re.escape(refused)):
        InferenceWorker("os:system").start(timeout_s=60)


def process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.slow
def test_a_hung_worker_times_out_and_is_replaced(tmp_path: Path) -> None:
    worker = InferenceWorker("test_sine_hang_once", {"model": str(tmp_path)})
    worker.start(timeout_s=60)
    observation = warmup_observation(3)
    try:
        for _ in range(HANG_ON_CALL - 1):
            worker.infer(observation, timeout_s=ANSWER_TIMEOUT_S)
        hung = worker.pid
        started = time.monotonic()
        with pytest.raises(InferenceTimeout, match=f"no reply within {HANG_TIMEOUT_S:g} s"):
            worker.infer(observation, timeout_s=HANG_TIMEOUT_S)
        assert time.monotonic() - started < ANSWER_TIMEOUT_S, "the deadline was not kept"
        # Its late reply would be taken for the next request's: refused until restarted.
        with pytest.raises(WorkerGone, match="unanswered"):
            worker.infer(observation, timeout_s=ANSWER_TIMEOUT_S)
        assert process_exists(hung), "the hung child is only killed by restart()"
        info = worker.restart()
        assert info["policy"] == "sine" and worker.pid != hung
        assert not process_exists(hung), "the hung child must be killed, not left behind"
        for _ in range(HANG_ON_CALL + 1):  # the new child answers every request, the fifth too
            assert worker.infer(observation, timeout_s=ANSWER_TIMEOUT_S).actions.shape == (50, 32)
    finally:
        worker.close()


@pytest.mark.slow
def test_a_crashed_worker_fails_the_request_at_once() -> None:
    worker = InferenceWorker("test_sine")
    worker.start(timeout_s=60)
    try:
        os.kill(worker.pid, signal.SIGKILL)
        with pytest.raises(WorkerGone, match=r"not running|exit code -9"):
            worker.infer(warmup_observation(3), timeout_s=ANSWER_TIMEOUT_S)
    finally:
        worker.close()


def test_a_start_up_can_be_cancelled() -> None:
    worker = InferenceWorker("test_sine_slow_start")  # takes SLOW_START_S to build
    cancel = threading.Event()
    threading.Timer(0.5, cancel.set).start()
    started = time.monotonic()
    with pytest.raises(InferenceError, match="start-up cancelled"):
        worker.start(timeout_s=60, cancel=cancel)
    assert time.monotonic() - started < SLOW_START_S, "the cancel must not wait for the start-up to finish"
    assert worker.pid is None
    with pytest.raises(WorkerGone, match="not running"):
        worker.infer(warmup_observation(3))
