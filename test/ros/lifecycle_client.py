"""A test process's handle on a lifecycle node over the middleware: its lifecycle services, its children."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import rclpy
from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState, GetState
from rcl_interfaces.msg import Parameter as ParameterMsg
from rcl_interfaces.srv import SetParameters
from rclpy.parameter import Parameter

from .conftest import RESEND_AFTER_S, call_service, spin_until

SERVICE_TIMEOUT_S = 30.0
GOAL = {"configure": "inactive", "activate": "active", "deactivate": "inactive", "cleanup": "unconfigured",
        "shutdown": "finalized"}
OFFERED = {"unconfigured": {"configure", "shutdown"}, "inactive": {"activate", "cleanup", "shutdown"},
           "active": {"deactivate", "shutdown"}}
"""The transitions each primary state offers (the lifecycle state machine's)."""


class LifecycleClient:
    def __init__(self, probe: rclpy.node.Node, executor: rclpy.executors.Executor, node: str) -> None:
        self.executor = executor
        self._change = probe.create_client(ChangeState, f"{node}/change_state")
        self._get = probe.create_client(GetState, f"{node}/get_state")
        self._set = probe.create_client(SetParameters, f"{node}/set_parameters")

    def call(self, client: Any, request: Any, timeout_s: float = SERVICE_TIMEOUT_S) -> Any:
        return call_service(self.executor, client, request, timeout_s)

    def state(self, timeout_s: float = SERVICE_TIMEOUT_S) -> str:
        return self.call(self._get, GetState.Request(), timeout_s).current_state.label

    def change(self, label: str, timeout_s: float = 120.0) -> bool:
        """One transition, never asked twice where it could run twice. If its reply is lost, the node's state
        tells whether it succeeded; a transition the node's state does not offer starts nothing, so it is asked
        again (a node's first reply may be lost while discovery matches its reply path)."""
        future = self.change_async(label)
        deadline = time.monotonic() + timeout_s
        while not spin_until(self.executor, future.done, min(RESEND_AFTER_S, max(deadline - time.monotonic(), 0))):
            if time.monotonic() >= deadline:
                raise AssertionError(f"{self._change.srv_name}: no answer to {label!r} in {timeout_s} s")
            now = self.state()
            if now == GOAL[label] and not spin_until(self.executor, future.done, RESEND_AFTER_S):
                return True  # the transition ran; its reply was lost
            if label not in OFFERED.get(now, set()):  # and not its goal: it never started
                future = self.change_async(label)  # refused either way: asking again changes nothing
        return future.result().success

    def change_async(self, label: str) -> Any:
        assert spin_until(self.executor, self._change.service_is_ready, SERVICE_TIMEOUT_S)
        return self._change.call_async(ChangeState.Request(transition=Transition(label=label)))

    def set(self, name: str, value: Any) -> tuple[bool, str]:
        parameter: ParameterMsg = Parameter(name, value=value).to_parameter_msg()
        result = self.call(self._set, SetParameters.Request(parameters=[parameter])).results[0]
        return result.successful, result.reason


def worker_children(pid: int) -> list[int]:
    """Inference worker processes whose parent is ``pid``."""
    children = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        if parent == pid and b"internvla_ros.runtime.worker" in cmdline:
            children.append(int(entry.name))
    return children


def wait_for(condition: Any, timeout_s: float) -> bool:
    """Polls a condition that needs no spinning (a process table, a log file)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return bool(condition())

