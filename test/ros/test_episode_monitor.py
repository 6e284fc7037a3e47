"""The episode runner's monitor judges the policy node's published chunks over the real middleware."""

from __future__ import annotations

import numpy as np
import rclpy
from rclpy.executors import SingleThreadedExecutor

from internvla_ros.msg import ActionChunk
from internvla_ros.ros.episodes import NAMESPACE, Monitor, switch_judge
from internvla_ros.ros.messages import action_chunk_msg
from internvla_ros.runtime.config import RuntimeConfig
from test.ros.conftest import CONFIG_DIR, spin_until

STEP_NS = 100_000_000


def test_the_judge_takes_the_arm_joints_and_the_mode_the_node_is_told_to_run() -> None:
    config = RuntimeConfig.from_yaml(CONFIG_DIR / "conveyor_sorting.yaml")
    assert config.execution.mode == "delay_compensated"
    chunk = np.zeros((3, len(config.joint_names)))
    chunk[:, 0] = [0.0, 0.1, 0.2]  # fr3_joint1 at 1 rad/s from row 0
    chunk[:, -2:] = [[1.0, 0.2], [0.0, 0.4], [1.0, 0.0]]  # gripper and conveyor columns: not judged
    # Arriving 50 ms after its observation: placed at the observation (the config's mode, rtc) the joint is
    # at 0.05 rad there; placed at the arrival (uncompensated) at 0.
    for parameters, gap in (((), 0.05), (("execution.mode:=rtc",), 0.05), (("execution.mode:=uncompensated",), 0.0)):
        judge = switch_judge(config, parameters)
        judge.add(1, 250_000_000, 0, STEP_NS, np.zeros_like(chunk).ravel())
        switch = judge.add(2, 350_000_000, 300_000_000, STEP_NS, chunk.ravel())
        assert switch is not None and abs(switch.position_gap - gap) < 1e-9, parameters
        assert abs(switch.velocity_jump - 1.0) < 1e-9


def test_published_chunks_reach_the_monitors_judge(ros_context: rclpy.context.Context) -> None:
    config = RuntimeConfig.from_yaml(CONFIG_DIR / "conveyor_sorting.yaml")
    runner = rclpy.create_node("episode_runner", namespace=NAMESPACE, context=ros_context)
    policy = rclpy.create_node("policy_node", namespace=NAMESPACE, context=ros_context)
    monitor = Monitor(runner, switch_judge=switch_judge(config, ()))
    publisher = policy.create_publisher(ActionChunk, "~/action_chunk", 10)
    executor = SingleThreadedExecutor(context=ros_context)
    executor.add_node(runner)
    executor.add_node(policy)
    assert spin_until(executor, lambda: publisher.get_subscription_count() > 0, 10.0)
    chunk = np.zeros((50, len(config.joint_names)))
    chunk[:, 1] = np.arange(50) * 0.2 * 0.1  # fr3_joint2 at 0.2 rad/s: the next chunk asks for -0.2 rad/s
    for chunk_id, sign in ((1, 1.0), (2, -1.0), (3, 1.0)):
        stamp = chunk_id * 300_000_000
        publisher.publish(action_chunk_msg(chunk_id, stamp + 250_000_000, stamp, STEP_NS, 2, config.joint_names,
                                           chunk * sign))
    judge = monitor.switch_judge
    assert judge is not None
    assert spin_until(executor, lambda: len(judge.switches) == 2, 10.0)
    assert [round(s.velocity_jump, 6) for s in judge.switches] == [0.4, 0.4]
    executor.shutdown()
