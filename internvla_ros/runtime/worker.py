"""Inference in a child process, so the control loop never waits on the GIL or competes for BLAS threads.

The parent (the node, the runtime benchmark) starts `python -m internvla_ros.runtime.worker` with the
policy's registered name (the `internvla_ros.policies` entry points) and its JSON keyword arguments.
Both sides exchange frames over the child's stdin/stdout (runtime/wire.py, the format the inference
server's HTTP bodies use too): a length-prefixed JSON header naming each array's dtype and shape, then
the arrays' raw bytes. Nothing is pickled: a frame can only ever decode to plain numeric arrays and
JSON values.

    worker = InferenceWorker("internvla", {"model": "models/default"})
    worker.start()                      # returns once the child has loaded and warmed up the policy
    result = worker.infer(observation, timeout_s=5.0)  # blocking; InferenceTimeout when no reply in time
    worker.restart()                    # after a timeout: kill the child, start and warm up a new one
    worker.close()
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, BinaryIO

import numpy as np

from internvla_ros.runtime.errors import PolicyRuntimeError
from internvla_ros.runtime.observation import Observation
from internvla_ros.runtime.policy import Policy, PolicyResult
from internvla_ros.runtime.policy_registry import load_policy_factory
from internvla_ros.runtime.wire import (
    decode_observation,
    decode_result,
    encode_observation,
    encode_result,
    read_frame,
    write_frame,
)

READY = "ready"
ENDED = "ended"  # the reader's last reply: the child's output closed
DEFAULT_STARTUP_TIMEOUT_S = 600.0
KILL_GRACE_S = 2.0  # SIGTERM, then SIGKILL after this
EXIT_CODE_WAIT_S = 1.0  # after EOF, how long the reader waits for the child's exit code
CANCEL_CHECK_S = 0.1  # how often a cancellable start-up looks at its cancel event


class InferenceError(PolicyRuntimeError):
    """The inference worker failed to start, crashed, or reported an error for one request."""


class InferenceTimeout(InferenceError):
    """The worker did not answer a request in time (it may hang): restart it before the next request."""


class WorkerGone(InferenceError):
    """The worker process is not there to answer (it crashed or was killed, or a request of it is still
    unanswered): restart it."""


def resolve_factory(name: str) -> Callable[..., Policy]:
    """A policy registered in the entry-point group, never an arbitrary module path (policy_registry)."""
    return load_policy_factory(name)


class InferenceWorker:
    """The parent's handle on one worker process. `infer` is thread-safe (one request at a time).

    Two daemon threads per child move the frames: a writer (so a request to a child that stopped
    reading cannot block the caller past its deadline) and a reader that queues every reply, which
    `infer` takes with a deadline. A request left unanswered makes the worker refuse further requests
    until `restart()`: its late reply would otherwise be taken as the answer to the next one.
    """

    def __init__(self, factory: str, kwargs: Mapping[str, Any] | None = None, threads: int = 1,
                 nice: int = 0) -> None:
        self._command = [sys.executable, "-m", "internvla_ros.runtime.worker", "--factory", factory,
                         "--kwargs", json.dumps(dict(kwargs or {})), "--threads", str(threads), "--nice", str(nice)]
        self._child: _Child | None = None
        self._lock = threading.Lock()
        self._startup_timeout_s = DEFAULT_STARTUP_TIMEOUT_S
        self.info: dict[str, Any] = {}

    @property
    def pid(self) -> int | None:
        """The child's process id while one is running (for logs and tests)."""
        child = self._child
        return None if child is None else child.process.pid

    def start(self, timeout_s: float = DEFAULT_STARTUP_TIMEOUT_S,
              cancel: threading.Event | None = None) -> dict[str, Any]:
        """Starts the child and waits until it has built and warmed up the policy; returns its info.

        Setting ``cancel`` (a caller that is shutting down) kills the starting child and raises."""
        self._startup_timeout_s = timeout_s
        child = _Child(subprocess.Popen(self._command, stdin=subprocess.PIPE, stdout=subprocess.PIPE))
        self._child = child
        deadline = time.monotonic() + timeout_s
        while True:
            remaining_s = deadline - time.monotonic()
            if remaining_s <= 0 or (cancel is not None and cancel.is_set()):
                self.kill()
                why = "start-up cancelled" if remaining_s > 0 else f"not ready within {timeout_s:.0f} s"
                raise InferenceError(f"the inference worker did not start: {why}")
            try:
                header, _ = child.replies.get(timeout=remaining_s if cancel is None
                                              else min(remaining_s, CANCEL_CHECK_S))
                break
            except queue.Empty:
                continue
        if header.get("status") != READY:
            self.kill()
            raise InferenceError(f"the inference worker failed to start: {header.get('error', header)}")
        self.info = header.get("info", {})
        return self.info

    def restart(self, cancel: threading.Event | None = None) -> dict[str, Any]:
        """Kills the child (hung or not) and starts a new one with the same arguments and start-up timeout."""
        self.kill()
        return self.start(self._startup_timeout_s, cancel)

    def infer(self, observation: Observation, timeout_s: float | None = None) -> PolicyResult:
        """The policy's result for one observation; InferenceTimeout when no reply came within timeout_s."""
        with self._lock:
            child = self._child  # close() may clear it from another thread
            if child is None or child.ended or child.process.poll() is not None:
                raise WorkerGone("the inference worker is not running")
            if child.unanswered:
                raise WorkerGone("the inference worker left an earlier request unanswered: restart it")
            child.requests.put(encode_observation(observation))
            try:
                header, arrays = child.replies.get(timeout=timeout_s)
            except queue.Empty:
                child.unanswered = True
                raise InferenceTimeout(f"no reply within {timeout_s:g} s") from None
        if header.get("status") == ENDED:
            child.ended = True
            raise WorkerGone(str(header.get("error", header)))
        if header.get("status") != "ok":
            raise InferenceError(str(header.get("error", header)))
        return decode_result(header, arrays)

    def kill(self, grace_s: float = KILL_GRACE_S) -> None:
        """Stops the child now, whatever it is doing: SIGTERM, then SIGKILL after grace_s."""
        child, self._child = self._child, None
        if child is not None:
            child.requests.put(None)
            _stop_process(child.process, terminate=True, grace_s=grace_s)

    def close(self, timeout_s: float = 10.0) -> None:
        """Lets the child finish (EOF on its input ends its loop); kills it after timeout_s."""
        child, self._child = self._child, None
        if child is not None:
            child.requests.put(None)  # the writer closes the child's stdin once the queue is drained
            _stop_process(child.process, terminate=False, grace_s=timeout_s)


