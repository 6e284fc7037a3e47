"""The controlled stop: one plan for every cause (pause, e-stop, stale input, inference failure, worker restart,
deactivate, shutdown, dry-run on, thread failure).

From the commanded position and velocity of each joint, the stop is a sequence of constant-acceleration phases
(IEC 60204-1 stop category 2: a controlled stop with power kept on, then a hold):
- a position-commanded joint brakes at its max_acceleration until it is at rest, then holds where it stopped;
- a velocity-commanded joint (a conveyor, whose "position" is its speed) is driven to speed 0 (clipped into its
  limits) time-optimally, its rate of change within max_velocity and that rate's change within max_acceleration.

Every phase is a quadratic in time, so a joint_trajectory_controller's cubic through points placed at the phase
boundaries (``knots``) with the exact velocities reproduces the profile exactly, and samples of it on any grid
have first and second differences within the limits. Braking never leaves the position limits as long as the
start state can brake within them, which the motion limiter guarantees for every command it emits.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from internvla_ros.runtime.config import NS_PER_S

Phase = tuple[float, float]  # (duration in s, constant acceleration)
AT_TARGET = 1e-9  # a speed joint at rest this close to its stop value stays there (no nanometre phases)


def _rest_to_target(distance: float, speed: float, max_velocity: float, max_acceleration: float) -> list[Phase]:
    """Time-optimal phases that cover ``distance`` >= 0 and end at rest, starting at ``speed`` in [0, vmax]
    towards the target, when braking from ``speed`` does not overshoot (``speed**2 / 2a <= distance``)."""
    a = max_acceleration
    peak = np.sqrt(max(0.0, (2.0 * a * distance + speed * speed) / 2.0))
    if peak <= max_velocity:
        return [((peak - speed) / a, a), (peak / a, -a)]
    accelerate = (max_velocity - speed) / a
    cruise = (distance - (max_velocity**2 - speed**2) / (2.0 * a) - max_velocity**2 / (2.0 * a)) / max_velocity
    return [(accelerate, a), (max(cruise, 0.0), 0.0), (max_velocity / a, -a)]


def stop_phases(position: float, velocity: float, target: float | None, max_velocity: float,
                max_acceleration: float) -> list[Phase]:
    """One joint's stop: brake to rest (``target`` None) or reach ``target`` at rest; zero-length phases dropped."""
    a = max_acceleration
    phases: list[Phase] = []
    if target is None:
        if velocity != 0.0:
            phases.append((abs(velocity) / a, -np.sign(velocity) * a))
        return phases
    distance = target - position
    if abs(distance) <= AT_TARGET and velocity == 0.0:
        return phases
    direction = np.sign(distance) if distance != 0.0 else -np.sign(velocity)
    if direction == 0.0:
        return phases
    toward = direction * velocity
    if toward < 0.0 or toward * toward / (2.0 * a) > direction * distance:
        # Moving away, or too fast to stop at the target: brake to rest first, then go to the target.
        phases.append((abs(velocity) / a, -np.sign(velocity) * a))
        position += velocity * abs(velocity) / (2.0 * a)
        return phases + stop_phases(position, 0.0, target, max_velocity, a)
    toward = min(toward, max_velocity)
    phases += [(duration, direction * accel)
               for duration, accel in _rest_to_target(direction * distance, toward, max_velocity, a)]
    return [(duration, accel) for duration, accel in phases if duration > 0.0]


@dataclass(frozen=True)
class StopProfile:
    """Per-joint constant-acceleration phases from ``start_ns``; rest (and hold) after the last phase."""

    start_ns: int
    positions: np.ndarray  # (D,) at start
    velocities: np.ndarray  # (D,) at start
    phases: tuple[tuple[Phase, ...], ...]  # per joint

    @classmethod
    def plan(cls, start_ns: int, positions: np.ndarray, velocities: np.ndarray, targets: np.ndarray,
             max_velocity: np.ndarray, max_acceleration: np.ndarray) -> StopProfile:
        """``targets``: NaN for a joint that brakes where it is, else the value to reach at rest."""
        phases = tuple(
            tuple(stop_phases(float(p), float(v), None if np.isnan(t) else float(t), float(vm), float(a)))
            for p, v, t, vm, a in zip(positions, velocities, targets, max_velocity, max_acceleration, strict=True))
        return cls(start_ns, np.asarray(positions, dtype=np.float64).copy(),
                   np.asarray(velocities, dtype=np.float64).copy(), phases)

    @property
    def rest_ns(self) -> int:
        """When the last joint comes to rest (rounded up to the nanosecond)."""
        longest = max((sum(d for d, _ in joint) for joint in self.phases), default=0.0)
        return self.start_ns + int(np.ceil(longest * NS_PER_S))

    def knots_ns(self, columns: np.ndarray | None = None) -> list[int]:
        """Every phase boundary of every joint (or of the joints in ``columns``), absolute and sorted: trajectory
        points go there."""
        knots = set()
        for joint in self.phases if columns is None else (self.phases[int(c)] for c in columns):
            elapsed = 0.0
            for duration, _ in joint:
                elapsed += duration
                knots.add(self.start_ns + round(elapsed * NS_PER_S))
        return sorted(knots)

    def sample_many(self, times_ns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Positions and velocities (N, D) at ``times_ns`` (N,); the start state before the start."""
        # Subtract in integer ns first: absolute times (~1.8e18 ns) carry no sub-microsecond detail in float64.
        t = np.maximum(0, np.asarray(times_ns, dtype=np.int64) - self.start_ns) / NS_PER_S
        positions = np.empty((t.size, self.positions.size))
        velocities = np.empty_like(positions)
        for index, joint in enumerate(self.phases):
            starts, p, v = [0.0], [self.positions[index]], [self.velocities[index]]
            for duration, accel in joint:  # the state at each phase boundary
                p.append(p[-1] + v[-1] * duration + 0.5 * accel * duration * duration)
                v.append(v[-1] + accel * duration)
                starts.append(starts[-1] + duration)
            v[-1] = 0.0 if joint else v[-1]  # exactly at rest after the last phase (no float residue)
            accels = np.asarray([a for _, a in joint] + [0.0])
            k = np.searchsorted(np.asarray(starts), t, side="right") - 1
            dt = t - np.asarray(starts)[k]
            p_k, v_k, a_k = np.asarray(p)[k], np.asarray(v)[k], accels[k]
            positions[:, index] = p_k + v_k * dt + 0.5 * a_k * dt * dt
            velocities[:, index] = v_k + a_k * dt
        return positions, velocities

    def sample(self, now_ns: int) -> tuple[np.ndarray, np.ndarray]:
        """Positions and velocities at ``now_ns`` (the start state before the start)."""
        positions, velocities = self.sample_many(np.asarray([now_ns]))
        return positions[0], velocities[0]
