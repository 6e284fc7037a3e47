"""policy_node under bad inputs and faults, over the real middleware.

The test process plays the robot (joint_states and three cameras) so it can break each input on
purpose; the node runs in its own process with an analytic policy in the real inference worker. For
every fault: a clear log line and status, a safe hold, no crash, and recovery once the input is
healthy again.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import rclpy
from rcl_interfaces.msg import SetParametersResult
from rcl_interfaces.srv import SetParameters
from rclpy.executors import SingleThreadedExecutor
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Float64MultiArray, String
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory

from internvla_ros.msg import PolicyStatus
from internvla_ros.runtime.config import RuntimeConfig

from .conftest import CONFIG_DIR, call_service, spin_until
from .fake_robot import FakeRobot
from .policies import write_unit_stats

NAMESPACE = "/faults"
CONFIG_FILE = CONFIG_DIR / "dual_arm.yaml"
STARTUP_TIMEOUT_S = 60.0
FAULT_TIMEOUT_S = 4.0
# The head camera is remapped, as the launch files' head_camera:= argument does.
HEAD_REMAP = "/external/head_camera"


def bad_size(msg: Image) -> Image:
    msg.height = msg.height * 2  # claims twice the rows its data holds
    return msg


def unknown_encoding(msg: Image) -> Image:
    msg.encoding = "yuv422"
    return msg


def zero_size(msg: Image) -> Image:
    msg.height, msg.width, msg.step, msg.data = 0, 0, 0, b""
    return msg


def mismatched_step(msg: Image) -> Image:
    msg.step = msg.step + 7
    return msg


def nan_position(msg: JointState) -> JointState:
    msg.position = [float("nan"), *msg.position[1:]]
    return msg


def missing_joint(msg: JointState) -> JointState:
    msg.name, msg.position = msg.name[1:], msg.position[1:]
    return msg


def duplicated_name(msg: JointState) -> JointState:
    msg.name = [msg.name[0], *msg.name[:-1]]
    return msg


def extra_joint(msg: JointState) -> JointState:
    msg.name, msg.position = [*msg.name, "head_pan"], [*msg.position, 0.1]
    return msg


class OutOfOrder:
    """Every other message carries a stamp 0.5 s in the past."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, msg: JointState) -> JointState:
        self.count += 1
        if self.count % 2:
            stamp = msg.header.stamp
            msg.header.stamp.sec = stamp.sec - 1 if stamp.nanosec < 500_000_000 else stamp.sec
            msg.header.stamp.nanosec = (stamp.nanosec + 500_000_000) % 1_000_000_000
        return msg


