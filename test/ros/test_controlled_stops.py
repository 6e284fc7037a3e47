"""Every way the policy node stops brings the conveyor cell to rest under control, over the real middleware.

The node runs in its own process on config/conveyor_sorting.yaml (commands on) with the sine policy in the real
inference worker; the model statistics make the belt run at about BELT_SPEED and the gripper open and close. The
test process plays the robot (FakeRobot, whose joint_states echo the commanded belt speed and gripper position)
and records every command the node publishes. Each cause is judged from the recorded messages with
test/runtime/motion_checks.py (the controllers' documented behaviour), never with runtime code; once the cause is
cleared the belt must speed up again. Times are ROS (system) time: message stamps, request send times, and the
receive times of the commands in this process. The belt's deadline counts its commands (one control period each)
from the cause, so a loaded machine that delays ticks or deliveries stretches no ramp; what may arrive late is
measured (request round trips, the lag of the node's stamped status and trajectory messages published
near the cause) and allowed for.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable, Iterator
from contextlib import suppress
from dataclasses import dataclass

import numpy as np
import pytest
import rclpy
import yaml
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Float64MultiArray
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory

from internvla_ros.msg import PolicyStatus
from internvla_ros.ros.conversions import duration_to_ns, ns_to_time, time_to_ns
from internvla_ros.runtime.commands import JointTrajectoryCommand, TrajectoryPoint
from internvla_ros.runtime.config import NS_PER_S, RuntimeConfig

from ..runtime.motion_checks import assert_commands_within, assert_trajectory_within
from .conftest import CONFIG_DIR, NodeProcess, spin_until
from .fake_robot import FakeRobot
from .lifecycle_client import LifecycleClient, worker_children
from .policies import write_unit_stats

# Until runtime/stop.py's StopProfile.sample_many subtracts the start in integers: it converts absolute nanoseconds
# to float64 first, so on the wall clock (~1.8e18 ns) it samples 256 ns coarse; the belt's steps then exceed
# its rate limit by up to 6.4e-8 m/s and arm trajectories brake with cubics far beyond the acceleration limits
# on their short segments. Strict: this mark must go with that fix.
pytestmark = [pytest.mark.slow]

CONFIG_FILE = CONFIG_DIR / "conveyor_sorting.yaml"
CONFIG = RuntimeConfig.from_yaml(CONFIG_FILE)
# Watchdog ages for a loaded machine: the test process that plays the robot may be off the CPU for 0.25 s.
JOINT_STATE_MAX_AGE_S = 0.3
CAMERA_MAX_AGE_S = 0.5
NS = "/stops"
ARM, GRIPPER, BELT = "arm_controller", "gripper_controller", "conveyor_controller"
BELT_SPEED = 0.3  # m/s: the action mean of the belt's (absolute) dim
STARTUP_TIMEOUT_S = 90.0
WAIT_S = 30.0  # upper bound of every wait after start-up; each ends as soon as its condition holds
INFERENCE_TIMEOUT_S = 2.0
WORKER_START_S = 120.0  # a worker (torch and the tokenizer) took 20 s to start on 2 loaded cores
REST_TOLERANCE_NS = 2_000_000
MOVING_SPEED = 0.25  # the belt counts as running at speed from here
RISEN_SPEED = 0.1  # after the cause is cleared, the belt must get this fast again
STEADY_COMMANDS = 30  # belt commands in a row at speed before a cause; at 0 after a stop
SLACK_S = 0.3  # the belt reaches 0 within speed / rate limit + SLACK_S (+ the measured latencies)
AT_ZERO = 1e-9
LAG_WINDOW_NS = 100_000_000
PERIOD_S = CONFIG.rates.control_period_ns / NS_PER_S
LEAD_NS = CONFIG.safety.trajectory_lead_ns
LIMITS = {j.name: j.limits for j in CONFIG.joints}


def limit_arrays(joints: list[str]) -> tuple[np.ndarray, ...]:
    """(low, high, max_velocity, max_acceleration) of ``joints``, straight from the config file."""
    return tuple(np.asarray([getattr(LIMITS[j], field) for j in joints])
                 for field in ("min_position", "max_position", "max_velocity", "max_acceleration"))


def command(msg: JointTrajectory) -> JointTrajectoryCommand:
    """A received trajectory as the plain data motion_checks judges."""
    points = tuple(TrajectoryPoint(tuple(p.positions), tuple(p.velocities), duration_to_ns(p.time_from_start))
                   for p in msg.points)
    return JointTrajectoryCommand(ARM, tuple(msg.joint_names), time_to_ns(msg.header.stamp), points)


def sample(msg: JointTrajectory, t_ns: int) -> tuple[np.ndarray, np.ndarray]:
    """Position and velocity of the controller's cubic Hermite through ``msg``'s points at absolute ``t_ns``."""
    stamp = time_to_ns(msg.header.stamp)
    times = np.asarray([stamp + duration_to_ns(p.time_from_start) for p in msg.points])
    if t_ns <= times[0]:
        return np.asarray(msg.points[0].positions), np.asarray(msg.points[0].velocities)
    if t_ns >= times[-1]:
        return np.asarray(msg.points[-1].positions), np.zeros(len(msg.joint_names))
    k = int(np.searchsorted(times, t_ns, side="right")) - 1
    a, b = msg.points[k], msg.points[k + 1]
    p0, v0, p1, v1 = (np.asarray(x) for x in (a.positions, a.velocities, b.positions, b.velocities))
    duration = (times[k + 1] - times[k]) / NS_PER_S
    s = (t_ns - times[k]) / NS_PER_S / duration
    position = ((2 * s**3 - 3 * s**2 + 1) * p0 + (s**3 - 2 * s**2 + s) * duration * v0
                + (-2 * s**3 + 3 * s**2) * p1 + (s**3 - s**2) * duration * v1)
    velocity = ((6 * s**2 - 6 * s) * (p0 - p1) / duration + (3 * s**2 - 4 * s + 1) * v0 + (3 * s**2 - 2 * s) * v1)
    return position, velocity


class JointFeed:
    """The robot's joint_states: the belt's speed in velocity (as commanded), and a stream that can go silent
    or be stamped FUTURE_S ahead."""

    FUTURE_S = 1.0

    def __init__(self) -> None:
        self.mode = "normal"
        self.belt_speed = 0.0
        self.last_normal_ns = 0

    def __call__(self, msg: JointState) -> JointState | None:
        if self.mode == "silent":
            return None
        msg.velocity = [self.belt_speed if name == "conveyor_speed" else 0.0 for name in msg.name]
        if self.mode == "future":
            msg.header.stamp = ns_to_time(time_to_ns(msg.header.stamp) + round(self.FUTURE_S * NS_PER_S))
        else:
            self.last_normal_ns = time_to_ns(msg.header.stamp)
        return msg


class CameraFeed:
    """One camera's frames, passed on or withheld; remembers the stamp of the last one passed on."""

    def __init__(self) -> None:
        self.silent = False
        self.last_ns = 0

    def __call__(self, msg: Image) -> Image | None:
        if self.silent:
            return None
        self.last_ns = time_to_ns(msg.header.stamp)
        return msg