class _Child:
    """One worker process and the two threads that move its frames."""

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        self.process = process
        self.requests: queue.Queue[tuple[dict[str, Any], dict[str, np.ndarray]] | None] = queue.Queue()
        self.replies: queue.Queue[tuple[dict[str, Any], dict[str, np.ndarray]]] = queue.Queue()
        self.unanswered = False  # a request timed out: its late reply would be misread as the next one's
        self.ended = False  # the reader saw the child's output end
        threading.Thread(target=self._write, name=f"inference-worker-{process.pid}-writer", daemon=True).start()
        threading.Thread(target=self._read, name=f"inference-worker-{process.pid}-reader", daemon=True).start()

    def _write(self) -> None:
        stdin = self.process.stdin
        assert stdin is not None
        try:
            while (frame := self.requests.get()) is not None:
                write_frame(stdin, *frame)
        except (OSError, ValueError):
            pass  # the child is gone: the reader reports it
        finally:
            with contextlib.suppress(OSError):
                stdin.close()

    def _read(self) -> None:
        stdout = self.process.stdout
        assert stdout is not None
        try:
            while True:
                self.replies.put(read_frame(stdout))
        except (EOFError, OSError, ValueError) as err:
            try:
                code = self.process.wait(EXIT_CODE_WAIT_S)
            except subprocess.TimeoutExpired:
                code = None
            self.replies.put(({"status": ENDED, "error": f"worker process ended (exit code {code}): {err}"}, {}))
        finally:
            stdout.close()


def _stop_process(process: subprocess.Popen[bytes], terminate: bool, grace_s: float) -> None:
    if terminate:
        with contextlib.suppress(ProcessLookupError):
            process.terminate()
    try:
        process.wait(grace_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


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
