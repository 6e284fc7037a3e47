"""policy_node recovering from a hung inference worker and a backward jump of ROS time, and refusing
to reset an e-stop that a dead thread latched; over the real middleware, the node in its own process.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.executors import SingleThreadedExecutor
from rosgraph_msgs.msg import Clock
from std_srvs.srv import Trigger

from internvla_ros.msg import PolicyStatus
from internvla_ros.ros.conversions import ns_to_time
from internvla_ros.runtime.config import RuntimeConfig

from .conftest import CONFIG_DIR, NodeProcess, spin_until
from .fake_robot import FakeRobot
from .policies import write_unit_stats

CONFIG_FILE = CONFIG_DIR / "dual_arm.yaml"
STARTUP_TIMEOUT_S = 60.0
WAIT_S = 30.0  # upper bound of the waits after start-up (each ends as soon as its condition holds)
INFERENCE_TIMEOUT_S = 2.0
SIM_START_NS = 1_000 * 1_000_000_000
JUMP_NS = 120 * 1_000_000_000  # ROS time goes back by more than all waits: a stall until it passes is caught
CLOCK_PERIOD_S = 0.01


class NodeProbe:
    """The test's node: status of the policy node, its services, and waiting on both."""

    def __init__(self, context: rclpy.context.Context, namespace: str, policy: NodeProcess) -> None:
        self.namespace, self.policy = namespace, policy
        self.node = rclpy.create_node("recovery_probe", context=context)
        self.executor = SingleThreadedExecutor(context=context)
        self.executor.add_node(self.node)
        self.statuses: list[PolicyStatus] = []
        self.node.create_subscription(PolicyStatus, f"{namespace}/policy_node/status", self.statuses.append, 50)

    def wait(self, condition: Callable[[], bool], what: str, timeout_s: float = WAIT_S) -> None:
        alive = lambda: self.policy.process.poll() is None  # noqa: E731
        ok = spin_until(self.executor, lambda: not alive() or condition(), timeout_s)
        assert alive(), self.policy.output()[-3000:]
        last = self.statuses[-1] if self.statuses else None
        assert ok, f"{what}: not within {timeout_s} s; last status {last}\n{self.policy.output()[-3000:]}"

    def wait_status(self, condition: Callable[[PolicyStatus], bool], what: str,
                    timeout_s: float = WAIT_S) -> PolicyStatus:
        self.statuses.clear()
        self.wait(lambda: any(condition(s) for s in self.statuses), what, timeout_s)
        return next(s for s in self.statuses if condition(s))

    def call(self, service: str) -> Trigger.Response:
        client = self.node.create_client(Trigger, f"{self.namespace}/policy_node/{service}")
        assert client.wait_for_service(timeout_sec=10.0), service
        future = client.call_async(Trigger.Request())
        self.wait(future.done, f"~/{service} answered", 10.0)
        return future.result()


def start_policy(start_node: Callable[..., NodeProcess], tmp_path: Path, namespace: str, policy: str,
                 *extra: str) -> NodeProcess:
    config = RuntimeConfig.from_yaml(CONFIG_FILE)
    model = write_unit_stats(tmp_path / "model", config.robot_type, config.dim)
    return start_node("internvla_ros.ros.policy_node", "--params-file", str(CONFIG_FILE),
                      "-p", f"model_path:={model}", "-p", f"policy_factory:={policy}", "-p", "autostart:=true",
                      "-p", "safety.dry_run:=false", "-p", "instruction:=wave", "-p", "status_rate_hz:=10.0",
                      "-r", f"__ns:={namespace}", *extra)


def running(status: PolicyStatus) -> bool:
    return status.state == PolicyStatus.STATE_RUNNING


@pytest.mark.slow
def test_a_hung_worker_is_restarted_while_the_robot_holds(ros_context, start_node, tmp_path: Path) -> None:
    namespace = "/hang"
    policy = start_policy(start_node, tmp_path, namespace, "test_sine_hang_once",
                          "-p", f"inference_timeout_s:={INFERENCE_TIMEOUT_S}")
    probe = NodeProbe(ros_context, namespace, policy)
    FakeRobot(probe.node, RuntimeConfig.from_yaml(CONFIG_FILE), namespace)
    probe.wait_status(running, "running", STARTUP_TIMEOUT_S)
    # The fifth request hangs: after inference_timeout_s the worker is killed and started again.
    held = probe.wait_status(lambda s: s.inference_timeouts == 1 and s.state == PolicyStatus.STATE_HOLDING,
                             "the request timed out, holding")
    assert held.worker_restarts == 0, held
    assert "inference worker restarting: no reply within 2 s" in held.last_error, held.last_error
    restarted = probe.wait_status(lambda s: s.worker_restarts == 1, "the worker was restarted")
    holding = [s for s in probe.statuses if s.worker_restarts == 0]
    assert {s.chunks_computed for s in holding} <= {held.chunks_computed}, "no chunk while the worker restarts"
    assert {s.state for s in holding} <= {PolicyStatus.STATE_HOLDING}
    probe.wait_status(lambda s: running(s) and s.chunks_computed >= restarted.chunks_computed + 3,
                      "chunks from the new worker")
    assert probe.statuses[-1].inference_timeouts == 1
    assert "inference worker restarted" in policy.output()
    assert policy.stop() == 0


