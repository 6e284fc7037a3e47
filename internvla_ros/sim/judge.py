"""The cell's judge: does the motion the controllers execute stay within the joint limits?

A robot feels the controller's output on its update loop, not the points it was sent. So every
joint_trajectory_controller is sampled on a uniform grid (like a ros2_control update loop) lagging a
fixed delay behind now, from the trajectories in their arrival order and at their arrival times; the
delay lets every message that arrived before a grid instant be known before that instant is judged, so
the sim's own scheduling jitter neither creates nor hides a jump (a trajectory handled even later
rewinds the judge to its arrival). On that grid the position, the
velocity (first finite difference) and the acceleration (second finite difference) are checked: a
position jump where one trajectory replaces another shows up as an acceleration and velocity spike,
as a real robot would feel it. Forward-command controllers apply each value at once, so their commands
are judged one after the other at the configured control period. Each excursion out of a limit is
counted and reported once, naming the controller, the joint, the value, the limit and the time.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from internvla_ros.runtime.config import JointLimits
from internvla_ros.sim.trajectory import JointTrajectoryExecutor

POSITION_TOLERANCE = 1e-6  # commands may sit on a limit; float noise above it is not a violation
VELOCITY_TOLERANCE = 1e-3  # relative
ACCELERATION_TOLERANCE = 1e-2  # relative: finite differences of a cubic are not its exact derivative
MESSAGE_BACKLOG = 1000  # messages kept until the node logs them


@dataclass(frozen=True)
class JudgeSettings:
    grid_hz: float = 200.0  # the simulated controller update rate
    delay_s: float = 0.25  # how far behind now the executed motion is judged
    late_threshold_s: float = 0.1  # a trajectory arriving later than this after its stamp is "late"

    def __post_init__(self) -> None:
        if not (self.grid_hz > 0 and self.delay_s >= 0 and self.late_threshold_s >= 0):
            raise ValueError(f"judge_rate_hz must be > 0 and judge_delay_s, late_threshold_s >= 0; got "
                             f"{self.grid_hz}, {self.delay_s}, {self.late_threshold_s}")


class ViolationLog:
    """Counts excursions out of the limits (once per excursion, not per sample) and keeps their messages."""

    def __init__(self) -> None:
        self.limit_violations = 0  # position and velocity (and a forward command's step or jump)
        self.acceleration_violations = 0
        self.messages: deque[str] = deque(maxlen=MESSAGE_BACKLOG)
        self._outside: dict[tuple[str, str], np.ndarray] = {}  # (controller, kind) -> joints out of the limit

    def check(self, controller: str, joints: Sequence[str], kind: str, values: np.ndarray, bad: np.ndarray,
              limit: Callable[[int], str], t_ns: int) -> None:
        """Records the joints whose `bad` flag just went up; limit(k) describes joint k's limit."""
        outside = self._outside.setdefault((controller, kind), np.zeros(len(joints), dtype=bool))
        new = bad & ~outside
        outside[:] = bad
        for k in np.flatnonzero(new):
            if kind == "acceleration":
                self.acceleration_violations += 1
            else:
                self.limit_violations += 1
            self.messages.append(
                f"{controller}: {joints[k]} {kind} {values[k]:.6g} {limit(k)} at t={t_ns * 1e-9:.3f} s")

    def drain(self) -> list[str]:
        messages = list(self.messages)
        self.messages.clear()
        return messages