@pytest.mark.slow
def test_faults_hold_safely_and_recover(ros_context, start_node, tmp_path: Path) -> None:
    config = RuntimeConfig.from_yaml(CONFIG_FILE)
    model = write_unit_stats(tmp_path / "model", config.robot_type, config.dim)
    policy = start_node("internvla_ros.ros.policy_node", "--params-file", str(CONFIG_FILE),
                        "-p", f"model_path:={model}", "-p", "policy_factory:=test_sine",
                        "-p", "autostart:=true", "-p", "safety.dry_run:=false", "-p", "instruction:=wave",
                        "-p", "status_rate_hz:=10.0", "-r", f"__ns:={NAMESPACE}",
                        "-r", f"cameras/head/image_raw:={HEAD_REMAP}")
    node = rclpy.create_node("fault_robot", context=ros_context)
    executor = SingleThreadedExecutor(context=ros_context)
    executor.add_node(node)
    robot = FakeRobot(node, config, NAMESPACE, {"head": HEAD_REMAP})
    statuses: list[PolicyStatus] = []
    gripper: list[Float64MultiArray] = []
    node.create_subscription(PolicyStatus, f"{NAMESPACE}/policy_node/status", statuses.append, 50)
    node.create_subscription(Float64MultiArray, f"{NAMESPACE}/left_gripper_controller/commands", gripper.append, 200)
    instruction = node.create_publisher(String, f"{NAMESPACE}/instruction", QoSProfile(
        depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL))

    def alive() -> bool:
        return policy.process.poll() is None

    def wait_state(state: int, reason: str = "", timeout_s: float = FAULT_TIMEOUT_S) -> PolicyStatus:
        """The first status in ``state`` whose last_error names ``reason`` (on a loaded machine another input
        may go stale for a moment first)."""
        statuses.clear()

        def reached(status: PolicyStatus) -> bool:
            return status.state == state and reason in status.last_error

        ok = spin_until(executor, lambda: not alive() or any(reached(s) for s in statuses), timeout_s)
        assert alive(), policy.output()[-3000:]
        assert ok, f"state {state} ({reason}) not reached; last: {statuses[-1] if statuses else None}\n" \
                   f"{policy.output()[-2000:]}"
        return next(s for s in statuses if reached(s))

    def running() -> PolicyStatus:
        return wait_state(PolicyStatus.STATE_RUNNING)

    assert spin_until(executor, lambda: any(s.state == PolicyStatus.STATE_RUNNING for s in statuses) or not alive(),
                      STARTUP_TIMEOUT_S), policy.output()[-3000:]

    # Controllers nobody subscribes to are named in the status (only one gripper has a listener here).
    status = running()
    assert "no subscriber on" in status.last_error and "right_arm_controller/joint_trajectory" in status.last_error
    for controller in config.controllers:  # now every controller is "there"
        kind = (JointTrajectory, "joint_trajectory") if controller.type == "joint_trajectory" else (
            Float64MultiArray, "commands")
        node.create_subscription(kind[0], f"{NAMESPACE}/{controller.name}/{kind[1]}", lambda msg: None, 10)
    assert spin_until(executor, lambda: bool(statuses) and "no subscriber" not in statuses[-1].last_error, 5.0)

    # Each broken camera stream: rejected with the reason, the camera goes stale -> hold, then recovery.
    for fault, log_text in ((bad_size, "data holds"), (unknown_encoding, "unsupported encoding 'yuv422'"),
                            (zero_size, "empty image"), (mismatched_step, "does not match width")):
        invalid_before = running().invalid_inputs
        robot.image_fault["left_wrist"] = fault
        held = wait_state(PolicyStatus.STATE_HOLDING, "left_wrist")
        assert held.invalid_inputs > invalid_before
        assert log_text in policy.output(), log_text
        gripper.clear()
        spin_until(executor, lambda: len(gripper) >= 10, 2.0)
        assert len({tuple(m.data) for m in gripper}) == 1, "the hold must keep the gripper command constant"
        robot.image_fault.clear()

    # A camera that stops publishing, and silent joint_states: stale -> hold -> recovery.
    running()
    robot.image_fault["head"] = lambda msg: None
    wait_state(PolicyStatus.STATE_HOLDING, "camera:head")
    robot.image_fault.clear()
    running()
    robot.joint_fault = lambda msg: None
    stale_before = statuses[-1].stale_inputs if statuses else 0
    held = wait_state(PolicyStatus.STATE_HOLDING, "joint_state")
    assert held.stale_inputs > stale_before
    robot.joint_fault = None

    # Bad joint_states are refused (and the state goes stale); a superset of joints is fine.
    for fault in (nan_position, missing_joint, duplicated_name):
        running()
        robot.joint_fault = fault
        held = wait_state(PolicyStatus.STATE_HOLDING)
        assert held.invalid_inputs > 0
        robot.joint_fault = None
    assert "joint_states ignored" in policy.output()
    for fault in (extra_joint, OutOfOrder()):
        running()
        robot.joint_fault = fault
        spin_until(executor, lambda: False, 1.0)
        assert statuses[-1].state == PolicyStatus.STATE_RUNNING, (fault, statuses[-1])
        robot.joint_fault = None

    # Instructions: empty is ignored, too long fails inference (hold), NaN from the model is refused.
    chunks_before = running().chunks_computed
    instruction.publish(String(data="   "))
    spin_until(executor, lambda: "empty instruction ignored" in policy.output(), FAULT_TIMEOUT_S)
    assert running().instruction == "wave"
    instruction.publish(String(data="wave " * 200))
    spin_until(executor, lambda: "inference failed" in policy.output(), FAULT_TIMEOUT_S)
    assert "more than tokenizer_max_length=48; shorten the instruction" in policy.output()
    stuck = statuses[-1].chunks_computed
    spin_until(executor, lambda: False, 1.0)
    assert statuses[-1].chunks_computed == stuck, "no chunk may be executed for an unusable instruction"
    instruction.publish(String(data="nan please"))
    spin_until(executor, lambda: "non_finite" in policy.output() or "non-finite" in policy.output(), FAULT_TIMEOUT_S)
    stuck = statuses[-1].chunks_computed
    spin_until(executor, lambda: False, 1.0)
    assert statuses[-1].chunks_computed == stuck, "a NaN chunk must never be executed"
    instruction.publish(String(data="wave again"))
    assert spin_until(executor, lambda: bool(statuses) and statuses[-1].chunks_computed > stuck + 2, FAULT_TIMEOUT_S)
    assert statuses[-1].chunks_computed > chunks_before

    # E-stop latches until reset; the services answer.
    client = node.create_client(Trigger, f"{NAMESPACE}/policy_node/estop")
    reset = node.create_client(Trigger, f"{NAMESPACE}/policy_node/reset")
    assert call_service(executor, client, Trigger.Request(), 10.0).success
    wait_state(PolicyStatus.STATE_ESTOPPED)
    spin_until(executor, lambda: False, 0.5)
    assert statuses[-1].state == PolicyStatus.STATE_ESTOPPED, "e-stop must latch"
    future = reset.call_async(Trigger.Request())
    spin_until(executor, future.done, 5.0)
    running()

    # Parameters: structural ones are refused while configured, with the reason; live ones apply.
    set_parameters = node.create_client(SetParameters, f"{NAMESPACE}/policy_node/set_parameters")
    assert set_parameters.wait_for_service(timeout_sec=5.0)

    def set_parameter(name: str, value: Parameter) -> SetParametersResult:
        request = SetParameters.Request(parameters=[Parameter(name, value=value).to_parameter_msg()])
        return call_service(executor, set_parameters, request, 10.0).results[0]

    refused = set_parameter("rates.control_rate_hz", 500.0)
    assert not refused.successful and "cannot change while configured" in refused.reason
    assert set_parameter("instruction", "wave twice").successful
    assert spin_until(executor, lambda: bool(statuses) and statuses[-1].instruction == "wave twice", 5.0)
    assert alive()
    assert policy.stop() == 0