@pytest.mark.slow
def test_reset_is_refused_after_a_thread_failed(ros_context, start_node, tmp_path: Path) -> None:
    namespace = "/reset"
    policy = start_policy(start_node, tmp_path, namespace, "test_foreign_preview")
    probe = NodeProbe(ros_context, namespace, policy)
    FakeRobot(probe.node, RuntimeConfig.from_yaml(CONFIG_FILE), namespace)
    probe.wait_status(running, "running", STARTUP_TIMEOUT_S)
    # An operator e-stop with healthy threads resets (no inference runs while it is latched).
    assert probe.call("estop").success
    probe.wait_status(lambda s: s.state == PolicyStatus.STATE_ESTOPPED, "e-stopped")
    assert probe.call("reset").success
    probe.wait_status(running, "running after the reset")
    # From its 20th result on, the policy returns a preview the node cannot publish: the inference thread dies.
    failed = probe.wait_status(lambda s: s.state == PolicyStatus.STATE_ESTOPPED, "the thread failure's e-stop")
    assert "inference thread failed" in failed.last_error, failed.last_error
    refused = probe.call("reset")
    assert not refused.success
    assert "the inference thread failed" in refused.message
    assert "deactivate, cleanup and configure the node again" in refused.message
    spin_until(probe.executor, lambda: False, 1.0)
    assert probe.statuses[-1].state == PolicyStatus.STATE_ESTOPPED, "the e-stop must stay latched"
    assert "reset refused" in policy.output()
    assert policy.stop() == 0


@pytest.mark.slow
def test_control_goes_on_after_ros_time_jumps_back(ros_context, start_node, tmp_path: Path) -> None:
    namespace = "/jump"
    sim = start_node("internvla_ros.ros.sim_robot", "-p", f"config:={CONFIG_FILE}", "-p", "use_sim_time:=true",
                     "-r", f"__ns:={namespace}")
    policy = start_policy(start_node, tmp_path, namespace, "test_sine", "-p", "use_sim_time:=true")
    probe = NodeProbe(ros_context, namespace, policy)
    clock = probe.node.create_publisher(Clock, "/clock", 10)
    offset_ns = [SIM_START_NS - time.monotonic_ns()]  # sim time runs at real-time speed from SIM_START_NS
    probe.node.create_timer(CLOCK_PERIOD_S, lambda: clock.publish(
        Clock(clock=ns_to_time(time.monotonic_ns() + offset_ns[0]))))
    violations: list[str] = []
    probe.node.create_subscription(DiagnosticArray, "/diagnostics", lambda m: violations.extend(
        kv.value for s in m.status if s.hardware_id == "sim_robot" for kv in s.values if kv.key == "limit_violations"),
        10)

    probe.wait_status(lambda s: running(s) and s.chunks_computed >= 3, "running", STARTUP_TIMEOUT_S)
    jumped_from_ns = time.monotonic_ns() + offset_ns[0]
    offset_ns[0] -= JUMP_NS

    def new_line(status: PolicyStatus) -> bool:  # stamped after the jump (earlier ones may still arrive)
        return status.header.stamp.sec * 1_000_000_000 + status.header.stamp.nanosec < jumped_from_ns

    first = probe.wait_status(new_line, "a status after the jump")
    probe.wait_status(lambda s: new_line(s) and running(s) and s.chunks_computed > first.chunks_computed + 3
                      and s.control_ticks > first.control_ticks + 100, "control and chunks after the jump")
    assert policy.output().count("ROS time jumped by -") == 1, policy.output()[-3000:]
    probe.wait(lambda: bool(violations), "the sim's diagnostics", 5.0)
    assert set(violations) == {"0"}, sim.output()[-2000:]
    assert "outside the joint limits" not in sim.output()
    assert policy.stop() == 0
