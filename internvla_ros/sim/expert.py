"""The scripted expert of the sorting task, and the random baseline: targets for the cell's controllers.

The expert plans from the sim's ground truth (`task/state`, SortingTask.snapshot plus stamp, tip,
opening and belt speed): it keeps the belt at the task's nominal speed, takes the most downstream
parcel it can still catch, moves the gripper (open) to a point on that parcel's path a little ahead of
it, closes as the parcel arrives under the tip, carries it to the bin the rule names, opens, and
repeats. Arm motions are rest-to-rest minimum-jerk moves in joint space whose duration keeps every
joint under 70 % of its velocity and acceleration limits; a move is sent only once the previous one
has ended, so no trajectory ever replaces a running one. The gripper closes or opens only once the
measured tip (ground truth) is where the move was to end: on a loaded machine the sim may execute a
move later than planned. Gripper and belt get targets; the node limits them per control period
(runtime.safety.MotionLimiter), like the policy node's forward streams.

With ``stop_belt`` the expert stops the belt once a parcel is well inside the pick zone, grasps it where
it lies, and restarts the belt when it holds it: the grasp no longer depends on closing at the moment a
moving parcel passes, which a policy cloned from the demonstrations has to guess from a few frames.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from internvla_ros.runtime.config import RuntimeConfig
from internvla_ros.sim.layout import BELT_CENTRE_Y, PICK_ZONE_X, PIXELS_PER_METRE, arm_layouts, bin_centre, solve_chain
from internvla_ros.sim.task import TaskConfig

MOVE_STEP_S = 0.02
LIMIT_SHARE = 0.7  # of each joint's velocity and acceleration limit
MIN_MOVE_S = 0.3
TRAJECTORY_LEAD_S = 0.1  # a move is stamped this far ahead of its sending (it arrives before it starts)
WAIT_MARGIN_S = 0.6  # the parcel reaches the intercept point this long after the arm
CLOSE_TIMEOUT_S = 2.0
CLOSE_GIVE_UP_S = 8.0  # reopen after this even if the gripper was never measured closed
CLOSED_SETTLE_S = 0.3  # ground truth this long after the gripper was measured closed decides the grasp
RELEASE_TIMEOUT_S = 1.5
ARRIVAL_TOLERANCE_PX = 6.0  # the measured tip this close to a move's goal counts as arrived
ARRIVAL_TIMEOUT_S = 3.0  # a loaded machine delays the measured arm; give up waiting after this
READY_POINT = (PICK_ZONE_X[0] + 20.0, BELT_CENTRE_Y)
PERTURB_SHARE = 0.7  # of the approaches that first go to a point off the intercept, when perturbing
CORRECTION_MARGIN_S = 0.8  # the parcel arrives this much later again, to leave time for the correction
STOP_INSIDE_PX = 40.0  # stop_belt: the belt stops once a parcel is this far inside the pick zone
BELT_STILL_M_S = 1e-3  # stop_belt: the measured belt counts as stopped below this
# Where the expert meets a moving parcel (SortingExpert's aim): the share of the way from the parcel's lane to
# the belt's centre line, for lanes nearer the arm than the centre line and for the others.
AIM_TOWARD_CENTRE = {"lane": (0.0, 0.0), "centre-line": (1.0, 1.0), "near-half": (1.0, 0.0), "near-midway": (0.5, 0.0)}
AIMS = tuple(AIM_TOWARD_CENTRE)
GRASPING = ("idle", "approach", "wait", "close")  # stop_belt: the states in which a parcel keeps the belt stopped


@dataclass(frozen=True)
class ArmMove:
    """A rest-to-rest trajectory of the arm controller's joints: points every MOVE_STEP_S from its start, the
    first one at rest where it starts. The controller blends from its hold to that first point when the move
    arrives: rest to rest, so between the two and never beyond either (a first point already under way would
    make that blend swing out first, past a limit the arm stands on)."""

    times_s: np.ndarray
    positions: np.ndarray  # (points, joints)
    velocities: np.ndarray

    @property
    def duration_s(self) -> float:
        return float(self.times_s[-1])


def plan_move(start: np.ndarray, goal: np.ndarray, max_velocity: np.ndarray, max_acceleration: np.ndarray) -> ArmMove:
    """Minimum-jerk from start to goal (peak velocity 1.875 d/T, peak acceleration 5.77 d/T^2)."""
    distance = np.abs(goal - start)
    duration = max(MIN_MOVE_S, float(np.max(1.875 * distance / (LIMIT_SHARE * max_velocity))),
                   float(np.sqrt(np.max(5.774 * distance / (LIMIT_SHARE * max_acceleration)))))
    duration = MOVE_STEP_S * np.ceil(duration / MOVE_STEP_S)
    times = np.linspace(0.0, duration, round(duration / MOVE_STEP_S) + 1)
    tau = times[:, None] / duration
    shape = tau**3 * (10 - 15 * tau + 6 * tau**2)
    rate = 30 * tau**2 * (1 - tau) ** 2 / duration
    velocities = (goal - start) * rate
    velocities[-1] = 0.0
    return ArmMove(times, start + (goal - start) * shape, velocities)


@dataclass(frozen=True)
class ExpertCommand:
    """What to send this control tick: a new arm move (or None) and the gripper and belt targets."""

    move: ArmMove | None
    gripper: float
    belt: float


class _Arm:
    """The arm controller's joints, limits and chain, and the gripper's open/closed positions."""

    def __init__(self, config: RuntimeConfig) -> None:
        arm = next(c for c in config.controllers if c.type == "joint_trajectory")
        self.names = arm.joints
        self.index = np.array([config.joint_index[name] for name in arm.joints])
        limits = [j.limits for j in config.joints]
        self.low = np.array([lim.min_position for lim in limits])
        self.high = np.array([lim.max_position for lim in limits])
        self.vmax = np.array([limits[i].max_velocity for i in self.index])
        self.amax = np.array([limits[i].max_acceleration for i in self.index])
        self.chain = arm_layouts(config)[0]
        gripper = config.grippers[0]
        self.open, self.closed = gripper.open_position, gripper.closed_position
        lim = limits[config.joint_index[gripper.joint]]
        self.gripper_limits = (lim.max_velocity, lim.max_acceleration)
        self.gripper_index = config.joint_index[gripper.joint]

    def opening(self, positions: np.ndarray) -> float:
        """The measured gripper opening, 0 closed .. 1 open (the task's convention)."""
        return float((positions[self.gripper_index] - self.closed) / (self.open - self.closed))

    def move(self, start: np.ndarray, goal: np.ndarray) -> ArmMove:
        """From ``start`` (config order; a measured arm a tracking error past a limit starts on it)."""
        start = np.clip(start, self.low, self.high)
        return plan_move(start[self.index], goal[self.index], self.vmax, self.amax)


class SortingExpert:
    """A state machine over the ground truth: idle -> approach -> wait -> close -> place -> release.

    ``perturb_px`` > 0 makes demonstrations of recovery: most approaches first end up to that far off the
    intercept (a random point around it), and the expert then corrects onto it before the parcel arrives.
    A policy cloned from perfect approaches only has never seen its arm beside a parcel's path, which is
    where its own small errors put it. ``aim`` says where across the belt to meet a moving parcel (AIMS):
    "lane" on its own lane; "centre-line" on the belt's centre line (the grasp radius covers every lane, and the
    waiting pose then does not depend on an offset that the cameras show as a few pixels); "near-half" on the
    centre line for the lanes nearer the arm than it, on their own lane for the others; "near-midway" halfway
    between the lane and the centre line for the near lanes, on their own lane for the others.
    """

    def __init__(self, config: RuntimeConfig, task: TaskConfig, perturb_px: float = 0.0, seed: int = 0,
                 stop_belt: bool = False, aim: str = "lane") -> None:
        if not (np.isfinite(perturb_px) and 0.0 <= perturb_px <= 100.0):
            raise ValueError(f"perturb_px {perturb_px}: must be in [0, 100] pixels of the head camera")
        self._arm = _Arm(config)
        self._task = task
        self._perturb_px = float(perturb_px)
        self._stop_belt = bool(stop_belt)
        if aim not in AIMS:
            raise ValueError(f"aim {aim!r}: use one of {', '.join(AIMS)}")
        self._aim = aim
        self._rng = np.random.default_rng(seed)
        self._correction_due = False  # the last approach went off the intercept: correct when it ends
        self._goal: np.ndarray | None = None  # where the last move ends (config order)
        self._busy_until = -np.inf
        self._state, self._since = "idle", 0.0
        self._closed_at: float | None = None  # when the gripper was first measured closed in "close"
        self._target: dict[str, Any] | None = None
        self._intercept = READY_POINT
        self._gripper = self._arm.open
        # From the command to an opening under `closed_below`: the finger's ramp at its limits, plus lag.
        v, a = self._arm.gripper_limits
        travel = (self._arm.open - self._arm.closed) * (1.0 - task.closed_below)
        self._close_s = (v / a + (travel - v * v / (2 * a)) / v if travel > v * v / (2 * a)
                         else 2 * np.sqrt(travel / a)) + 0.05

    @property
    def state(self) -> str:
        return self._state

    def _go(self, now_s: float, positions: np.ndarray, point: tuple[float, float]) -> ArmMove | None:
        goal = solve_chain(self._arm.chain, point, self._goal, self._arm.low, self._arm.high)
        if goal is None:
            return None
        move = self._arm.move(self._goal, goal)
        self._goal, self._busy_until = goal, now_s + TRAJECTORY_LEAD_S + move.duration_s
        return move

    def _set(self, state: str, now_s: float) -> None:
        self._state, self._since, self._closed_at = state, now_s, None
        self._correction_due = self._correction_due and state == "approach"

    def _arrived(self, now_s: float, snapshot: dict[str, Any]) -> bool:
        """The measured tip (in a snapshot taken after the move's planned end) is at the move's goal."""
        goal = self._arm.chain.tip(self._goal)
        fresh = float(snapshot["stamp_s"]) >= self._busy_until
        near = np.hypot(*np.subtract(snapshot["tip"], goal)) <= ARRIVAL_TOLERANCE_PX
        return (fresh and near) or now_s - self._busy_until > ARRIVAL_TIMEOUT_S

    def act(self, now_s: float, snapshot: dict[str, Any] | None, positions: np.ndarray) -> ExpertCommand:
        """One control tick: ``positions`` measured (config order), ``snapshot`` the newest ground truth."""
        if self._goal is None:
            self._goal = np.asarray(positions, dtype=np.float64).copy()
        if snapshot is None or snapshot["done"]:
            self._set("idle", now_s)
            self._gripper = self._arm.open
            return ExpertCommand(None, self._gripper, 0.0)
        move = None if now_s < self._busy_until else self._decide(now_s, snapshot, positions)
        stopped = self._stop_belt and self._state in GRASPING and self._stop_for(snapshot) is not None
        return ExpertCommand(move, self._gripper, 0.0 if stopped else self._task.belt_speed_m_s)

    def _stop_for(self, snapshot: dict[str, Any]) -> dict[str, Any] | None:
        """stop_belt: the most downstream parcel on the belt well inside the pick zone, if any."""
        inside = [p for p in snapshot["parcels"] if p["status"] == "belt"
                  and PICK_ZONE_X[0] + STOP_INSIDE_PX <= p["x"] <= PICK_ZONE_X[1]]
        return max(inside, key=lambda p: p["x"]) if inside else None

    def _parcel_x(self, now_s: float, snapshot: dict[str, Any], parcel: dict[str, Any]) -> float:
        speed_px = max(0.0, float(snapshot["belt_speed_m_s"])) * PIXELS_PER_METRE
        return float(parcel["x"]) + speed_px * (now_s - float(snapshot["stamp_s"]))

    def _decide(self, now_s: float, snapshot: dict[str, Any], positions: np.ndarray) -> ArmMove | None:
        parcels = {p["id"]: p for p in snapshot["parcels"]}
        speed_px = max(0.0, float(snapshot["belt_speed_m_s"])) * PIXELS_PER_METRE
        if self._state == "wait":
            target = parcels[self._target["id"]]
            x = self._parcel_x(now_s, snapshot, target)
            passed = x > self._intercept[0] + 0.5 * self._task.grasp_radius_m * PIXELS_PER_METRE
            if target["status"] != "belt" or passed:
                self._set("idle", now_s)  # gone, or passed the tip: try another
            elif x + speed_px * self._close_s >= self._intercept[0] and self._arrived(now_s, snapshot):
                self._gripper = self._arm.closed
                self._set("close", now_s)
            return None
        if self._state == "close":
            stamp = float(snapshot["stamp_s"])
            if snapshot["holding"] is not None and stamp > self._since:  # whichever parcel it caught
                self._target = parcels[snapshot["holding"]]
                self._set("place", now_s)
                return self._go(now_s, positions, bin_centre(snapshot["rule"][self._target["colour"]]))
            # Open again only on ground truth taken after the gripper was measured closed: a loaded
            # machine closes it late, and reopening on a parcel it is about to hold drops that parcel.
            if self._closed_at is None and self._arm.opening(positions) < self._task.closed_below:
                self._closed_at = now_s
            closed_and_empty = (self._closed_at is not None and stamp > self._closed_at + CLOSED_SETTLE_S
                                and now_s - self._since > CLOSE_TIMEOUT_S)
            if closed_and_empty or now_s - self._since > CLOSE_GIVE_UP_S:
                self._gripper = self._arm.open
                self._set("release", now_s)
            return None
        if self._state == "place":
            if not self._arrived(now_s, snapshot):
                return None
            self._gripper = self._arm.open
            self._set("release", now_s)
            return None
        if self._state == "release":
            released = snapshot["holding"] is None and float(snapshot["stamp_s"]) > self._since
            if not released and now_s - self._since < RELEASE_TIMEOUT_S:
                return None
            self._set("idle", now_s)
        if self._state == "approach":
            if self._correction_due:
                self._correction_due = False
                move = self._go(now_s, positions, self._intercept)
                if move is not None:
                    return move  # still approaching: "wait" once the correction has ended
            self._set("wait", now_s)
            return None
        return self._approach(now_s, snapshot, positions, speed_px)

    def _aim_y(self, parcel: dict[str, Any]) -> float:
        """Where across the belt to meet a moving parcel (y + toward the arm's base)."""
        lane = float(parcel["y"])
        near_share, far_share = AIM_TOWARD_CENTRE[self._aim]
        return lane + (near_share if lane > BELT_CENTRE_Y else far_share) * (BELT_CENTRE_Y - lane)

    def _off_intercept(self) -> tuple[float, float]:
        """A random point up to ``perturb_px`` from the intercept (uniform over the disc's outer 3/4)."""
        angle = self._rng.uniform(0.0, 2 * np.pi)
        radius = self._perturb_px * np.sqrt(self._rng.uniform(0.25, 1.0))
        return self._intercept[0] + radius * np.cos(angle), self._intercept[1] + radius * np.sin(angle)

    def _approach(self, now_s: float, snapshot: dict[str, Any], positions: np.ndarray,
                  speed_px: float) -> ArmMove | None:
        """Toward the most downstream parcel the arm can still meet in the pick zone, else the ready point."""
        if self._stop_belt:
            return self._approach_stopped(now_s, snapshot, positions)
        candidates = [p for p in snapshot["parcels"] if p["status"] in ("belt", "upcoming")]
        margin = WAIT_MARGIN_S + (CORRECTION_MARGIN_S if self._perturb_px > 0 else 0.0)
        for parcel in sorted(candidates, key=lambda p: -p["x"]):
            x_now = self._parcel_x(now_s, snapshot, parcel)
            x, duration = PICK_ZONE_X[0], 0.0
            for _ in range(3):  # the move's duration depends on where it goes
                x = max(PICK_ZONE_X[0], x_now + speed_px * (TRAJECTORY_LEAD_S + duration + margin))
                goal = solve_chain(self._arm.chain, (x, self._aim_y(parcel)), self._goal, self._arm.low, self._arm.high)
                if goal is None or x > PICK_ZONE_X[1]:
                    break
                duration = self._arm.move(self._goal, goal).duration_s
            else:
                return self._head_for(now_s, positions, parcel, (x, self._aim_y(parcel)))
        return self._ready(now_s, positions)

    def _head_for(self, now_s: float, positions: np.ndarray, parcel: dict[str, Any],
                  intercept: tuple[float, float]) -> ArmMove | None:
        """Start the approach to ``parcel`` at ``intercept``: straight there, or (perturbing) first beside it."""
        self._target, self._intercept = parcel, intercept
        perturbed = self._perturb_px > 0 and self._rng.random() < PERTURB_SHARE
        off = self._go(now_s, positions, self._off_intercept()) if perturbed else None
        move = off or self._go(now_s, positions, self._intercept)
        if move is not None:
            self._set("approach", now_s)
            self._correction_due = off is not None
        return move

    def _ready(self, now_s: float, positions: np.ndarray) -> ArmMove | None:
        if np.hypot(*np.subtract(self._arm.chain.tip(self._goal), READY_POINT)) > 2.0:
            return self._go(now_s, positions, READY_POINT)
        return None

    def _approach_stopped(self, now_s: float, snapshot: dict[str, Any], positions: np.ndarray) -> ArmMove | None:
        """stop_belt: once the belt has stopped for a parcel, to where that parcel lies (the wait that follows
        closes as soon as the arm is there)."""
        parcel = self._stop_for(snapshot)
        if parcel is None:
            return self._ready(now_s, positions)
        if abs(float(snapshot["belt_speed_m_s"])) > BELT_STILL_M_S:
            return None  # still braking: the parcel's resting place is not known yet
        return self._head_for(now_s, positions, parcel, (float(parcel["x"]), float(parcel["y"])))


class RandomAgent:
    """The random baseline: every 0.5-2 s a uniformly random arm pose, gripper state and belt speed."""

    def __init__(self, config: RuntimeConfig, seed: int) -> None:
        self._arm = _Arm(config)
        self._rng = np.random.default_rng(seed)
        belt = next(j for j in config.joints if j.state_field == "velocity")
        self._belt_max = belt.limits.max_position
        self._goal: np.ndarray | None = None
        self._next_s = -np.inf
        self._gripper, self._belt = self._arm.open, 0.0

    def act(self, now_s: float, snapshot: dict[str, Any] | None, positions: np.ndarray) -> ExpertCommand:
        del snapshot  # random: it looks at nothing
        if self._goal is None:
            self._goal = np.asarray(positions, dtype=np.float64).copy()
        if now_s < self._next_s:
            return ExpertCommand(None, self._gripper, self._belt)
        goal = self._goal.copy()
        low, high = self._arm.low[self._arm.index], self._arm.high[self._arm.index]
        goal[self._arm.index] = self._rng.uniform(low, high)
        move = self._arm.move(self._goal, goal)
        self._goal = goal
        self._gripper = self._arm.open if self._rng.random() < 0.5 else self._arm.closed
        self._belt = float(self._rng.uniform(0.0, self._belt_max))
        self._next_s = now_s + TRAJECTORY_LEAD_S + max(move.duration_s, float(self._rng.uniform(0.5, 2.0)))
        return ExpertCommand(move, self._gripper, self._belt)


class HomingAgent:
    """Back to ``home`` (config order, e.g. sim.cell.home_positions): the arm in one rest-to-rest move from
    where it is measured, the gripper to home's opening and the belt to home's speed (the streamer ramps both)."""

    def __init__(self, config: RuntimeConfig, home: np.ndarray) -> None:
        self._arm = _Arm(config)
        self._home = np.asarray(home, dtype=np.float64)
        self._belt = next(i for i, j in enumerate(config.joints) if j.state_field == "velocity")
        self.move: ArmMove | None = None

    def act(self, now_s: float, snapshot: dict[str, Any] | None, positions: np.ndarray) -> ExpertCommand:
        del now_s, snapshot  # the way home depends only on where the arm is
        first = self.move is None
        if first:
            self.move = self._arm.move(np.asarray(positions, dtype=np.float64), self._home)
        return ExpertCommand(self.move if first else None, float(self._home[self._arm.gripper_index]),
                             float(self._home[self._belt]))
