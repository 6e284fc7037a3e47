"""The launch files' plans started as processes, with launch_ros' command lines, over the real middleware.

Each test adds a parameter file (params_file:=) that selects the analytic sine policy, and a model
directory with unit statistics (model:=), so that the nodes are up within seconds.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from lifecycle_msgs.srv import GetState
from rcl_interfaces.srv import GetParameters
from rclpy.executors import SingleThreadedExecutor
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import JointState

from internvla_ros.launch_plan import LAUNCH_FILES, camera_argument, plan_nodes
from internvla_ros.msg import PolicyStatus
from internvla_ros.runtime.config import RuntimeConfig
from test.launch.launcher import LaunchedNode, launch
from test.ros.conftest import spin_until
from test.ros.policies import write_unit_stats

ROOT = Path(__file__).resolve().parents[2]
ANALYTIC_POLICY = "test_sine"
STARTUP_TIMEOUT_S = 90.0  # generous for a loaded CI machine; every wait ends as soon as its condition holds
CLOCK_START_S = 1000


@pytest.fixture
def analytic(tmp_path: Path) -> dict[str, dict[str, str]]:
    """Per cell: model:= and params_file:= arguments that run the sine policy."""
    params = tmp_path / "analytic.yaml"
    params.write_text(f"/**/policy_node:\n  ros__parameters:\n    policy_factory: {ANALYTIC_POLICY}\n")
    arguments = {}
    for cell in ("dual_arm", "conveyor_sorting"):
        config = RuntimeConfig.from_yaml(ROOT / "config" / f"{cell}.yaml")
        model = write_unit_stats(tmp_path / f"model_{cell}", config.robot_type, config.dim)
        arguments[cell] = {"model": str(model), "params_file": str(params)}
    return arguments


@pytest.fixture
def started(tmp_path: Path):
    nodes: list[LaunchedNode] = []

    def start(launch_name: str, arguments: dict[str, str]) -> list[LaunchedNode]:
        nodes.extend(launch(plan_nodes(LAUNCH_FILES[launch_name], arguments), tmp_path / "launch"))
        return nodes

    yield start
    for node in nodes:
        node.stop()


def _probe(context: rclpy.context.Context, name: str) -> tuple[rclpy.node.Node, SingleThreadedExecutor]:
    node = rclpy.create_node(name, context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    return node, executor


def _lifecycle_state(probe: rclpy.node.Node, executor: SingleThreadedExecutor, node: str) -> str:
    """'active' once the node gets there (configuring loads the policy), else the last state seen."""
    client = probe.create_client(GetState, f"{node}/get_state")
    label = ""
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline and label != "active":
        if client.wait_for_service(timeout_sec=1.0):
            future = client.call_async(GetState.Request())
            if spin_until(executor, future.done, 5.0):
                label = future.result().current_state.label
        spin_until(executor, lambda: False, 0.2)
    return label


def _logs(nodes: list[LaunchedNode]) -> str:
    return "\n".join(f"--- {n.log_path.name}\n{n.output()[-2000:]}" for n in nodes)


@pytest.mark.slow
@pytest.mark.parametrize("cell", ["dual_arm", "conveyor_sorting"])
def test_sim_launch_closes_the_loop(cell: str, analytic, started, ros_context, tmp_path: Path) -> None:
    # The robot file from a directory whose name would have broken an evaluated launch expression.
    config_dir = tmp_path / "robot's \"cell\""
    config_dir.mkdir()
    config = Path(shutil.copy(ROOT / "config" / f"{cell}.yaml", config_dir / "robot.yaml"))
    nodes = started("sim.launch.py", {"cell": cell, "config": str(config), "instruction": "wave", **analytic[cell]})
    robot = RuntimeConfig.from_yaml(config)
    controllers = [c.name for c in robot.controllers]
    probe, executor = _probe(ros_context, f"sim_probe_{cell}")
    states: list[JointState] = []
    statuses: list[PolicyStatus] = []
    sim_reports: list[dict[str, str]] = []
    probe.create_subscription(JointState, "/joint_states", states.append, 10)
    probe.create_subscription(PolicyStatus, "/policy_node/status", statuses.append, 10)
    probe.create_subscription(DiagnosticArray, "/diagnostics", lambda m: sim_reports.extend(
        {kv.key: kv.value for kv in s.values} for s in m.status if s.hardware_id == "sim_robot"), 10)

    def loop_closed() -> bool:
        report = sim_reports[-1] if sim_reports else {}
        return all(int(report.get(f"{c}.accepted", 0)) >= 3 for c in controllers)

    # Running (seen in a status: they come at status_rate_hz, so a short run between holds can fall between
    # two) and commanding; a loaded machine may hold it for a moment on a late input, which is the safe answer.
    def running() -> bool:
        return any(s.state == PolicyStatus.STATE_RUNNING for s in statuses)

    closed = spin_until(executor, lambda: (loop_closed() and running()) or not all(n.running() for n in nodes),
                        STARTUP_TIMEOUT_S)
    assert closed and all(n.running() for n in nodes), (_logs(nodes), [s.state for s in statuses])
    assert states and set(robot.joint_names) <= set(states[-1].name)
    assert statuses[-1].state in (PolicyStatus.STATE_RUNNING, PolicyStatus.STATE_HOLDING), statuses[-1]
    assert not statuses[-1].dry_run
    assert statuses[-1].instruction == "wave"
    assert sim_reports[-1]["limit_violations"] == "0", _logs(nodes)
    assert [n.stop() for n in nodes] == [0, 0], _logs(nodes)


@pytest.mark.slow
@pytest.mark.parametrize("cell", ["dual_arm", "conveyor_sorting"])
def test_cell_launch_remaps_cameras_in_a_namespace(cell: str, analytic, started, ros_context) -> None:
    launch_name = f"{cell}.launch.py"
    cameras = [c.name for c in RuntimeConfig.from_yaml(ROOT / "config" / f"{cell}.yaml").cameras]
    remapped = {camera: f"/rig/{camera}/image" for camera in cameras}
    arguments = {"namespace": "robot_a", **analytic[cell]}
    arguments |= {camera_argument(camera): topic for camera, topic in remapped.items()}
    nodes = started(launch_name, arguments)
    probe, executor = _probe(ros_context, f"remap_probe_{cell}")
    statuses: list[PolicyStatus] = []
    probe.create_subscription(PolicyStatus, "/robot_a/policy_node/status", statuses.append, 10)

    def subscriptions() -> set[str]:
        try:
            return {name for name, _ in probe.get_subscriber_names_and_types_by_node("policy_node", "/robot_a")}
        except rclpy.node.NodeNameNonExistentError:
            return set()

    expected = {"/robot_a/joint_states", "/robot_a/instruction"}
    expected |= {topic for camera in cameras for topic in (remapped[camera], f"{remapped[camera]}/compressed")}
    ok = spin_until(executor, lambda: expected <= subscriptions() or not nodes[0].running(), STARTUP_TIMEOUT_S)
    assert ok and nodes[0].running(), _logs(nodes)
    assert not {t for t in subscriptions() if "/cameras/" in t}, "a camera topic was not remapped"
    assert spin_until(executor, lambda: bool(statuses), 10.0), "no status under the namespace"
    # dry_run:= not given: the config's safety.dry_run (true) holds.
    client = probe.create_client(GetParameters, "/robot_a/policy_node/get_parameters")
    assert client.wait_for_service(timeout_sec=10.0)
    future = client.call_async(GetParameters.Request(names=["safety.dry_run", "autostart"]))
    assert spin_until(executor, future.done, 10.0)
    assert [value.bool_value for value in future.result().values] == [True, True]
    assert _lifecycle_state(probe, executor, "/robot_a/policy_node") == "active", _logs(nodes)  # autostart
    assert nodes[0].stop() == 0, _logs(nodes)


@pytest.mark.slow
def test_replay_launch_runs_on_the_clock_topic(analytic, started, ros_context) -> None:
    nodes = started("replay.launch.py", {"cell": "conveyor_sorting", "instruction": "sort the parcels",
                                         **analytic["conveyor_sorting"]})
    probe, executor = _probe(ros_context, "clock_probe")
    clock = probe.create_publisher(Clock, "/clock", 10)
    statuses: list[PolicyStatus] = []
    probe.create_subscription(PolicyStatus, "/policy_node/status", statuses.append, 10)
    started_at = time.monotonic()

    def tick() -> None:  # bag time: CLOCK_START_S plus the seconds since the test started
        elapsed_ns = round((time.monotonic() - started_at) * 1e9)
        message = Clock()
        message.clock.sec, message.clock.nanosec = divmod(CLOCK_START_S * 1_000_000_000 + elapsed_ns, 1_000_000_000)
        clock.publish(message)

    probe.create_timer(0.01, tick)
    ok = spin_until(executor, lambda: len(statuses) >= 3 or not nodes[0].running(), STARTUP_TIMEOUT_S)
    assert ok and nodes[0].running(), _logs(nodes)
    horizon_s = CLOCK_START_S + time.monotonic() - started_at + 1.0
    for status in statuses:
        assert CLOCK_START_S <= status.header.stamp.sec <= horizon_s, "status not stamped in /clock time"
    assert statuses[-1].instruction == "sort the parcels"
    assert nodes[0].stop() == 0, _logs(nodes)
