"""Sorting episodes over ROS: sim_robot and an agent as processes, episodes started and watched from here.

The agent is the scripted expert or the random baseline (expert_node) or the real policy node with a
model; all of them command the sim through the controller topics. Both nodes run for the whole run,
on a DDS domain of their own kept on this machine (as in the demo); each episode is started on
`task/start`, and the sim itself sends the episode's instruction to the agent. Before each episode the agent
is paused and the cell brought home through its controllers (ros/cell_homing.py), so that every episode
starts from the same pose whatever the previous one left. With `record_dir`, every
episode goes to its own mcap rosbag2 (ros/episode_recorder.py). Ctrl-C (SIGINT, or SIGTERM) stops the run at
its next wait, stops the nodes and raises ``EpisodesInterrupted`` with the finished episodes, so that the
caller can still report them. Used by `internvla record` and `internvla eval`.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from rclpy.signals import SignalHandlerOptions
from rosbags.rosbag2 import StoragePlugin, Writer
from sensor_msgs.msg import JointState
from std_msgs.msg import String

from internvla_ros.learning.record import bag_name
from internvla_ros.msg import ActionChunk, PolicyStatus
from internvla_ros.paths import config_path, default_model_dir
from internvla_ros.ros.cell_homing import CellHoming
from internvla_ros.ros.conversions import duration_to_ns, time_to_ns
from internvla_ros.ros.demo_processes import start_node, stop_node
from internvla_ros.ros.domain import claim_domain
from internvla_ros.ros.episode_recorder import EpisodeRecorder
from internvla_ros.ros.transport import use_frame_transport
from internvla_ros.runtime.config import RuntimeConfig
from internvla_ros.sim.chunk_switches import SwitchJudge
from internvla_ros.sim.task import EpisodeSpec, SortingTask, TaskConfig, task_config_from_yaml

NAMESPACE = "/sorting"
POLICIES = ("expert", "random", "internvla")
STARTUP_TIMEOUT_S = 180.0
EPISODE_MARGIN_S = 30.0  # beyond an episode's time limit before the run is declared stuck
SETTLE_S = 0.5  # after the summary: the recorder takes the episode's last messages
DISCOVERY_SETTLE_S = 1.0  # after the graph shows every publisher: their readers here match them
TASK_QOS = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
# The policy node's counters reported per episode (their change from its start to its end, as of the
# node's status, published once a second), so that a low success rate can be told apart from a node
# that held or dropped its chunks.
NODE_COUNTERS = ("chunks_computed", "chunks_dropped", "stale_inputs", "inference_overruns", "commands_clamped",
                 "inference_failures", "inference_timeouts")


class EpisodesInterrupted(Exception):
    """The run was interrupted (SIGINT or SIGTERM); the nodes are stopped. ``summaries``: the finished episodes';
    ``incomplete``: the bag of the episode that was under way, when one was being recorded (closed, partial)."""

    def __init__(self, summaries: list[dict[str, Any]], incomplete: Path | None) -> None:
        super().__init__(f"interrupted after {len(summaries)} finished episodes")
        self.summaries, self.incomplete = summaries, incomplete


def node_counters(status: PolicyStatus | None) -> dict[str, float]:
    """The counters of ``NODE_COUNTERS`` and the current inference latency (p50, s) of a status message."""
    if status is None:
        return {}
    return {**{name: int(getattr(status, name)) for name in NODE_COUNTERS},
            "inference_latency_p50_s": round(float(status.inference_latency_p50), 4)}


def counters_during(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """What the node did between two snapshots: counter differences, the later latency."""
    if not before or not after:
        return {}
    return {**{name: after[name] - before[name] for name in NODE_COUNTERS},
            "inference_latency_p50_s": after["inference_latency_p50_s"]}


@dataclass
class Monitor:
    """What the run waits on: the sim's joint states, the node's status, the episodes' summaries."""

    node: Node
    switch_judge: SwitchJudge | None = None  # the policy node's chunk hand-overs (sim/chunk_switches.py)
    joint_states: int = 0
    status: PolicyStatus | None = None
    summaries: dict[int, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        ns = NAMESPACE
        self.start = self.node.create_publisher(String, f"{ns}/task/start", TASK_QOS)
        self._states = self.node.create_subscription(JointState, f"{ns}/joint_states", self._on_state, 10)
        self.node.create_subscription(PolicyStatus, f"{ns}/policy_node/status", self._on_status, 10)
        self.node.create_subscription(String, f"{ns}/task/summary", self._on_summary, TASK_QOS)
        if self.switch_judge is not None:
            self.node.create_subscription(ActionChunk, f"{ns}/policy_node/action_chunk", self._on_chunk, TASK_QOS)

    def _on_state(self, _: JointState) -> None:
        self.joint_states += 1

    def stop_counting_joint_states(self) -> None:
        """Once the sim is seen running: 200 messages a second would take CPU from the policy."""
        self.node.destroy_subscription(self._states)

    def _on_status(self, msg: PolicyStatus) -> None:
        self.status = msg

    def _on_chunk(self, msg: ActionChunk) -> None:
        assert self.switch_judge is not None
        self.switch_judge.add(int(msg.chunk_id), time_to_ns(msg.header.stamp), time_to_ns(msg.observation_stamp),
                              duration_to_ns(msg.control_period), msg.positions)

    def _on_summary(self, msg: String) -> None:
        summary = json.loads(msg.data)
        self.summaries[int(summary["episode"])] = summary


def switch_judge(config: RuntimeConfig, policy_parameters: Sequence[str]) -> SwitchJudge:
    """The judge of the policy node's chunk hand-overs, for the execution mode the node runs in."""
    modes = [value.split(":=", 1)[1] for value in policy_parameters if value.startswith("execution.mode:=")]
    judged = [joint for c in config.controllers if c.type == "joint_trajectory" for joint in c.joints]
    return SwitchJudge(config.joint_names, judged, modes[-1] if modes else config.execution.mode)


def agent_command(policy: str, config_file: Path, model: Path | None, seed: int,
                   policy_parameters: Sequence[str], perturb_px: float = 0.0,
                   stop_belt: bool = False, aim: str = "lane") -> tuple[str, list[str]]:
    if policy_parameters and policy != "internvla":
        raise ValueError(f"--policy {policy} takes no policy node parameters ({' '.join(policy_parameters)})")
    if policy == "internvla":
        model = model or default_model_dir()
        if not (model / "model.safetensors").is_file():
            raise FileNotFoundError(f"no model at {model}: give --model DIR (or run `make setup` for models/default)")
        return "internvla_ros.ros.policy_node", ["--params-file", str(config_file), "-p", f"model_path:={model}",
                                                 "-p", "autostart:=true", "-p", "safety.dry_run:=false",
                                                 *(arg for value in policy_parameters for arg in ("-p", value))]
    for option, value in (("--perturb-px", perturb_px), ("--stop-belt", stop_belt), ("--aim", aim != "lane")):
        if value and policy != "expert":
            raise ValueError(f"{option} is for the scripted expert, not --policy {policy}")
    return "internvla_ros.ros.expert_node", ["-p", f"config:={config_file}", "-p", f"mode:={policy}",
                                             "-p", f"seed:={seed}", "-p", f"perturb_px:={float(perturb_px)}",
                                             "-p", f"stop_belt:={str(bool(stop_belt)).lower()}",
                                             "-p", f"aim:={aim}"]


def _open_writer(path: Path) -> Writer:
    writer = Writer(path, version=9, storage_plugin=StoragePlugin.MCAP)
    writer.open()
    return writer


def run_episodes(cell: str, specs: list[EpisodeSpec], policy: str, logs: Path, record_dir: Path | None = None,
                 model: Path | None = None, progress: Callable[[dict[str, Any]], None] = lambda _: None,
                 show: Callable[[str], None] = print, policy_parameters: Sequence[str] = (),
                 perturb_px: float = 0.0, stop_belt: bool = False, aim: str = "lane"
                 ) -> list[dict[str, Any]]:
    """Runs the episodes in order; returns their summaries (the sim's `task/summary`). ``policy_parameters``:
    ``name:=value`` overrides for the policy node (e.g. ``execution.mode:=rtc``); ``perturb_px``: the scripted
    expert's recovery demonstrations, ``stop_belt`` its grasps at rest, ``aim`` where across the belt it meets
    a parcel (sim.expert.SortingExpert)."""
    if policy not in POLICIES:
        raise ValueError(f"--policy {policy}: use one of {', '.join(POLICIES)}")
    config_file = config_path(f"{cell}.yaml")
    config = RuntimeConfig.from_yaml(config_file)
    task = task_config_from_yaml(config_file)
    if task is None:
        raise ValueError(f"cell {cell} has no sorting task ({config_file} has no /**/sim_robot: task: section)")
    logs.mkdir(parents=True, exist_ok=True)
    module, args = agent_command(policy, config_file, model, specs[0].seed, policy_parameters, perturb_px, stop_belt,
                                 aim)
    claim = claim_domain()
    env = claim.apply()
    common = ["-r", f"__ns:={NAMESPACE}"]
    show(f"ROS_DOMAIN_ID={claim.domain}: sim_robot + {module.rsplit('.', 1)[-1]} ({policy}) in {NAMESPACE}, "
         f"logs in {logs}")
    processes = {"sim_robot": start_node("internvla_ros.ros.sim_robot", ["-p", f"config:={config_file}", *common],
                                         logs / "sim_robot.log", env),
                 "agent": start_node(module, [*args, *common], logs / f"{module.rsplit('.', 1)[-1]}.log", env)}
    writer: Writer | None = None
    summaries: list[dict[str, Any]] = []
    recording: Path | None = None  # the bag of the episode under way
    interrupted = threading.Event()
    handlers = {sig: signal.signal(sig, lambda *_: interrupted.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    use_frame_transport()
    rclpy.init(signal_handler_options=SignalHandlerOptions.NO)  # our handler: the run ends at its next wait
    try:
        node = rclpy.create_node("episode_runner", namespace=NAMESPACE)
        monitor = Monitor(node, switch_judge=switch_judge(config, policy_parameters) if policy == "internvla" else None)
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        recorder = None
        if record_dir is not None:
            record_dir.mkdir(parents=True, exist_ok=True)
            recording = record_dir / bag_name(specs[0].episode)
            writer = _open_writer(recording)
            recorder = EpisodeRecorder(config, writer, NAMESPACE)
            executor.add_node(recorder)

        def spin_until(done: Callable[[], bool], timeout_s: float, what: str, interruptible: bool = True) -> None:
            deadline = time.monotonic() + timeout_s
            while not done():
                if interrupted.is_set() and interruptible:
                    raise EpisodesInterrupted(list(summaries), recording)
                dead = [name for name, process in processes.items() if process.poll() is not None]
                if dead:
                    raise RuntimeError(f"{', '.join(dead)} exited {what}; see the logs in {logs}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"timed out after {timeout_s:.0f} s {what}; see the logs in {logs}")
                executor.spin_once(timeout_sec=0.05)

        arm = next(c.name for c in config.controllers if c.type == "joint_trajectory")

        # Everything the bag takes must have a publisher in the graph before the first episode starts.
        recorded = [f"{arm}/joint_trajectory", *(f"{c.name}/commands" for c in config.controllers
                                                 if c.type == "forward_command"), *(c.topic for c in config.cameras)]

        def ready() -> bool:
            agent = (monitor.status is not None and monitor.status.state == PolicyStatus.STATE_RUNNING
                     if policy == "internvla" else node.count_publishers(f"{NAMESPACE}/{arm}/joint_trajectory") > 0)
            publishers = all(node.count_publishers(f"{NAMESPACE}/{topic}") > 0 for topic in recorded)
            return agent and publishers and monitor.joint_states > 0 and monitor.start.get_subscription_count() > 0

        started = time.monotonic()
        spin_until(ready, STARTUP_TIMEOUT_S, "while starting")
        ready_at = time.monotonic()
        monitor.stop_counting_joint_states()
        spin_until(lambda: time.monotonic() - ready_at >= DISCOVERY_SETTLE_S, DISCOVERY_SETTLE_S + 5.0,
                   "while starting")
        show(f"cell running after {time.monotonic() - started:.1f} s")
        homing = CellHoming(node, config, f"{NAMESPACE}/{module.rsplit('.', 1)[-1]}", policy == "internvla")
        for spec in specs:
            homing.pause_agent(spin_until)
            homed = homing.home_cell(spin_until)
            if recorder is not None:
                recording = record_dir / bag_name(spec.episode)
                if spec is not specs[0]:
                    previous, writer = writer, _open_writer(recording)
                    recorder.switch_writer(writer)
                    previous.close()
                recorder.start_recording()
            before = node_counters(monitor.status)
            if monitor.switch_judge is not None:
                monitor.switch_judge.take()  # hand-overs between episodes are no episode's
            monitor.start.publish(String(data=json.dumps(spec.__dict__)))
            homing.resume_agent(spin_until)
            limit = SortingTask(task, spec, 0.0, 0.0).time_limit_s
            spin_until(lambda s=spec: s.episode in monitor.summaries, limit + EPISODE_MARGIN_S,
                       f"during episode {spec.episode} (seed {spec.seed})")
            monitor.summaries[spec.episode]["homing"] = homed.as_dict()
            during = counters_during(before, node_counters(monitor.status))
            if during:
                monitor.summaries[spec.episode]["node"] = during
            if monitor.switch_judge is not None:
                switches = monitor.switch_judge.take()
                monitor.summaries[spec.episode]["switch_samples"] = {
                    "position_gap": [round(s.position_gap, 5) for s in switches],
                    "velocity_jump": [round(s.velocity_jump, 5) for s in switches]}
            settle = time.monotonic()
            # an episode whose summary arrived is finished: an interrupt waits for the recorder's last messages
            spin_until(lambda t=settle: time.monotonic() - t >= SETTLE_S, SETTLE_S + 5.0, "after an episode",
                       interruptible=False)
            if recorder is not None:
                recorder.pause()
                recording = None
            summaries.append(monitor.summaries[spec.episode])
            progress(summaries[-1])
        executor.shutdown()
    finally:
        for name, process in processes.items():
            code = stop_node(process, 30.0)
            if code != 0:
                show(f"{name} exited with code {code}; see {logs}")
        if writer is not None:
            writer.close()
        rclpy.try_shutdown()
        claim.release()
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    return summaries


def task_defaults(cell: str) -> TaskConfig:
    """The cell's task section (its episode length), or a clear error for a cell without one."""
    task = task_config_from_yaml(config_path(f"{cell}.yaml"))
    if task is None:
        raise ValueError(f"cell {cell} has no sorting task: use --cell conveyor_sorting")
    return task