class MotionStats:
    """How smooth the executed arm motion is, on the judge's grid: the largest acceleration as a share of the
    joint's limit (a chunk hand-over that jumps shows up as a spike, clipped at 1 by a correct runtime) and
    the mean absolute jerk (third difference), over every joint of every trajectory controller."""

    def __init__(self) -> None:
        self._epoch = 0  # counts resets: a sample judged before one is no longer in the sums
        self.reset()

    def reset(self) -> None:
        self.max_acceleration_ratio = 0.0
        self._jerk_sum = 0.0
        self._jerk_count = 0
        self._epoch += 1

    def add_acceleration(self, acceleration: np.ndarray, limit: np.ndarray) -> None:
        self.max_acceleration_ratio = max(self.max_acceleration_ratio, float(np.max(np.abs(acceleration) / limit)))

    def add_jerk(self, jerk: np.ndarray) -> tuple[float, int, int]:
        """Adds a sample's jerk; returns what it added, for ``remove_jerk`` when the sample is judged again."""
        added = float(np.sum(np.abs(jerk))), int(jerk.size), self._epoch
        self._jerk_sum += added[0]
        self._jerk_count += added[1]
        return added

    def remove_jerk(self, added: tuple[float, int, int]) -> None:
        """Takes back a sample's jerk (the judge rewound past it and judges it again), unless a reset since
        has already dropped it."""
        if added[2] == self._epoch:
            self._jerk_sum -= added[0]
            self._jerk_count -= added[1]

    def summary(self) -> dict[str, float | None]:
        """``max_acceleration_ratio`` and ``mean_abs_jerk`` (rad/s^3); None before any motion was judged."""
        if self._jerk_count == 0:
            return {"max_acceleration_ratio": None, "mean_abs_jerk": None}
        return {"max_acceleration_ratio": round(self.max_acceleration_ratio, 4),
                "mean_abs_jerk": round(self._jerk_sum / self._jerk_count, 4)}


class _Limits:
    def __init__(self, joints: Sequence[str], limits: Sequence[JointLimits]) -> None:
        self.joints = tuple(joints)
        self.low = np.array([lim.min_position for lim in limits])
        self.high = np.array([lim.max_position for lim in limits])
        self.velocity = np.array([lim.max_velocity for lim in limits])
        self.acceleration = np.array([lim.max_acceleration for lim in limits])
        self.jump = np.array([lim.max_jump for lim in limits])

    def check_position(self, log: ViolationLog, controller: str, values: np.ndarray, t_ns: int) -> None:
        bad = (values < self.low - POSITION_TOLERANCE) | (values > self.high + POSITION_TOLERANCE)
        log.check(controller, self.joints, "position", values, bad,
                  lambda k: f"outside [{self.low[k]}, {self.high[k]}]", t_ns)


