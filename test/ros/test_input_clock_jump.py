"""A joint state the policy node received just before ROS time jumped back must not reach the runtime after the
jump handler has moved it to the new time line (it would be stamped far in the new line's future, and every
fresh joint state after it refused as out of order until the new time line passed it).

The node runs in this process on the real middleware with the analytic sine policy and sim time set by the
test; the runtime's hand-over of that joint state is slowed down so that the jump falls inside it.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from builtin_interfaces.msg import Time as TimeMsg
from rclpy.clock import ClockType
from rclpy.time import Time
from sensor_msgs.msg import JointState
from std_msgs.msg import Header

from internvla_ros.ros.conversions import ns_to_time
from internvla_ros.ros.policy_node import PolicyNode
from internvla_ros.runtime.config import RuntimeConfig

from .conftest import CONFIG_DIR
from .policies import write_unit_stats

CONFIG_FILE = CONFIG_DIR / "dual_arm.yaml"
SIM_START_NS = 1_000 * 1_000_000_000
JUMP_NS = 60 * 1_000_000_000
HAND_OVER_S = 0.5  # how long the slowed hand-over takes; the jump starts inside it


def joint_state(config: RuntimeConfig, stamp: TimeMsg) -> JointState:
    names = list(config.joint_names)
    return JointState(header=Header(stamp=stamp), name=names, position=[0.0] * len(names))


@pytest.mark.slow
def test_a_joint_state_read_before_a_clock_jump_does_not_outlive_it(ros_context, tmp_path: Path) -> None:
    config = RuntimeConfig.from_yaml(CONFIG_FILE)
    model = write_unit_stats(tmp_path / "model", config.robot_type, config.dim)
    node = PolicyNode(context=ros_context, cli_args=[
        "--ros-args", "--params-file", str(CONFIG_FILE), "-p", f"model_path:={model}",
        "-p", "policy_factory:=test_sine", "-p", "use_sim_time:=true", "-r", "__ns:=/input_jump"])
    clock = node.get_clock()
    now_ns = [SIM_START_NS]

    def set_time(ns: int) -> None:
        clock.set_ros_time_override(Time(nanoseconds=ns, clock_type=ClockType.ROS_TIME))

    set_time(now_ns[0])
    try:
        assert node.run_transitions(node.trigger_configure, node.trigger_activate), node._failure
        runtime = node._runtime
        assert runtime is not None
        accepted: list[bool] = []
        handing_over = threading.Event()
        real_update = runtime.update_joint_state

        def slow_update(*args, **kwargs) -> bool:
            if not accepted:
                handing_over.set()
                time.sleep(HAND_OVER_S)  # the clock jump comes here, unless the hand-over holds it off
            accepted.append(real_update(*args, **kwargs))
            return accepted[-1]

        runtime.update_joint_state = slow_update  # type: ignore[method-assign]
        before_jump = threading.Thread(target=node._on_joint_state,
                                       args=(joint_state(config, ns_to_time(now_ns[0])),))
        before_jump.start()
        assert handing_over.wait(10.0)
        now_ns[0] -= JUMP_NS
        set_time(now_ns[0])  # rclpy calls the node's jump handler from here
        before_jump.join(10.0)

        now_ns[0] += 10_000_000
        set_time(now_ns[0])
        node._on_joint_state(joint_state(config, ns_to_time(now_ns[0])))
        assert accepted == [True, True], runtime.status(now_ns[0]).last_error
    finally:
        node.trigger_deactivate()
        node.trigger_shutdown()
        node.destroy_node()
