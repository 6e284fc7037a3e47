"""Between episodes: the agent paused, the cell brought home through its controllers, the agent resumed.

Episodes of an evaluation are independent only if each starts from the same state. A policy that ends one
episode off its demonstrations' states (a missed grasp, the arm parked away from the belt) would otherwise
start the next one there. So before every episode the runner pauses the agent, waits until the arm has stood
still for longer than a move's lead, sends one rest-to-rest move home within the arm's limits on the arm
controller's topic (the one the agents use), ramps the gripper open and the belt to rest on their forward
controllers (continuing from the last commands they took, as a controller and the sim's judge see them),
waits until the measured joints are home and still, and resumes the agent once the episode has started.

The policy node is paused with `~/pause` and silenced with `safety.dry_run` (paused, it still holds its forward
commands); once home, dry run off makes it restart from the measured joints, and `~/resume` lets it run. The
expert node stops sending on `~/pause` and resumes with a fresh agent on `~/resume`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
from rcl_interfaces.srv import SetParameters
from rclpy.node import Node
from sensor_msgs.msg import JointState
from std_msgs.msg import Float64MultiArray
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory

from internvla_ros.learning.expert_loop import CommandStreamer
from internvla_ros.msg import PolicyStatus
from internvla_ros.ros.expert_node import COMMAND_QOS_DEPTH, move_msg
from internvla_ros.runtime.config import NS_PER_S, RuntimeConfig
from internvla_ros.runtime.safety import MotionState
from internvla_ros.sim.cell import home_positions
from internvla_ros.sim.expert import TRAJECTORY_LEAD_S, HomingAgent

SpinUntil = Callable[[Callable[[], bool], float, str], None]
STILL_VELOCITY = 1e-3  # rad/s (m/s): a measured joint slower than this stands still
HOME_TOLERANCE = 1e-3  # rad (m): a measured arm joint or gripper this close to home is there
COMMAND_SETTLED = 1e-9  # a forward command this close to its target, at this rate, has arrived (rounding)
STILL_FOR_S = 3 * TRAJECTORY_LEAD_S  # still for longer than a move's lead: no move is about to start
SERVICE_TIMEOUT_S = 10.0
STILL_TIMEOUT_S = 15.0  # an agent's last move, or the policy node's stop, ends well within this
HOMING_MARGIN_S = 10.0  # beyond the move's planned duration
LAST_COMMANDS_WAIT_S = 1.0  # for subscriptions to match and two commands to arrive (agents send every 10 ms)


@dataclass(frozen=True)
class HomingReport:
    """What one homing did, for the episode's summary."""

    from_distance: float  # largest arm or gripper distance from home before it (rad or m)
    start_error: float  # the same when the agent was let go
    start_pose: dict[str, float]  # the measured joints then (a belt: its speed)
    duration_s: float

    def as_dict(self) -> dict[str, Any]:
        return {"from_distance": round(self.from_distance, 5), "start_error": round(self.start_error, 6),
                "duration_s": round(self.duration_s, 3), "start_pose": self.start_pose}


