"""Safety applied to every command the runtime emits, in every mode.

- ``MotionLimiter``: non-finite rejection, position, velocity, acceleration and max-jump limits per joint,
  relative to the previous command one control period before; also used point by point on trajectories.
- ``InputWatchdog``: no fresh camera frame or joint state within its configured age -> hold.
- ``SafetyGate``: pause/resume, a latching e-stop (until reset) and dry-run.
- ``EventCounters``: every clamp, reject and stale event by reason; the status reports them all.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from internvla_ros.runtime.config import NS_PER_S, RuntimeConfig

CLAMP_POSITION = "position"
CLAMP_VELOCITY = "velocity"
CLAMP_ACCELERATION = "acceleration"
CLAMP_JUMP = "jump"
REJECT_NON_FINITE = "non_finite"
REJECT_TIME = "non_increasing_time"
STALE_JOINT_STATE = "joint_state"
STALE_CAMERA_PREFIX = "camera:"

POSITION_NOISE = 1e-9  # braking exactly onto a limit may overshoot it by float rounding: clipped, not counted

# Categories of EventCounters.
CLAMPED = "clamped"
CLAMPED_TRAJECTORY = "clamped_trajectory"
REJECTED = "rejected"
STALE = "stale"


class EventCounters:
    """Counts of events by category and reason; never reset behind the user's back."""

    def __init__(self) -> None:
        self._counts: dict[str, Counter[str]] = {}

    def add(self, category: str, reason: str, count: int = 1) -> None:
        self._counts.setdefault(category, Counter())[reason] += count

    def get(self, category: str, reason: str) -> int:
        return self._counts.get(category, Counter())[reason]

    def total(self, category: str) -> int:
        return sum(self._counts.get(category, Counter()).values())

    def snapshot(self, category: str) -> dict[str, int]:
        return dict(sorted(self._counts.get(category, Counter()).items()))


@dataclass(frozen=True)
class MotionState:
    """The last emitted command: positions and velocities (config order) at ``stamp_ns``."""

    positions: np.ndarray
    velocities: np.ndarray
    stamp_ns: int


@dataclass(frozen=True)
class LimitedCommand:
    state: MotionState
    reasons: frozenset[str]  # what was clamped or rejected for this command


