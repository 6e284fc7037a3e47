"""Fixtures for tests over the real ROS 2 middleware: contexts, node subprocesses, waiting."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

rclpy = pytest.importorskip("rclpy")

ROOT = Path(__file__).resolve().parents[2]
CONFIG_DIR = ROOT / "config"


@pytest.fixture
def ros_context() -> Iterator[rclpy.context.Context]:
    """An initialised rclpy context of the test's own, shut down afterwards."""
    context = rclpy.context.Context()
    rclpy.init(context=context)
    try:
        yield context
    finally:
        context.try_shutdown()


class NodeProcess:
    """A node started as `python -m MODULE --ros-args ...`, with its output kept in a log file."""

    def __init__(self, module: str, ros_args: list[str], log_path: Path) -> None:
        self.log_path = log_path
        self._log = log_path.open("w")
        self.process = subprocess.Popen([sys.executable, "-u", "-m", module, "--ros-args", *ros_args],
                                        stdout=self._log, stderr=subprocess.STDOUT, cwd=ROOT)

    def output(self) -> str:
        return self.log_path.read_text()

    def stop(self, timeout_s: float = 10.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        return self.process.returncode


@pytest.fixture
def start_node(tmp_path: Path) -> Iterator[Callable[..., NodeProcess]]:
    """Starts node subprocesses; every one still running at the end of the test is stopped."""
    started: list[NodeProcess] = []

    def start(module: str, *ros_args: str) -> NodeProcess:
        node = NodeProcess(module, list(ros_args), tmp_path / f"{module.rsplit('.', 1)[-1]}-{len(started)}.log")
        started.append(node)
        return node

    yield start
    for node in started:
        node.stop()


def spin_until(executor: rclpy.executors.Executor, condition: Callable[[], bool], timeout_s: float) -> bool:
    """Spins until condition() holds or timeout_s passes; returns whether it held."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        executor.spin_once(timeout_sec=0.02)
    return condition()


RESEND_AFTER_S = 5.0
"""An idempotent request not answered by then is sent again. Fast DDS drops a service's reply when the server
has not yet matched the client's reply reader (`service_is_ready` sees only the client's side); a loaded
machine makes that likely on a fresh client, and asking again is the remedy, as for any lost datagram."""


def call_service(executor: rclpy.executors.Executor, client: Any, request: Any, timeout_s: float) -> Any:
    """The reply to an idempotent request, sent again every RESEND_AFTER_S until one reply arrives."""
    assert spin_until(executor, client.service_is_ready, timeout_s), f"{client.srv_name} not up"
    deadline = time.monotonic() + timeout_s
    futures: list[Any] = []
    while time.monotonic() < deadline:
        futures.append(client.call_async(request))
        answered = lambda: any(f.done() for f in futures)  # noqa: E731
        if spin_until(executor, answered, min(RESEND_AFTER_S, deadline - time.monotonic())):
            return next(f for f in futures if f.done()).result()
    raise AssertionError(f"{client.srv_name}: no answer in {timeout_s} s ({len(futures)} requests)")