class CellHoming:
    """The runner's side of homing: what it watches and sends, and what it asks of the agent's node."""

    def __init__(self, node: Node, config: RuntimeConfig, agent_node: str, policy_node: bool) -> None:
        self._node, self._config, self._policy_node = node, config, policy_node
        self.home = home_positions(config)
        arm = next(c for c in config.controllers if c.type == "joint_trajectory")
        self._arm_columns = np.array([config.joint_index[j] for j in arm.joints])
        self._checked = np.array([*self._arm_columns, *(config.joint_index[g.joint] for g in config.grippers)])
        self._speed = np.array([j.state_field == "velocity" for j in config.joints])
        self._forward = [c for c in config.controllers if c.type == "forward_command"]
        self._forward_columns = {c.name: np.array([config.joint_index[j] for j in c.joints]) for c in self._forward}
        self._index = config.joint_index
        self._positions: np.ndarray | None = None  # measured, config order (a belt: its speed)
        self._still_since_ns: int | None = None  # arm measured still since (node clock)
        self._home_since_ns: int | None = None  # measured home and still since
        self._sent: dict[str, list[np.ndarray]] = {c.name: [] for c in self._forward}  # the last two commands
        self._subscriptions: list[Any] = []  # joint states and forward commands, from the pause to the start
        self._trajectory_pub = node.create_publisher(JointTrajectory, f"{arm.name}/joint_trajectory", 10)
        self._forward_pubs = {c.name: node.create_publisher(Float64MultiArray, f"{c.name}/commands",
                                                            COMMAND_QOS_DEPTH) for c in self._forward}
        self._pause = node.create_client(Trigger, f"{agent_node}/pause")
        self._resume = node.create_client(Trigger, f"{agent_node}/resume")
        self._parameters = node.create_client(SetParameters, f"{agent_node}/set_parameters")
        self._statuses: list[PolicyStatus] = []
        if policy_node:
            node.create_subscription(PolicyStatus, f"{agent_node}/status", self._on_status, 10)

    # What the runner calls, in this order ---------------------------------------------------------

    def pause_agent(self, spin_until: SpinUntil) -> None:
        """The agent stops commanding the cell (the policy node after its controlled stop)."""
        self._watch(spin_until)
        self._call(self._pause, spin_until, "pausing the agent")
        if self._policy_node:
            seen = len(self._statuses)
            self._set_dry_run(True, spin_until)
            spin_until(lambda: any(s.dry_run and s.state == PolicyStatus.STATE_PAUSED for s in self._statuses[seen:]),
                       SERVICE_TIMEOUT_S + STILL_TIMEOUT_S, "waiting for the policy node to stop and fall silent")
            del self._statuses[:]

    def home_cell(self, spin_until: SpinUntil) -> HomingReport:
        """The arm moved home in one move, the gripper opened, the belt stopped; returns once all are there."""
        started = time.monotonic()
        spin_until(lambda: self._held_for(self._still_since_ns), STILL_TIMEOUT_S,
                   "waiting for the arm to stand still before homing")
        assert self._positions is not None
        from_distance = float(np.max(np.abs(self._positions - self.home)[self._checked]))
        agent, streamer = HomingAgent(self._config, self.home), CommandStreamer(self._config, self._last_sent())
        sent_until_ns = [0]

        def tick() -> None:
            assert self._positions is not None
            now_ns = self._now_ns()
            trajectory, forward = streamer.tick(now_ns, agent.act(now_ns / NS_PER_S, None, self._positions),
                                                self._positions)
            if trajectory is not None:
                self._trajectory_pub.publish(move_msg(trajectory))
                sent_until_ns[0] = trajectory.stamp_ns + trajectory.points[-1].time_from_start_ns
            for name, values in forward.items():
                self._forward_pubs[name].publish(Float64MultiArray(data=values.tolist()))

        def arrived() -> bool:
            state = streamer.state
            forward_done = state is not None and all(
                np.allclose(state.positions[c], self.home[c], rtol=0.0, atol=COMMAND_SETTLED)
                and np.allclose(state.velocities[c], 0.0, rtol=0.0, atol=COMMAND_SETTLED)
                for c in self._forward_columns.values())
            return (forward_done and 0 < sent_until_ns[0] <= self._now_ns()
                    and self._held_for(self._home_since_ns))

        self._home_since_ns = None
        timer = self._node.create_timer(self._config.rates.control_period_ns / NS_PER_S, tick)
        try:
            tick()
            assert agent.move is not None
            spin_until(arrived, agent.move.duration_s + HOMING_MARGIN_S, "bringing the cell home")
        finally:
            self._node.destroy_timer(timer)
        if self._policy_node:
            self._set_dry_run(False, spin_until)  # restarts from the measured joints, still paused
        assert self._positions is not None
        self._unwatch()
        return HomingReport(from_distance, float(np.max(np.abs(self._positions - self.home)[self._checked])),
                            {name: round(float(self._positions[i]), 5) for name, i in self._index.items()},
                            time.monotonic() - started)

    def resume_agent(self, spin_until: SpinUntil) -> None:
        self._call(self._resume, spin_until, "resuming the agent")

    # Internals ------------------------------------------------------------------------------------

    def _watch(self, spin_until: SpinUntil) -> None:
        """Subscribes to the joint states and the forward commands, and waits (briefly) for each forward
        controller's last two commands. Only between episodes: at 200 + 2 x 100 messages a second, these
        subscriptions would take CPU from the policy during an episode."""
        self._still_since_ns, self._positions = None, None
        self._sent = {c.name: [] for c in self._forward}
        self._subscriptions = [self._node.create_subscription(JointState, "joint_states", self._on_joint_state, 10)]
        self._subscriptions += [self._node.create_subscription(
            Float64MultiArray, f"{c.name}/commands", lambda msg, name=c.name: self._on_forward(name, msg),
            COMMAND_QOS_DEPTH) for c in self._forward]
        # an agent streams its forward commands every control period; one that never commanded a controller
        # leaves it at its measured joints (see _last_sent)
        deadline = time.monotonic() + LAST_COMMANDS_WAIT_S
        spin_until(lambda: time.monotonic() >= deadline or (
            self._positions is not None and all(len(sent) == 2 for sent in self._sent.values())),
            LAST_COMMANDS_WAIT_S + SERVICE_TIMEOUT_S, "waiting for the agent's last commands")

    def _unwatch(self) -> None:
        for subscription in self._subscriptions:
            self._node.destroy_subscription(subscription)
        self._subscriptions = []

    def _on_status(self, msg: PolicyStatus) -> None:
        if self._subscriptions:
            self._statuses.append(msg)

    def _now_ns(self) -> int:
        return self._node.get_clock().now().nanoseconds

    def _held_for(self, since_ns: int | None) -> bool:
        return since_ns is not None and self._now_ns() - since_ns >= STILL_FOR_S * NS_PER_S

    def _on_joint_state(self, msg: JointState) -> None:
        positions = np.full(len(self._index), np.nan)
        velocities = np.zeros(len(self._index))
        for k, name in enumerate(msg.name):
            i = self._index.get(name)
            if i is not None:
                positions[i] = msg.position[k]
                velocities[i] = msg.velocity[k] if k < len(msg.velocity) else np.nan
        if np.any(np.isnan(positions)):
            return
        positions[self._speed] = velocities[self._speed]
        self._positions = positions
        now_ns = self._now_ns()
        still = bool(np.all(np.abs(velocities[self._arm_columns]) < STILL_VELOCITY))
        self._still_since_ns = (self._still_since_ns or now_ns) if still else None
        home = still and bool(np.all(np.abs(velocities[self._speed]) < STILL_VELOCITY)) and bool(
            np.all(np.abs(positions - self.home)[self._checked] <= HOME_TOLERANCE))
        self._home_since_ns = (self._home_since_ns or now_ns) if home else None

    def _on_forward(self, name: str, msg: Float64MultiArray) -> None:
        self._sent[name] = [*self._sent[name][-1:], np.asarray(msg.data, dtype=np.float64)]

    def _last_sent(self) -> MotionState:
        """Where the forward controllers' commands stand (their last value and per-period rate, as the
        controller takes them), the arm as measured; a controller never commanded: its measured joints at rest."""
        assert self._positions is not None
        positions, velocities = self._positions.copy(), np.zeros(len(self._index))
        period_s = self._config.rates.control_period_ns / NS_PER_S
        for name, columns in self._forward_columns.items():
            sent = self._sent[name]
            if sent:
                positions[columns] = sent[-1]
                if len(sent) == 2:
                    velocities[columns] = (sent[-1] - sent[0]) / period_s
        return MotionState(positions, velocities, self._now_ns() - self._config.rates.control_period_ns)

    def _call(self, client: Any, spin_until: SpinUntil, what: str) -> None:
        spin_until(client.service_is_ready, SERVICE_TIMEOUT_S, f"{what} (no {client.srv_name} service)")
        future = client.call_async(Trigger.Request())
        spin_until(future.done, SERVICE_TIMEOUT_S, what)
        response = future.result()
        if response is None or not response.success:
            raise RuntimeError(f"{what}: {client.srv_name} refused: {getattr(response, 'message', 'no answer')}")

    def _set_dry_run(self, dry_run: bool, spin_until: SpinUntil) -> None:
        what = f"setting safety.dry_run:={str(dry_run).lower()} on the policy node"
        spin_until(self._parameters.service_is_ready, SERVICE_TIMEOUT_S, what)
        value = ParameterValue(type=ParameterType.PARAMETER_BOOL, bool_value=dry_run)
        future = self._parameters.call_async(SetParameters.Request(parameters=[
            Parameter(name="safety.dry_run", value=value)]))
        spin_until(future.done, SERVICE_TIMEOUT_S, what)
        response = future.result()
        results = [] if response is None else list(response.results)
        if not results or not results[0].successful:
            raise RuntimeError(f"{what}: refused: {results[0].reason if results else 'no answer'}")
