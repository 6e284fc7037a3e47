"""What the runtime sends to joint_trajectory controllers, and its model of what they execute.

Every trajectory is C1 and piecewise quadratic: points carry the exact positions and velocities of a motion
whose acceleration is constant between consecutive points, so the controller's cubic Hermite through them
reproduces it exactly (no overshoot between points, acceleration within the limits).

A new trajectory starts at its stamp with the state of the running one and repeats it for a lead time
(``safety.trajectory_lead_s``) before it changes course. The controller switches to the new trajectory when it
arrives; any arrival within the lead joins the running motion exactly, so a trajectory delayed by a loaded
machine causes no jump. The first trajectory after a (re)start has its first point at the lead's end, at rest
where the joints were measured: the controller, holding its own desired state a tracking error away, moves
there smoothly (rest to rest over what is left of the lead) instead of jumping; a trajectory sent before that
point (a stop right after a start) starts there too. Every trajectory ends at rest (Jazzy's controller rejects
anything else).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from internvla_ros.runtime.config import NS_PER_S
from internvla_ros.runtime.safety import MotionLimiter, MotionState
from internvla_ros.runtime.stop import StopProfile

# Knots closer than this are merged: a segment of a few nanoseconds turns float rounding of the positions
# into huge accelerations of the controller's cubic, while moving a knot by 1 us changes the motion by ~1e-12.
MIN_KNOT_GAP_NS = 1_000


def hermite(p0: np.ndarray, v0: np.ndarray, p1: np.ndarray, v1: np.ndarray, duration_s: float,
            t_s: float) -> tuple[np.ndarray, np.ndarray]:
    """Cubic Hermite position and velocity at ``t_s`` into a segment (exact for the runtime's quadratics)."""
    s = t_s / duration_s
    h00, h10, h01, h11 = 2 * s**3 - 3 * s**2 + 1, s**3 - 2 * s**2 + s, -2 * s**3 + 3 * s**2, s**3 - s**2
    position = h00 * p0 + h10 * duration_s * v0 + h01 * p1 + h11 * duration_s * v1
    d00, d10, d01, d11 = 6 * s**2 - 6 * s, 3 * s**2 - 4 * s + 1, -6 * s**2 + 6 * s, 3 * s**2 - 2 * s
    velocity = (d00 * p0 + d01 * p1) / duration_s + d10 * v0 + d11 * v1
    return position, velocity


@dataclass(frozen=True)
class TimedPath:
    """A trajectory as absolute knots (K,) with positions and velocities (K, D); at rest after the last."""

    stamps_ns: np.ndarray
    positions: np.ndarray
    velocities: np.ndarray

    @property
    def end_ns(self) -> int:
        return int(self.stamps_ns[-1])

    def sample(self, now_ns: int) -> tuple[np.ndarray, np.ndarray]:
        if now_ns <= self.stamps_ns[0]:
            return self.positions[0].copy(), self.velocities[0].copy()
        if now_ns >= self.stamps_ns[-1]:
            return self.positions[-1].copy(), np.zeros_like(self.positions[-1])
        k = int(np.searchsorted(self.stamps_ns, now_ns, side="right")) - 1
        duration_s = (self.stamps_ns[k + 1] - self.stamps_ns[k]) / NS_PER_S
        elapsed_s = (now_ns - self.stamps_ns[k]) / NS_PER_S
        return hermite(self.positions[k], self.velocities[k], self.positions[k + 1], self.velocities[k + 1],
                       duration_s, elapsed_s)

    def shifted(self, offset_ns: int) -> TimedPath:
        return TimedPath(self.stamps_ns + offset_ns, self.positions, self.velocities)


def merge_knots(required: list[int], optional: list[int]) -> list[int]:
    """Sorted knots at least MIN_KNOT_GAP_NS apart: ``required`` ones (where the motion changes its
    acceleration) are kept in preference to ``optional`` ones (the control grid) near them."""
    kept: list[int] = []
    for knot in sorted(set(required)):
        if not kept or knot - kept[-1] >= MIN_KNOT_GAP_NS:
            kept.append(knot)
    anchors = np.asarray(kept, dtype=np.int64)
    for knot in optional:
        index = int(np.searchsorted(anchors, knot))
        near = [anchors[i] for i in (index - 1, index) if 0 <= i < anchors.size]
        if all(abs(knot - other) >= MIN_KNOT_GAP_NS for other in near):
            kept.append(knot)
            anchors = np.sort(np.append(anchors, knot))
    return sorted(kept)


def _from_samples(knots: list[int], sample: Callable[[int], tuple[np.ndarray, np.ndarray]]) -> TimedPath:
    """The path through ``sample`` at ``knots``; it ends with a stop, so its last point is at rest (a knot
    merged into its neighbour may leave a velocity of a few nanometres per second there)."""
    states = [sample(t) for t in knots]
    velocities = np.asarray([v for _, v in states])
    velocities[-1] = 0.0
    return TimedPath(np.asarray(knots, dtype=np.int64), np.asarray([p for p, _ in states]), velocities)


class TrajectoryBuilder:
    """Builds the trajectories of the joint_trajectory controllers from the running path and a target."""

    def __init__(self, limiter: MotionLimiter, stop_targets: np.ndarray, period_ns: int, lead_ns: int,
                 columns: np.ndarray) -> None:
        self._limiter = limiter
        self._columns = columns  # the trajectory joints: a stop's trajectory ends when they are at rest
        self._stop_targets = stop_targets  # NaN: brake where it is; a value: reach it at rest (speed joints)
        self._period_ns = period_ns
        self._lead_ns = max(0, lead_ns)

    def stop_profile(self, state: MotionState, start_ns: int) -> StopProfile:
        return StopProfile.plan(start_ns, state.positions, state.velocities, self._stop_targets,
                                self._limiter.max_velocity, self._limiter.max_acceleration)

    def _lead(self, running: TimedPath | None, rest: MotionState, now_ns: int
              ) -> tuple[list[int], Callable[[int], tuple[np.ndarray, np.ndarray]], MotionState]:
        """The knots and sampler of the running motion over [now, now + lead], and the state at its end."""
        end_ns = now_ns + self._lead_ns
        if running is None:  # nothing sent since the (re)start: the controllers hold near the measured joints
            def sample(t: int) -> tuple[np.ndarray, np.ndarray]:
                return rest.positions.copy(), np.zeros_like(rest.positions)
            # No point at now: the controller holds its own desired state, a tracking error away from the
            # measurement, and a point already passed on arrival would make it jump there. With the first point
            # at the lead's end it blends from where it is, at rest, over what is left of the lead.
            knots = [end_ns]
        else:
            # Not before the running trajectory's first point: what the controller does until then (a first
            # trajectory's blend from its hold) is its own, and a point there would make it jump.
            sample, start_ns = running.sample, max(now_ns, int(running.stamps_ns[0]))
            knots = [start_ns, end_ns, *(int(t) for t in running.stamps_ns if start_ns < t < end_ns)]
        positions, velocities = sample(end_ns)
        return knots, sample, MotionState(positions, velocities, end_ns)

    def plan(self, running: TimedPath | None, rest: MotionState, now_ns: int, end_ns: int,
             target: Callable[[int], np.ndarray]) -> TimedPath:
        """Repeat the running motion for the lead, then follow ``target`` (limited, one control period per
        point) until ``end_ns``, then stop."""
        knots, lead_sample, state = self._lead(running, rest, now_ns)
        start_ns = state.stamp_ns
        count = max(0, (end_ns - start_ns) // self._period_ns)
        stamps = [start_ns + k * self._period_ns for k in range(1, count + 1)]
        limited = self._limiter.limit_path(state, stamps, np.asarray([target(t) for t in stamps])) if stamps else []
        last = limited[-1] if limited else state
        stop = self.stop_profile(last, last.stamp_ns)
        by_stamp = {s.stamp_ns: (s.positions, s.velocities) for s in limited}

        def sample(t: int) -> tuple[np.ndarray, np.ndarray]:
            if t <= start_ns:
                return lead_sample(t)
            if t in by_stamp:
                return by_stamp[t][0].copy(), by_stamp[t][1].copy()
            return stop.sample(t)

        return _from_samples(merge_knots([*knots, *stamps, *stop.knots_ns()], []), sample)

    def stop(self, running: TimedPath | None, rest: MotionState, now_ns: int) -> TimedPath:
        """Repeat the running motion for the lead, then the controlled stop, then rest. It ends as soon as the
        trajectory joints are at rest (not when a forward joint is): a controller that receives it only after its
        end refuses it rather than joining it late, far from where the arm is (see resume_guard.py)."""
        knots, lead_sample, state = self._lead(running, rest, now_ns)
        stop = self.stop_profile(state, state.stamp_ns)

        def sample(t: int) -> tuple[np.ndarray, np.ndarray]:
            return lead_sample(t) if t <= state.stamp_ns else stop.sample(t)

        return _from_samples(merge_knots([*knots, *stop.knots_ns(self._columns)], []), sample)
