"""expert_node: the sorting task's scripted expert (or the random baseline) driving the cell's controllers.

It commands the robot through the same topics a policy does: `<arm>/joint_trajectory` (one stamped
rest-to-rest trajectory per move) and `<controller>/commands` for the gripper and the belt every
control period, limited like the policy node's forward streams (sim/episode.py CommandStreamer). The
expert plans from the sim's ground truth on `task/state` (sim/expert.py); `mode:=random` ignores it.

    ros2 run internvla_ros expert_node --ros-args -p config:=config/conveyor_sorting.yaml [-p mode:=random]

Parameters: `config` (the robot file, with a `/**/sim_robot: task:` section), `mode` (`expert` or
`random`), `seed` (the random baseline's). `~/pause` (std_srvs/Trigger) silences it at once, so that another
node may command the cell (ros/cell_homing.py brings it home between episodes); `~/resume` starts a fresh
agent from the measured joints.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from rclpy.node import Node
from sensor_msgs.msg import JointState
from std_msgs.msg import Float64MultiArray, String
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from internvla_ros.learning.expert_loop import Agent, CommandStreamer
from internvla_ros.ros.conversions import ns_to_duration, ns_to_time
from internvla_ros.ros.node_main import spin_node
from internvla_ros.runtime.config import DEFAULT_NODE_NAME, NS_PER_S, RuntimeConfig
from internvla_ros.runtime.errors import RuntimeConfigError
from internvla_ros.sim.expert import RandomAgent, SortingExpert
from internvla_ros.sim.task import task_config_from_yaml
from internvla_ros.sim.trajectory import Trajectory

MODES = ("expert", "random")
COMMAND_QOS_DEPTH = 100  # as deep as the policy node's forward streams
AGENT_SEED_STRIDE = 7919


class ExpertNode(Node):
    def __init__(self) -> None:
        super().__init__("expert_node")
        config_path = str(self.declare_parameter("config", "").value)
        config_node = str(self.declare_parameter("config_node_name", DEFAULT_NODE_NAME).value)
        mode = str(self.declare_parameter("mode", "expert").value)
        seed = int(self.declare_parameter("seed", 0).value)
        perturb_px = float(self.declare_parameter("perturb_px", 0.0).value)
        stop_belt = bool(self.declare_parameter("stop_belt", False).value)
        aim = str(self.declare_parameter("aim", "lane").value)
        if not config_path:
            raise RuntimeConfigError("parameter 'config' is required: the robot YAML with a task section, "
                                     "e.g. -p config:=config/conveyor_sorting.yaml")
        if mode not in MODES:
            raise RuntimeConfigError(f"mode:={mode} is not one of {', '.join(MODES)}")
        self.config = RuntimeConfig.from_yaml(config_path, node_name=config_node)
        task = task_config_from_yaml(config_path)
        if task is None:
            raise RuntimeConfigError(f"{config_path} has no task section (/**/sim_robot: ros__parameters: task:)")

        def make_agent(episode: int) -> Agent:
            agent_seed = seed + AGENT_SEED_STRIDE * episode  # a new draw of perturbations per resume
            return (SortingExpert(self.config, task, perturb_px, agent_seed, stop_belt, aim) if mode == "expert"
                    else RandomAgent(self.config, agent_seed))

        self._make_agent = make_agent
        self._resumes = 0
        self.agent = make_agent(0)
        self.streamer = CommandStreamer(self.config)
        self.paused = False
        self._snapshot: dict[str, Any] | None = None
        self._positions: np.ndarray | None = None
        self._index = {name: i for i, name in enumerate(self.config.joint_names)}
        self._trajectory_pub = self.create_publisher(JointTrajectory, f"{self.streamer.arm.name}/joint_trajectory", 10)
        self._forward_pubs = {c.name: self.create_publisher(Float64MultiArray, f"{c.name}/commands", COMMAND_QOS_DEPTH)
                              for c in self.streamer.forward}
        self.create_subscription(JointState, "joint_states", self._on_joint_state, 10)
        self.create_subscription(String, "task/state", self._on_state, 10)
        self.create_timer(1.0 / self.config.rates.control_rate_hz, self._on_tick)
        self.create_service(Trigger, "~/pause", self._on_pause)
        self.create_service(Trigger, "~/resume", self._on_resume)
        self.get_logger().info(f"expert_node ready: mode {mode}, control at {self.config.rates.control_rate_hz} Hz"
                               + (f", approaches perturbed by up to {perturb_px} px" if perturb_px else "")
                               + (", the belt stopped for each grasp" if stop_belt else "")
                               + (f", parcels met on the aim '{aim}'" if aim != "lane" else ""))

    def _on_joint_state(self, msg: JointState) -> None:
        positions = np.zeros(len(self._index))
        seen = 0
        for name, value in zip(msg.name, msg.position, strict=False):
            if name in self._index:
                positions[self._index[name]] = value
                seen += 1
        if seen == len(self._index):
            self._positions = positions

    def _on_state(self, msg: String) -> None:
        self._snapshot = json.loads(msg.data)

    def _on_pause(self, _: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        self.paused = True
        response.success, response.message = True, "paused: nothing is sent until ~/resume"
        return response

    def _on_resume(self, _: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        """A fresh agent and streamer: the cell may have been moved while paused, so the old plan is void."""
        if self.paused:
            self._resumes += 1
            self.agent, self.streamer = self._make_agent(self._resumes), CommandStreamer(self.config)
            self.paused = False
        response.success, response.message = True, "running"
        return response

    def _on_tick(self) -> None:
        if self._positions is None or self.paused:
            return
        now_ns = self.get_clock().now().nanoseconds
        command = self.agent.act(now_ns / NS_PER_S, self._snapshot, self._positions)
        trajectory, forward = self.streamer.tick(now_ns, command, self._positions)
        if trajectory is not None:
            self._trajectory_pub.publish(move_msg(trajectory))
        for name, values in forward.items():
            self._forward_pubs[name].publish(Float64MultiArray(data=values.tolist()))



def move_msg(trajectory: Trajectory) -> JointTrajectory:
    """An arm move (sim.trajectory.Trajectory) as the message its controller takes."""
    msg = JointTrajectory(joint_names=list(trajectory.joint_names))
    msg.header.stamp = ns_to_time(trajectory.stamp_ns)
    msg.points = [JointTrajectoryPoint(positions=p.positions.tolist(), velocities=p.velocities.tolist(),
                                       time_from_start=ns_to_duration(p.time_from_start_ns))
                  for p in trajectory.points]
    return msg


def main(args: list[str] | None = None) -> int:
    return spin_node(ExpertNode, args)


if __name__ == "__main__":
    raise SystemExit(main())