@dataclass(frozen=True)
class Cause:
    """When the stop was caused, what delayed its request reaching the node, and when it was cleared."""

    name: str
    at_ns: int
    request_latency_ns: int
    cleared_ns: int


class Cell:
    """The node process, the robot it commands, and every command it published (with receive times)."""

    def __init__(self, context: rclpy.context.Context, policy: NodeProcess) -> None:
        self.policy = policy
        self.node = rclpy.create_node("stops_robot", context=context)
        self.executor = SingleThreadedExecutor(context=context)
        self.executor.add_node(self.node)
        self.robot = FakeRobot(self.node, CONFIG, NS)
        self.joints, self.wrist = JointFeed(), CameraFeed()
        self.robot.joint_fault, self.robot.image_fault["wrist"] = self.joints, self.wrist
        self.belt: list[tuple[int, float]] = []
        self.gripper: list[tuple[int, float]] = []
        self.arm: list[tuple[int, JointTrajectory]] = []
        self.statuses: list[PolicyStatus] = []
        self.status_received: list[int] = []
        self.stamped: list[tuple[int, PolicyStatus | JointTrajectory]] = []  # (received, message), both kinds
        deep = QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE)
        self.node.create_subscription(Float64MultiArray, f"{NS}/{BELT}/commands", self._on_belt, deep)
        self.node.create_subscription(Float64MultiArray, f"{NS}/{GRIPPER}/commands", self._on_gripper, deep)
        self.node.create_subscription(JointTrajectory, f"{NS}/{ARM}/joint_trajectory",
                                      self._on_arm, deep)
        self.node.create_subscription(PolicyStatus, f"{NS}/policy_node/status", self._on_status, 100)
        self.services = {name: self.node.create_client(Trigger, f"{NS}/policy_node/{name}")
                         for name in ("estop", "reset", "pause", "resume")}
        self.lifecycle = LifecycleClient(self.node, self.executor, f"{NS}/policy_node")

    def now(self) -> int:
        return self.node.get_clock().now().nanoseconds

    def _on_status(self, msg: PolicyStatus) -> None:
        self.statuses.append(msg)
        self.status_received.append(self.now())
        self.stamped.append((self.status_received[-1], msg))

    def _on_arm(self, msg: JointTrajectory) -> None:
        self.arm.append((self.now(), msg))
        self.stamped.append(self.arm[-1])

    def receive_lag_ns(self, around_ns: int) -> int:
        """How late this process received the node's stamped messages (statuses and arm trajectories, stamped when
        published) that were published within LAG_WINDOW_NS of ``around_ns``: a stall here delays every message
        published during it, so this is how far its receive times of the belt commands (which carry no stamp)
        published then may lag behind their publication. Chosen by stamp, not by receipt: a message published
        just before a cause but held up by a stall arrives well after it."""
        lags = [0]
        for received, msg in reversed(self.stamped):
            if received < around_ns - LAG_WINDOW_NS:
                break  # received in order, never before their stamp: every earlier one was published earlier
            stamp = time_to_ns(msg.header.stamp)
            if abs(stamp - around_ns) <= LAG_WINDOW_NS:
                lags.append(received - stamp)
        return max(lags)

    def _on_belt(self, msg: Float64MultiArray) -> None:
        self.belt.append((self.now(), msg.data[0]))
        self.joints.belt_speed = msg.data[0]

    def _on_gripper(self, msg: Float64MultiArray) -> None:
        self.gripper.append((self.now(), msg.data[0]))
        self.robot.positions[CONFIG.joint_index["fr3_finger_joint1"]] = msg.data[0]

    def wait(self, condition: Callable[[], bool], what: str, timeout_s: float = WAIT_S) -> None:
        alive = lambda: self.policy.process.poll() is None  # noqa: E731
        ok = spin_until(self.executor, lambda: not alive() or condition(), timeout_s)
        assert alive(), self.policy.output()[-3000:]
        last = self.statuses[-1] if self.statuses else None
        assert ok, f"{what}: not within {timeout_s} s; last status {last}\n{self.policy.output()[-3000:]}"

    def status_after(self, after_ns: int, condition: Callable[[PolicyStatus], bool], what: str,
                     timeout_s: float = WAIT_S) -> PolicyStatus:
        """The first status stamped from ``after_ns`` on that meets ``condition`` (each status is looked at once)."""
        checked = len(self.statuses)
        while checked and time_to_ns(self.statuses[checked - 1].header.stamp) >= after_ns:
            checked -= 1
        found: list[PolicyStatus] = []

        def look() -> bool:
            nonlocal checked
            while not found and checked < len(self.statuses):
                status = self.statuses[checked]
                checked += 1
                if time_to_ns(status.header.stamp) >= after_ns and condition(status):
                    found.append(status)
            return bool(found)

        self.wait(look, what, timeout_s)
        return found[0]

    def call(self, service: str) -> tuple[int, int, Trigger.Response]:
        """(send time, round trip, response) of one ~/<service> request."""
        client = self.services[service]
        self.wait(client.service_is_ready, f"~/{service} available")
        sent = self.now()
        future = client.call_async(Trigger.Request())
        self.wait(future.done, f"~/{service} answered", 10.0)
        return sent, self.now() - sent, future.result()

    def moving(self) -> None:
        """Waits until the node runs with the belt at speed and the arm planned, after healing any leftover."""
        self.joints.mode, self.wrist.silent = "normal", False
        if self.lifecycle.state() == "inactive":
            assert self.lifecycle.change("activate")
        for service in ("reset", "resume"):
            self.call(service)
        started = self.now()

        def at_speed() -> bool:
            recent = self.belt[-STEADY_COMMANDS:]
            if not (len(recent) == STEADY_COMMANDS and recent[0][0] > started and self.arm and self.statuses):
                return False
            status, now = self.statuses[-1], self.now()  # fresh news: this process is not lagging behind
            fresh = now - self.status_received[-1] < LAG_WINDOW_NS and self.receive_lag_ns(now) < LAG_WINDOW_NS
            return (fresh and min(v for _, v in recent) >= MOVING_SPEED and self.arm[-1][0] > started
                    and status.state == PolicyStatus.STATE_RUNNING)

        self.wait(at_speed, "belt at speed, arm moving")

    def belt_at_rest_after(self, after_ns: int) -> None:
        def resting() -> bool:
            recent = []
            for t, v in reversed(self.belt):
                if t <= after_ns or len(recent) == STEADY_COMMANDS:
                    break
                recent.append(v)
            return len(recent) == STEADY_COMMANDS and max(recent) <= AT_ZERO

        self.wait(resting, "belt at 0")

    def belt_rises_after(self, after_ns: int) -> None:
        self.wait(lambda: any(t > after_ns and v >= RISEN_SPEED for t, v in self.belt[-50:]), "belt speeding up")

    def judge(self, cause: Cause, holds: bool = True) -> None:
        """Every check of one stop; ``holds``: the node stays up and keeps commanding the stop (not deactivated)."""
        start = cause.at_ns - NS_PER_S
        belt = [(t, v) for t, v in self.belt if t >= start]
        gripper = [(t, v) for t, v in self.gripper if t >= start]
        belt_low, belt_high, belt_rate, belt_jerk = limit_arrays(["conveyor_speed"])
        assert_commands_within(np.asarray([[v] for _, v in belt]), PERIOD_S, belt_low, belt_high, belt_rate,
                               belt_jerk)
        assert_commands_within(np.asarray([[v] for _, v in gripper]), PERIOD_S, *limit_arrays(["fr3_finger_joint1"]))
        speed = [v for t, v in belt if t <= cause.at_ns][-1]
        assert speed >= RISEN_SPEED, f"{cause.name}: the belt ran at {speed} m/s only when the stop was caused"
        held = [(t, v) for t, v in belt if cause.at_ns < t < cause.cleared_ns]
        moving = [k for k, (_, v) in enumerate(held) if v > AT_ZERO]
        first_zero = moving[-1] + 1 if moving else 0
        assert first_zero < len(held), f"{cause.name}: the belt never reached 0 and stayed there: {held[-5:]}"

        # The stop's trajectory: the last one before the cause was cleared; it continues the one before it.
        before_clear = [(t, m) for t, m in self.arm if t < cause.cleared_ns]
        (received, stop), (_, running) = before_clear[-1], before_clear[-2]
        stamp = time_to_ns(stop.header.stamp)
        # Time on the command axis: one control period per belt command (a tick the loaded node missed sends none
        # and moves nothing), counted from the cause; commands sent before it may arrive after it (receive lag).
        zero_ns = held[first_zero][0]
        lag_ns = self.receive_lag_ns(cause.at_ns)
        margin_s = (cause.request_latency_ns + lag_ns) / NS_PER_S
        elapsed_s = (first_zero + 1) * PERIOD_S
        deadline_s = speed / belt_rate[0] + SLACK_S + margin_s
        print(f"{cause.name}: belt {speed:.3f} m/s -> 0 after {first_zero + 1} commands = {elapsed_s:.2f} s "
              f"(deadline {deadline_s:.3f} s with a margin of {margin_s * 1e3:.1f} ms = request "
              f"{cause.request_latency_ns / 1e6:.1f} + receive lag {lag_ns / 1e6:.1f}; received "
              f"{(zero_ns - cause.at_ns) / 1e9:.3f} s after the cause); arm stop stamped "
              f"{(stamp - cause.at_ns) / 1e6:+.1f} ms, received {(received - stamp) / 1e6:.1f} ms later")
        assert elapsed_s <= deadline_s, f"{cause.name}: belt at 0 after {elapsed_s:.3f} s > {deadline_s:.3f} s"
        if stamp < cause.at_ns - 2 * PERIOD_S * NS_PER_S:
            # No trajectory after the cause: only right when the arm's last one already ended at rest (a hung
            # worker sends no chunk for a while, so the last plan runs out before the hold starts).
            end_ns = stamp + duration_to_ns(stop.points[-1].time_from_start)
            assert end_ns <= cause.at_ns + LEAD_NS and not any(stop.points[-1].velocities), \
                f"{cause.name}: no stop trajectory, yet the arm moves {(end_ns - cause.at_ns) / 1e6} ms after the cause"
            running = stop
        assert cause.at_ns - 2 * PERIOD_S * NS_PER_S <= stamp <= zero_ns or running is stop, \
            f"{cause.name}: the stop trajectory is stamped {(stamp - cause.at_ns) / 1e6:.1f} ms after the cause"
        low, high, max_velocity, max_acceleration = limit_arrays(list(stop.joint_names))
        if running is not stop:  # the stop repeats the running motion for the lead, then brakes
            for t_ns in range(stamp, stamp + LEAD_NS + 1, LEAD_NS // 10):  # integer times: float64 ns are coarse
                for ours, theirs in zip(sample(stop, t_ns), sample(running, t_ns), strict=True):
                    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-6,
                                               err_msg=f"{cause.name}: the stop leaves the running motion in its lead")
            # At rest (and still) once every joint could have braked at its limit from the end of the lead.
            _, velocity = sample(stop, stamp + LEAD_NS)
            braking_ns = round(np.max(np.abs(velocity) / max_acceleration) * NS_PER_S)
            rest_ns = stamp + LEAD_NS + braking_ns + REST_TOLERANCE_NS
            for point in (p for p in stop.points if stamp + duration_to_ns(p.time_from_start) >= rest_ns):
                assert not any(point.velocities) and point.positions == stop.points[-1].positions, \
                    f"{cause.name}: the arm still moves {(rest_ns - stamp) / 1e6:.1f} ms into its stop: {point}"
        for _, msg in (item for item in self.arm if item[0] >= start):
            assert_trajectory_within(command(msg), low, high, max_velocity, max_acceleration)
        gripper_held = [v for t, v in gripper if cause.at_ns < t < cause.cleared_ns][-STEADY_COMMANDS // 3:]
        assert len(set(gripper_held)) == 1, f"{cause.name}: the gripper is not at rest: {gripper_held}"
        if holds:
            assert len(held) - first_zero >= STEADY_COMMANDS, f"{cause.name}: the hold sent too few commands"


@pytest.fixture(scope="module")
def cell(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cell]:
    tmp = tmp_path_factory.mktemp("stops")
    model = write_unit_stats(tmp / "model", CONFIG.robot_type, CONFIG.dim)
    stats = json.loads((model / "stats.json").read_text())
    action = stats[CONFIG.robot_type]["action"]
    action["mean"][CONFIG.joint_index["conveyor_speed"]] = BELT_SPEED
    action["std"][CONFIG.joint_index["conveyor_speed"]] = 0.25  # small swings around BELT_SPEED
    action["mean"][CONFIG.joint_index["fr3_finger_joint1"]] = 0.5  # at the threshold: the gripper opens and closes
    (model / "stats.json").write_text(json.dumps(stats))
    qos = tmp / "qos.yaml"  # deep command queues: no command may be lost between the node and the recorder
    qos.write_text(yaml.safe_dump({"/**": {"ros__parameters": {"qos_overrides": {
        f"{NS}/{name}": {"publisher": {"depth": 1000}}
        for name in (f"{ARM}/joint_trajectory", f"{GRIPPER}/commands", f"{BELT}/commands")}}}}))
    policy = NodeProcess("internvla_ros.ros.policy_node", [
        "--params-file", str(CONFIG_FILE), "--params-file", str(qos), "-p", f"model_path:={model}",
        "-p", "policy_factory:=test_sine", "-p", "autostart:=true", "-p", "safety.dry_run:=false",
        "-p", "instruction:=sort the parcels", "-p", "status_rate_hz:=20.0",
        "-p", f"inference_timeout_s:={INFERENCE_TIMEOUT_S}", "-r", f"__ns:={NS}",
        "-p", f"safety.joint_state_max_age_s:={JOINT_STATE_MAX_AGE_S}",
        "-p", f"safety.camera_max_age_s:={CAMERA_MAX_AGE_S}"], tmp / "policy_node.log")
    context = rclpy.context.Context()
    rclpy.init(context=context)
    try:
        cell = Cell(context, policy)
        cell.wait(lambda: any(s.state == PolicyStatus.STATE_RUNNING for s in cell.statuses), "running",
                  STARTUP_TIMEOUT_S)
        yield cell
        assert policy.stop() == 0, policy.output()[-3000:]
    finally:
        policy.stop()
        context.try_shutdown()


@pytest.mark.parametrize(("stop", "clear"), [("estop", "reset"), ("pause", "resume")])
def test_operator_stop(cell: Cell, stop: str, clear: str) -> None:
    cell.moving()
    sent, round_trip, response = cell.call(stop)
    assert response.success, response.message
    cell.belt_at_rest_after(sent)
    cleared, _, response = cell.call(clear)
    assert response.success, response.message
    cell.belt_rises_after(cleared)
    cell.judge(Cause(stop, sent, round_trip, cleared))


def test_stale_camera(cell: Cell) -> None:
    cell.moving()
    cell.wrist.silent = True
    cell.status_after(cell.wrist.last_ns, lambda s: s.state == PolicyStatus.STATE_HOLDING, "holding")
    cause = cell.wrist.last_ns + round(CAMERA_MAX_AGE_S * NS_PER_S)  # the watchdog's own deadline: no request
    cell.belt_at_rest_after(cause)
    cell.wrist.silent = False
    cleared = cell.now()
    cell.belt_rises_after(cleared)
    cell.judge(Cause("stale camera", cause, 0, cleared))


@pytest.mark.parametrize("mode", ["silent", "future"])
def test_stale_joint_states(cell: Cell, mode: str) -> None:
    """Silent joint_states, and joint_states stamped FUTURE_S ahead: refused (more than max_future_stamp_s
    ahead), so the node holds exactly as if none had come."""
    cell.moving()
    refused_before = cell.statuses[-1].future_stamps_rejected
    cell.joints.mode = mode
    last = cell.joints.last_normal_ns
    held = cell.status_after(last, lambda s: s.state == PolicyStatus.STATE_HOLDING, "holding")
    cause = last + round(JOINT_STATE_MAX_AGE_S * NS_PER_S)
    cell.belt_at_rest_after(cause)
    if mode == "future":
        refused = cell.statuses[-1].future_stamps_rejected
        assert refused > refused_before, (refused_before, refused, held)
    cell.joints.mode = "normal"
    cleared = cell.now()
    cell.belt_rises_after(cleared)
    cell.judge(Cause(f"joint_states {mode}", cause, 0, cleared))


def test_worker_hang(cell: Cell) -> None:
    """A worker that stops answering (SIGSTOP) is restarted after inference_timeout_s while the robot holds."""
    cell.moving()
    (pid,) = worker_children(cell.policy.process.pid)
    before = cell.statuses[-1]
    os.kill(pid, signal.SIGSTOP)
    try:
        timed_out = cell.status_after(time_to_ns(before.header.stamp), lambda s: s.inference_timeouts > before.
                                      inference_timeouts, "the request timed out", INFERENCE_TIMEOUT_S + WAIT_S)
        # The hold began after the last status without the timeout, and before the first with it.
        stamps = [time_to_ns(s.header.stamp) for s in cell.statuses]
        first = time_to_ns(timed_out.header.stamp)
        cause = max(t for t in stamps if t < first)
        cell.belt_at_rest_after(cause)
        restarted = cell.status_after(first, lambda s: s.worker_restarts > before.worker_restarts, "restarted",
                                      WORKER_START_S)
        stamps = [time_to_ns(s.header.stamp) for s in cell.statuses]
        cleared = max(t for t in stamps if t < time_to_ns(restarted.header.stamp))  # still holding then
        cell.belt_rises_after(cleared)
        assert worker_children(cell.policy.process.pid) != [pid]
    finally:
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
    cell.judge(Cause("worker hang", cause, first - cause, cleared))


def test_lifecycle_deactivate(cell: Cell) -> None:
    cell.moving()
    sent = cell.now()
    assert cell.lifecycle.state() == "active"
    round_trip = cell.now() - sent  # a request's way to the node and back, measured just before
    sent = cell.now()
    assert cell.lifecycle.change("deactivate")
    answered = cell.now()
    spin_until(cell.executor, lambda: False, 0.5)
    cleared = cell.now()
    quiet_from = answered + cell.receive_lag_ns(answered) + LAG_WINDOW_NS  # what was on its way has arrived
    assert not [t for t, _ in cell.belt if quiet_from < t < cleared], "belt commands while inactive"
    assert cell.lifecycle.change("activate")
    cell.belt_rises_after(cleared)
    cell.judge(Cause("deactivate", sent, round_trip, cleared), holds=False)