def _clip(x: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """``np.clip`` (the same values) without its Python dispatch, which a trajectory pays hundreds of times."""
    return np.minimum(np.maximum(x, low), high)


class MotionLimiter:
    """Per-joint limits between consecutive commands, one control period apart.

    The commanded motion is a double integrator: each period has one constant acceleration within
    max_acceleration, so the commanded path is C1 and piecewise quadratic (a joint_trajectory_controller's cubic
    through its points reproduces it exactly), velocities stay within min(max_velocity, max_jump / period), and
    every emitted state can brake to rest at max_acceleration inside the position limits (a margin of half a
    period's travel is kept, so also a segment that reverses inside a period stays inside). Steps are counted in
    control periods, not in the time between calls: a late tick moves the robot no further than an on-time one.

    A target is approached no faster than the joint can brake onto it (relative to the target's own velocity,
    when the caller knows it): an acceleration-limited approach that only chases the target would overshoot and,
    with a target at rest, oscillate around it forever at max_acceleration.
    """

    def __init__(self, config: RuntimeConfig, counters: EventCounters) -> None:
        limits = [j.limits for j in config.joints]
        self._period_s = config.rates.control_period_ns / NS_PER_S
        self._low = np.asarray([lim.min_position for lim in limits])
        self._high = np.asarray([lim.max_position for lim in limits])
        self._jump = np.asarray([lim.max_jump for lim in limits])
        self._vmax = np.minimum(np.asarray([lim.max_velocity for lim in limits]), self._jump / self._period_s)
        self._amax = np.asarray([lim.max_acceleration for lim in limits])
        self._counters = counters
        # Constants of every step, computed once as the step's own expressions would (same values to the bit):
        # limit_path runs the step for each point of every chunk, and numpy's per-call cost dominates it.
        a, t = self._amax, self._period_s
        self._neg_vmax = -self._vmax
        self._brake_offset = -a * t
        self._brake_square = a * a * t * t
        self._brake_slope = 2 * a
        self._dv = a * t

    @property
    def period_s(self) -> float:
        return self._period_s

    @property
    def low(self) -> np.ndarray:
        return self._low

    @property
    def high(self) -> np.ndarray:
        return self._high

    @property
    def max_velocity(self) -> np.ndarray:
        """The effective velocity limit: max_velocity, or max_jump per control period when smaller."""
        return self._vmax

    @property
    def max_acceleration(self) -> np.ndarray:
        return self._amax

    @property
    def max_jump(self) -> np.ndarray:
        return self._jump

    def outside_limits(self, positions: np.ndarray, tolerance: float) -> list[str]:
        """Joints measured outside [min, max] by more than ``tolerance``: 'index: value vs [min, max]'."""
        out = np.flatnonzero((positions < self._low - tolerance) | (positions > self._high + tolerance))
        return [f"{i}: {positions[i]:.6f} outside [{self._low[i]}, {self._high[i]}]" for i in out]

    def initial_state(self, positions: np.ndarray, stamp_ns: int) -> MotionState:
        """The measured joint positions (already checked to be inside the limits), at rest."""
        start = np.clip(np.asarray(positions, dtype=np.float64), self._low, self._high)
        return MotionState(start, np.zeros_like(start), stamp_ns)

    def _brake_speed(self, room: np.ndarray) -> np.ndarray:
        """The largest end-of-period speed from which the joint still stops within ``room`` (measured from the
        start of the period, less its travel at the old velocity): v'^2 / 2a + v' t <= room."""
        return self._brake_offset + np.sqrt(np.maximum(self._brake_square + self._brake_slope * room, 0.0))

    def _velocity_bounds(self, previous: MotionState) -> tuple[np.ndarray, np.ndarray]:
        """The next period's end velocity range that keeps every limit reachable, acceleration aside."""
        t = self._period_s
        p, v = previous.positions, previous.velocities
        half = v * t / 2
        up = self._brake_speed(self._high - p - half)
        down = self._brake_speed(p - self._low + half)
        return np.maximum(self._neg_vmax, -down), np.minimum(self._vmax, up)

    def _approach(self, previous: MotionState, target: np.ndarray, target_velocity: np.ndarray) -> np.ndarray:
        """The end-of-period velocity towards ``target``: the one that would be on target after one period at
        constant velocity (averaged with the current one, the error halves each period), but no faster, relative
        to the target's velocity, than what can still stop on the target's path without overshooting it."""
        t = self._period_s
        p, v = previous.positions, previous.velocities
        u = _clip(target_velocity, self._neg_vmax, self._vmax)
        ahead = target - u * t - p  # how far the target's path was ahead of the joint at the previous command
        relative = ahead / t
        half = (v - u) * t / 2
        up = np.maximum(self._brake_speed(ahead - half), 0.0)  # too fast already: stop (as fast as allowed)
        down = np.maximum(self._brake_speed(-ahead + half), 0.0)
        return u + np.where(ahead > 0, np.minimum(relative, up), np.maximum(relative, -down))

    def limit(
        self, previous: MotionState, target: np.ndarray, stamp_ns: int, category: str = CLAMPED,
        target_velocity: np.ndarray | None = None,
    ) -> LimitedCommand:
        """The command one period on that gets closest to ``target`` within every limit; a non-finite or
        misshapen target brakes (never a step to a stop). ``target_velocity``: how fast the target moves (a
        sampled path's), so that it is followed without lag; None for a target at rest."""
        target = np.asarray(target, dtype=np.float64)
        reasons: set[str] = set()
        if stamp_ns <= previous.stamp_ns:
            self._counters.add(REJECTED, REJECT_TIME)
            return LimitedCommand(previous, frozenset({REJECT_TIME}))
        p, v, t = previous.positions, previous.velocities, self._period_s
        if target.shape != p.shape or not np.isfinite(target).all():
            reasons.add(REJECT_NON_FINITE)
            self._counters.add(REJECTED, REJECT_NON_FINITE)
            wanted = np.zeros_like(v)
        else:
            clipped = _clip(target, self._low, self._high)
            if (clipped != target).any():
                reasons.add(CLAMP_POSITION)
            moving = np.zeros_like(v) if target_velocity is None else np.asarray(target_velocity, dtype=np.float64)
            if moving.shape != p.shape or not np.isfinite(moving).all():
                moving = np.zeros_like(v)
            wanted = self._approach(previous, clipped, moving)
        low, high = self._velocity_bounds(previous)
        bounded = _clip(wanted, low, high)
        if (bounded != wanted).any():
            reasons.add(CLAMP_VELOCITY)
        velocities = _clip(bounded, v - self._dv, v + self._dv)
        if (velocities != bounded).any():
            reasons.add(CLAMP_ACCELERATION)
        positions = p + (v + velocities) * t / 2
        final = _clip(positions, self._low, self._high)
        if np.abs(final - positions).max() > POSITION_NOISE:  # only from a state that could not brake in time
            reasons.add(CLAMP_POSITION)
        for reason in reasons - {REJECT_NON_FINITE}:
            self._counters.add(category, reason)
        return LimitedCommand(MotionState(final, velocities, stamp_ns), frozenset(reasons))

    def limit_path(self, previous: MotionState, stamps_ns: Sequence[int], targets: np.ndarray) -> list[MotionState]:
        """Limits a path point by point, one period apart, starting from ``previous`` (not committed anywhere);
        the path's own velocity (its points' differences) is followed, and its end is approached at rest."""
        targets = np.asarray(targets, dtype=np.float64)
        velocities = np.zeros_like(targets)
        if len(targets) > 1:
            velocities[1:] = np.diff(targets, axis=0) / self._period_s
            velocities[0] = velocities[1]
            velocities[-1] = 0.0
        states = []
        state = previous
        for stamp, target, velocity in zip(stamps_ns, targets, velocities, strict=True):
            state = self.limit(state, target, stamp, CLAMPED_TRAJECTORY, velocity).state
            states.append(state)
        return states


class InputWatchdog:
    """Tracks the newest stamp of each input; any input older than its max age makes the runtime hold."""

    def __init__(self, config: RuntimeConfig) -> None:
        self._max_age_ns: dict[str, int] = {STALE_JOINT_STATE: config.safety.joint_state_max_age_ns}
        for camera in config.cameras:
            self._max_age_ns[STALE_CAMERA_PREFIX + camera.name] = config.safety.camera_max_age_ns
        self._latest_ns: dict[str, int] = {}

    def update(self, source: str, stamp_ns: int) -> None:
        if source not in self._max_age_ns:
            msg = f"unknown input {source!r}; known {sorted(self._max_age_ns)}"
            raise KeyError(msg)
        self._latest_ns[source] = max(stamp_ns, self._latest_ns.get(source, stamp_ns))

    def describe(self, sources: tuple[str, ...], now_ns: int) -> str:
        """Each source's age against its limit, for the log and the status."""
        parts = []
        for source in sources:
            limit_s = self._max_age_ns[source] / NS_PER_S
            latest = self._latest_ns.get(source)
            age = "never received" if latest is None else f"{(now_ns - latest) / NS_PER_S:.3f} s old"
            parts.append(f"{source} {age} (limit {limit_s:.3f} s)")
        return ", ".join(parts)

    def stale(self, now_ns: int) -> tuple[str, ...]:
        """Inputs never seen, or last seen longer ago than their max age (sorted, for stable reports)."""
        return tuple(
            sorted(
                source
                for source, max_age in self._max_age_ns.items()
                if source not in self._latest_ns or now_ns - self._latest_ns[source] > max_age
            )
        )



class SafetyGate:
    """Operator-level switches: pause/resume, a latching e-stop, and dry-run (compute, never command)."""

    def __init__(self, dry_run: bool) -> None:
        self.dry_run = dry_run
        self._paused = False
        self._estop_reason: str | None = None

    @property
    def paused(self) -> bool:
        return self._paused

    @property
    def estopped(self) -> bool:
        return self._estop_reason is not None

    @property
    def estop_reason(self) -> str | None:
        return self._estop_reason

    def pause(self) -> None:
        self._paused = True

    def resume(self) -> None:
        self._paused = False

    def estop(self, reason: str) -> None:
        """Latches: stays engaged through resume() until reset_estop()."""
        if self._estop_reason is None:
            self._estop_reason = reason

    def reset_estop(self) -> None:
        self._estop_reason = None
