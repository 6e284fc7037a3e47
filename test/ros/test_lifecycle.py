"""policy_node's lifecycle over the real middleware: every transition, failures, and answers while loading.

The node runs as its own process with an analytic policy (registered as test_sine) in the real inference
worker; the test drives it through its lifecycle services, as `ros2 lifecycle set` or a lifecycle
manager does, and watches its worker process, its topics and its log.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import rclpy
import yaml
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from std_msgs.msg import Float64MultiArray, String
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory

from internvla_ros.msg import PolicyStatus
from internvla_ros.ros.lifecycle import TransitionExecutor
from internvla_ros.runtime.config import RuntimeConfig
from internvla_ros.runtime.test_policies import SLOW_START_S

from .conftest import CONFIG_DIR, spin_until
from .lifecycle_client import LifecycleClient, wait_for, worker_children
from .policies import write_unit_stats

CHURN_S = 5.0  # without the fix, the spin loop died within a second of this churn
CONFIG_FILE = CONFIG_DIR / "dual_arm.yaml"
CONFIG = RuntimeConfig.from_yaml(CONFIG_FILE)
PROCESS_TIMEOUT_S = 30.0
GET_STATE_DEADLINE_S = 1.0


def start_policy(start_node, tmp_path: Path, namespace: str, *extra: str):
    model = write_unit_stats(tmp_path / "model", CONFIG.robot_type, CONFIG.dim)
    return start_node("internvla_ros.ros.policy_node", "--params-file", str(CONFIG_FILE), "-p", f"model_path:={model}",
                      "-p", "policy_factory:=test_sine", "-p", "status_rate_hz:=5.0", "-r", f"__ns:={namespace}",
                      *extra)


def probe(context: rclpy.context.Context, name: str) -> tuple[rclpy.node.Node, SingleThreadedExecutor]:
    node = rclpy.create_node(name, context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    return node, executor


@pytest.mark.slow
def test_every_transition_in_turn_with_commands_only_while_active(ros_context, start_node, tmp_path: Path) -> None:
    """configure, activate, deactivate, activate, deactivate, cleanup, configure, shutdown; every command
    the node counts as sent while active reaches the controllers (none is dropped by an inactive publisher)."""
    ns = "/cycle"
    controllers = {c.name: ("joint_trajectory" if c.type == "joint_trajectory" else "commands")
                   for c in CONFIG.controllers}
    # Deep command queues, through the standard QoS overrides, so that counting every message is exact.
    params = tmp_path / "qos.yaml"
    params.write_text(yaml.safe_dump({"/**": {"ros__parameters": {"qos_overrides": {
        f"{ns}/{name}/{kind}": {"publisher": {"depth": 1000}} for name, kind in controllers.items()}}}}))
    sim = start_node("internvla_ros.ros.sim_robot", "-p", f"config:={CONFIG_FILE}", "-r", f"__ns:={ns}")
    policy = start_policy(start_node, tmp_path, ns, "--params-file", str(params), "-p", "safety.dry_run:=false",
                          "-p", "instruction:=wave")
    node, executor = probe(ros_context, "cycle_probe")
    lifecycle = LifecycleClient(node, executor, f"{ns}/policy_node")
    received: list[str] = []
    statuses: list[PolicyStatus] = []
    deep = QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE)
    for name, kind in controllers.items():
        node.create_subscription(JointTrajectory if kind == "joint_trajectory" else Float64MultiArray,
                                 f"{ns}/{name}/{kind}", lambda _, n=name: received.append(n), deep)
    node.create_subscription(PolicyStatus, f"{ns}/policy_node/status", statuses.append, 10)

    def commands_flow() -> bool:
        before = len(received)
        spin_until(executor, lambda: len(received) >= before + 20, 10.0)
        return len(received) >= before + 20

    def sent_after_deactivation() -> int:
        statuses.clear()
        assert spin_until(executor, lambda: len(statuses) >= 2, 5.0)
        return statuses[-1].commands_sent

    assert lifecycle.state() == "unconfigured"
    assert not worker_children(policy.process.pid)
    assert lifecycle.change("configure"), policy.output()[-3000:]
    assert lifecycle.state() == "inactive" and len(worker_children(policy.process.pid)) == 1
    first_worker = worker_children(policy.process.pid)
    for _ in range(2):
        assert lifecycle.change("activate") and lifecycle.state() == "active"
        assert commands_flow(), policy.output()[-3000:]
        assert lifecycle.change("deactivate") and lifecycle.state() == "inactive"
        sent = sent_after_deactivation()
        spin_until(executor, lambda s=sent: len(received) >= s, 5.0)
        assert len(received) == sent, f"{sent - len(received)} commands never reached a controller"
        spin_until(executor, lambda: False, 0.5)
        assert len(received) == sent, "commands while inactive"
    assert lifecycle.change("cleanup") and lifecycle.state() == "unconfigured"
    assert wait_for(lambda: not worker_children(policy.process.pid), 5.0), "cleanup left the worker running"
    assert lifecycle.change("configure") and lifecycle.state() == "inactive"
    assert worker_children(policy.process.pid) not in ([], first_worker), "configure again starts a new worker"
    assert lifecycle.change("shutdown") and lifecycle.state() == "finalized"
    assert wait_for(lambda: not worker_children(policy.process.pid), 5.0), "shutdown left the worker running"
    log = policy.output()
    for line in ("configure: now inactive", "activate: now active", "deactivate: now inactive",
                 "cleanup: now unconfigured", "shutdown: now finalized"):
        assert line in log
    # rclpy's warning when Fast DDS drops a reply (this client asks again) is the middleware's, not a fault.
    own = "\n".join(line for line in log.splitlines() if "failed to send response (timeout)" not in line)
    assert "Traceback" not in own and "failed" not in own, log[-3000:]
    assert policy.stop() == 0 and sim.stop() == 0


@pytest.mark.slow
def test_shutdown_from_every_primary_state(ros_context, start_node, tmp_path: Path) -> None:
    """unconfigured, inactive and active nodes (no robot: active waits for joint states) all finalize."""
    paths = {"unconfigured": (), "inactive": ("configure",), "active": ("configure", "activate")}
    policies = {state: start_policy(start_node, tmp_path, f"/shutdown_{state}") for state in paths}
    node, executor = probe(ros_context, "shutdown_probe")
    for state, transitions in paths.items():
        lifecycle = LifecycleClient(node, executor, f"/shutdown_{state}/policy_node")
        for label in transitions:
            assert lifecycle.change(label), policies[state].output()[-3000:]
        assert lifecycle.state() == state
        assert lifecycle.change("shutdown"), policies[state].output()[-3000:]
        assert lifecycle.state() == "finalized"
        pid = policies[state].process.pid
        assert wait_for(lambda p=pid: not worker_children(p), 5.0), f"{state}: the worker outlived shutdown"
        assert "shutdown: now finalized" in policies[state].output()
        assert lifecycle.change("configure") is False, "a finalized node configures no more"
        assert policies[state].process.poll() is None, "a refused transition must not kill the node"
    for policy in policies.values():
        assert policy.stop() == 0


@pytest.mark.slow
def test_a_failed_configure_names_the_problem_and_succeeds_once_fixed(ros_context, start_node, tmp_path: Path) -> None:
    ns = "/fix"
    policy = start_policy(start_node, tmp_path, ns, "-p", f"model_path:={tmp_path / 'missing_model'}")
    node, executor = probe(ros_context, "fix_probe")
    lifecycle = LifecycleClient(node, executor, f"{ns}/policy_node")
    diagnostics: list[DiagnosticArray] = []
    node.create_subscription(DiagnosticArray, "/diagnostics", diagnostics.append, 50)

    assert lifecycle.change("activate") is False, "activate is not a transition of an unconfigured node"
    assert lifecycle.change("configure") is False
    assert lifecycle.state() == "unconfigured"
    log = policy.output()
    assert "missing_model" in log and "configure failed: the node stays unconfigured" in log
    assert not worker_children(policy.process.pid)
    diagnostics.clear()
    assert spin_until(executor, lambda: any(s.name == f"{ns}/policy_node: lifecycle" and s.level == b"\x02"
                                            and "missing_model" in s.message
                                            for d in diagnostics for s in d.status), 5.0), "no ERROR diagnostic"

    ok, _ = lifecycle.set("model_path", str(tmp_path / "model"))
    assert ok
    ok, reason = lifecycle.set("rates.control_rate_hz", -5.0)
    assert ok, reason  # robot values are checked when the node configures, all together
    assert lifecycle.change("configure") is False
    assert "rates.control_rate_hz" in policy.output()
    ok, _ = lifecycle.set("rates.control_rate_hz", 50.0)
    assert ok and lifecycle.change("configure"), policy.output()[-3000:]
    assert lifecycle.state() == "inactive" and len(worker_children(policy.process.pid)) == 1

    # The node's own parameters: policy_factory is read-only, ranges are enforced, and nothing but the
    # live ones changes while configured.
    ok, reason = lifecycle.set("policy_factory", "os:system")
    assert not ok and "read-only" in reason
    ok, reason = lifecycle.set("inference_threads", 0)
    assert not ok
    ok, reason = lifecycle.set("model_path", "/elsewhere")
    assert not ok and "cannot change while configured" in reason
    assert lifecycle.change("cleanup")
    ok, reason = lifecycle.set("policy_factory", "test_sine")
    assert not ok and "read-only" in reason
    assert policy.stop() == 0


@pytest.mark.slow
def test_an_unregistered_policy_is_refused(ros_context, start_node, tmp_path: Path) -> None:
    policy = start_policy(start_node, tmp_path, "/unregistered", "-p", "policy_factory:=os:system")
    node, executor = probe(ros_context, "unregistered_probe")
    lifecycle = LifecycleClient(node, executor, "/unregistered/policy_node")
    assert lifecycle.change("configure") is False
    assert "'os:system' is not registered in the 'internvla_ros.policies' entry-point group" in policy.output()
    assert not worker_children(policy.process.pid)
    assert policy.stop() == 0


@pytest.mark.slow
def test_get_state_and_status_answer_and_a_second_transition_is_refused_while_a_slow_model_loads(
        ros_context, start_node, tmp_path: Path) -> None:
    ns = "/slow"
    policy = start_policy(start_node, tmp_path, ns, "-p", "policy_factory:=test_sine_slow_start")
    node, executor = probe(ros_context, "slow_probe")
    lifecycle = LifecycleClient(node, executor, f"{ns}/policy_node")
    statuses: list[PolicyStatus] = []
    node.create_subscription(PolicyStatus, f"{ns}/policy_node/status", statuses.append, 50)
    assert lifecycle.state() == "unconfigured"

    configuring = lifecycle.change_async("configure")
    answers: list[tuple[float, str]] = []
    refused = None
    while not configuring.done():
        started = time.monotonic()
        label = lifecycle.state(timeout_s=GET_STATE_DEADLINE_S * 5)
        answers.append((time.monotonic() - started, label))
        if label == "configuring" and refused is None:
            refused = lifecycle.change("activate", timeout_s=5.0)
        spin_until(executor, configuring.done, 0.3)
    assert configuring.result().success, policy.output()[-3000:]
    assert refused is False and "change_state 'activate' refused: the node is configuring" in policy.output()
    loading = [elapsed for elapsed, label in answers if label == "configuring"]
    assert len(loading) >= SLOW_START_S / 2, answers  # asked every ~0.3 s during a SLOW_START_S load
    assert max(elapsed for elapsed, _ in answers) < GET_STATE_DEADLINE_S, answers
    progress = [s.last_error for s in statuses if "loading the model" in s.last_error]
    assert progress and progress[-1].startswith("configuring: loading the model"), [s.last_error for s in statuses]
    assert lifecycle.state() == "inactive"
    assert lifecycle.change("activate") and policy.process.poll() is None
    assert policy.stop() == 0


@pytest.mark.slow
def test_qos_overrides_from_a_parameter_file_take_effect(ros_context, start_node, tmp_path: Path) -> None:
    """qos_overrides.<topic>.<kind>.<policy>, the standard ROS 2 way, and not taken for robot config."""
    ns = "/qos"
    params = tmp_path / "qos.yaml"
    params.write_text(yaml.safe_dump({"/**": {"ros__parameters": {"qos_overrides": {
        f"{ns}/joint_states": {"subscription": {"reliability": "reliable"}},
        f"{ns}/left_arm_controller/joint_trajectory": {"publisher": {"depth": 42}}}}}}))
    policy = start_policy(start_node, tmp_path, ns, "--params-file", str(params))
    node, executor = probe(ros_context, "qos_probe")
    lifecycle = LifecycleClient(node, executor, f"{ns}/policy_node")
    assert lifecycle.change("configure"), policy.output()[-3000:]  # not refused as unknown robot config

    def endpoint(infos: list) -> object:
        return next(info.qos_profile for info in infos if info.node_name == "policy_node")

    joint_states = endpoint(node.get_subscriptions_info_by_topic(f"{ns}/joint_states"))
    assert joint_states.reliability == ReliabilityPolicy.RELIABLE  # sensor-data QoS is best effort otherwise
    camera = endpoint(node.get_subscriptions_info_by_topic(f"{ns}/cameras/head/image_raw"))
    assert camera.reliability == ReliabilityPolicy.BEST_EFFORT
    assert policy.stop() == 0


@pytest.mark.slow
def test_node_parameters_carry_descriptors(ros_context, start_node, tmp_path: Path) -> None:
    from rcl_interfaces.srv import DescribeParameters

    policy = start_policy(start_node, tmp_path, "/described")
    node, executor = probe(ros_context, "describe_probe")
    lifecycle = LifecycleClient(node, executor, "/described/policy_node")
    client = node.create_client(DescribeParameters, "/described/policy_node/describe_parameters")
    names = ["policy_factory", "inference_threads", "startup_timeout_s", "model_path"]
    described = {d.name: d for d in lifecycle.call(client, DescribeParameters.Request(names=names)).descriptors}
    assert described["policy_factory"].read_only and "entry-point group" in described["policy_factory"].description
    threads = described["inference_threads"].integer_range[0]
    assert (threads.from_value, threads.to_value) == (1, 256)
    assert described["startup_timeout_s"].floating_point_range[0].from_value == 1.0
    assert not described["model_path"].read_only and described["model_path"].description
    assert policy.stop() == 0


def test_entities_destroyed_by_a_transition_never_end_the_spin_loop(ros_context) -> None:
    """A cleanup destroys subscriptions (and their QoS event handlers) and services on the transition thread
    while the executor thread builds wait sets over them, with messages arriving all the time: rclpy raised
    InvalidHandle out of spin_once, which ended the node's loop (get_state then went unanswered)."""
    node = rclpy.create_node("churned", context=ros_context)
    sender = rclpy.create_node("churn_sender", context=ros_context)
    publishers = [sender.create_publisher(String, f"churn_{i}", qos_profile_sensor_data) for i in range(4)]
    executor = TransitionExecutor(context=ros_context)
    executor.add_node(node)
    stop = threading.Event()
    cycles = [0]

    def publish() -> None:
        while not stop.is_set():
            for publisher in publishers:
                publisher.publish(String(data="frame"))
            time.sleep(0.001)

    def churn() -> None:  # what on_cleanup and on_configure do, again and again
        while not stop.is_set():
            subscriptions = [node.create_subscription(String, f"churn_{i}", lambda _: None, qos_profile_sensor_data)
                             for i in range(4)]
            services = [node.create_service(Trigger, f"churn_{cycles[0]}_{i}", lambda _, r: r) for i in range(2)]
            time.sleep(0.005)
            for subscription in subscriptions:
                node.destroy_subscription(subscription)
            for service in services:
                node.destroy_service(service)
            cycles[0] += 1

    threads = [threading.Thread(target=publish, daemon=True), threading.Thread(target=churn, daemon=True)]
    for thread in threads:
        thread.start()
    spins = 0
    try:
        deadline = time.monotonic() + CHURN_S
        while time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.05)  # raised InvalidHandle before the fix
            spins += 1
    finally:
        stop.set()
        for thread in threads:
            thread.join(5.0)
        executor.shutdown()
    assert cycles[0] > 20 and spins > 100, (cycles[0], spins)