class TrajectoryJudge:
    """Samples one joint_trajectory_controller on the uniform grid and checks each new sample."""

    def __init__(self, controller: str, executor: JointTrajectoryExecutor, limits: Sequence[JointLimits],
                 settings: JudgeSettings, log: ViolationLog, motion: MotionStats | None = None) -> None:
        self.controller = controller
        self.motion = motion if motion is not None else MotionStats()
        self._executor = executor
        self._limits = _Limits(executor.joints, limits)
        self._period_ns = round(1e9 / settings.grid_hz)
        self._delay_ns = round(settings.delay_s * 1e9)
        self._log = log
        self._next_ns: int | None = None
        self._previous: deque[np.ndarray] = deque(maxlen=3)
        # Judged samples of the last few delays (time, positions, the jerk each added): a trajectory handled
        # after the grid passed its arrival rewinds the judge to its arrival, so the verdict follows what the
        # controller executed, and the jerk of the samples judged again is counted once.
        kept = max(4 * round(settings.delay_s * settings.grid_hz), 8)
        self._judged: deque[tuple[int, np.ndarray, tuple[float, int, int]]] = deque(maxlen=kept)
        self.late_submissions = 0  # trajectories handled after the grid had passed their arrival

    @property
    def judged_until_ns(self) -> int | None:
        return None if self._next_ns is None else self._next_ns - self._period_ns

    def note_submission(self, activation_ns: int) -> None:
        """A trajectory active from activation_ns: re-judge from there if the grid has passed it."""
        judged = self.judged_until_ns
        if judged is None or activation_ns > judged:
            return
        self.late_submissions += 1
        while self._judged and self._judged[-1][0] >= activation_ns:
            self.motion.remove_jerk(self._judged.pop()[2])
        self._previous.clear()
        self._previous.extend(positions for _, positions, _ in list(self._judged)[-3:])
        self._next_ns = self._judged[-1][0] + self._period_ns if self._judged else self._next_ns

    def advance(self, now_ns: int) -> None:
        """Judges every grid instant up to now_ns - delay."""
        until = now_ns - self._delay_ns
        if self._next_ns is None:
            self._next_ns = -(-until // self._period_ns) * self._period_ns  # first grid instant >= until
        period_s = self._period_ns * 1e-9
        lim = self._limits
        while self._next_ns <= until:
            t = self._next_ns
            positions = self._executor.sample(t)[0]
            lim.check_position(self._log, self.controller, positions, t)
            if self._previous:
                velocity = (positions - self._previous[-1]) / period_s
                self._log.check(self.controller, lim.joints, "velocity", velocity,
                                np.abs(velocity) > lim.velocity * (1 + VELOCITY_TOLERANCE),
                                lambda k: f"above {lim.velocity[k]}", t)
            if len(self._previous) >= 2:
                acceleration = (positions - 2.0 * self._previous[-1] + self._previous[-2]) / period_s**2
                self._log.check(self.controller, lim.joints, "acceleration", acceleration,
                                np.abs(acceleration) > lim.acceleration * (1 + ACCELERATION_TOLERANCE),
                                lambda k: f"above {lim.acceleration[k]}", t)
                self.motion.add_acceleration(acceleration, lim.acceleration)
            added = 0.0, 0, -1
            if len(self._previous) == 3:
                p1, p2, p3 = self._previous[-1], self._previous[-2], self._previous[-3]
                added = self.motion.add_jerk((positions - 3.0 * p1 + 3.0 * p2 - p3) / period_s**3)
            self._previous.append(positions)
            self._judged.append((t, positions, added))
            self._next_ns += self._period_ns


class ForwardCommandJudge:
    """One forward_command_controller: each command against the previous ones, at the control period.

    For a velocity-commanded joint (a conveyor belt) the value is the belt speed: its max_velocity is
    the speed's rate limit and its max_acceleration the jerk, so the same rules apply."""

    def __init__(self, controller: str, joints: Sequence[str], limits: Sequence[JointLimits],
                 initial: np.ndarray, control_period_s: float, log: ViolationLog) -> None:
        self.controller = controller
        self._limits = _Limits(joints, limits)
        self._period_s = control_period_s
        self._log = log
        start = np.asarray(initial, dtype=np.float64).copy()
        self._previous: deque[np.ndarray] = deque([start, start], maxlen=2)  # at rest before the first
        self._known = 2  # how many of the previous two commands follow without a gap

    def skip(self, values: np.ndarray, t_ns: int) -> None:
        """A command after commands lost in transit: only its position can be judged; it restarts the
        step history (steps across the gap were never seen by this controller either)."""
        self._limits.check_position(self._log, self.controller, values, t_ns)
        self._previous.append(np.asarray(values, dtype=np.float64).copy())
        self._known = 0  # commands seen since the gap: steps need 1, second differences 2

    def judge(self, values: np.ndarray, t_ns: int) -> None:
        lim, log, controller = self._limits, self._log, self.controller
        lim.check_position(log, controller, values, t_ns)
        step = values - self._previous[-1]
        max_step = lim.velocity * self._period_s
        judge_step, judge_second = self._known >= 1, self._known >= 2
        log.check(controller, lim.joints, "step", step,
                  judge_step & (np.abs(step) > max_step * (1 + VELOCITY_TOLERANCE)),
                  lambda k: f"above max_velocity * period = {max_step[k]:.6g}", t_ns)
        log.check(controller, lim.joints, "jump", step,
                  judge_step & (np.abs(step) > lim.jump * (1 + VELOCITY_TOLERANCE)),
                  lambda k: f"above max_jump {lim.jump[k]}", t_ns)
        second = values - 2.0 * self._previous[-1] + self._previous[-2]
        max_second = lim.acceleration * self._period_s**2
        log.check(controller, lim.joints, "acceleration", second / self._period_s**2,
                  judge_second & (np.abs(second) > max_second * (1 + ACCELERATION_TOLERANCE)),
                  lambda k: f"above {lim.acceleration[k]} (second difference {second[k]:.3g} per period^2)", t_ns)
        self._previous.append(np.asarray(values, dtype=np.float64).copy())
        self._known = min(self._known + 1, 2)
