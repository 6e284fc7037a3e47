"""sim_robot as its own process over the real middleware: joint states, cameras, controller semantics."""

from __future__ import annotations

import numpy as np
import rclpy
from builtin_interfaces.msg import Duration
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import Image, JointState
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from .conftest import CONFIG_DIR, spin_until

NAMESPACE = "/cell"
LEFT_ARM = [f"left_joint{i}" for i in range(1, 8)]
STARTUP_TIMEOUT_S = 20.0


def trajectory(positions: list[float], seconds: float, end_velocity: float = 0.0) -> JointTrajectory:
    msg = JointTrajectory()
    msg.joint_names = LEFT_ARM
    msg.points = [JointTrajectoryPoint(positions=positions, velocities=[end_velocity] * len(positions),
                                       time_from_start=Duration(sec=int(seconds), nanosec=int(seconds % 1 * 1e9)))]
    return msg


def test_sim_robot_follows_trajectories_and_refuses_what_the_controller_refuses(ros_context, start_node) -> None:
    sim = start_node("internvla_ros.ros.sim_robot", "-p", f"config:={CONFIG_DIR / 'dual_arm.yaml'}",
                     "-r", f"__ns:={NAMESPACE}")
    node = rclpy.create_node("sim_probe", context=ros_context)
    executor = SingleThreadedExecutor(context=ros_context)
    executor.add_node(node)
    states: list[JointState] = []
    images: list[Image] = []
    node.create_subscription(JointState, f"{NAMESPACE}/joint_states", states.append, 10)
    node.create_subscription(Image, f"{NAMESPACE}/cameras/left_wrist/image_raw", images.append,
                             qos_profile_sensor_data)
    command = node.create_publisher(JointTrajectory, f"{NAMESPACE}/left_arm_controller/joint_trajectory", 10)

    assert spin_until(executor, lambda: len(states) > 10 and images, STARTUP_TIMEOUT_S), sim.output()
    assert images[-1].encoding == "rgb8" and (images[-1].height, images[-1].width) == (240, 320)
    index = [list(states[-1].name).index(j) for j in LEFT_ARM]
    start = np.array(states[-1].position)[index]

    # Rejected: the last point moves (Jazzy's allow_nonzero_velocity_at_trajectory_end is false).
    assert spin_until(executor, lambda: command.get_subscription_count() > 0, STARTUP_TIMEOUT_S)
    command.publish(trajectory((start + 0.3).tolist(), 0.5, end_velocity=0.2))
    spin_until(executor, lambda: "non-zero velocity" in sim.output(), 5.0)
    assert "left_arm_controller: trajectory rejected: the last point has a non-zero velocity" in sim.output()
    np.testing.assert_allclose(np.array(states[-1].position)[index], start, atol=1e-6)

    # Accepted: the arm gets there, and joint_states flow at >= 100 Hz meanwhile.
    target = start + 0.3
    command.publish(trajectory(target.tolist(), 0.5))
    count_before, t0 = len(states), node.get_clock().now().nanoseconds
    reached = spin_until(executor, lambda: np.allclose(np.array(states[-1].position)[index], target, atol=1e-3), 5.0)
    assert reached, sim.output()
    elapsed_s = (node.get_clock().now().nanoseconds - t0) * 1e-9
    assert (len(states) - count_before) / elapsed_s >= 100.0
    assert sim.stop() == 0
