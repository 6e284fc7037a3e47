"""Checks of commanded motion written from the controllers' documented behaviour, not with runtime code.

- joint_trajectory_controller (Jazzy): points with positions and velocities are joined by cubic Hermite
  segments; the motion's acceleration along a segment is linear in time, so its extremes are at the ends.
- forward_command_controller: each command is applied as it comes, one per control period; its steps and the
  change of its steps are what the robot feels.
"""

from __future__ import annotations

import itertools

import numpy as np

from internvla_ros.runtime.commands import ControlOutput, JointTrajectoryCommand

REL = 1e-6
ABS = 1e-9
ACC_REL = 1e-2  # as the sim: knots are whole nanoseconds, so a phase boundary may sit 0.5 ns off its knot


def cubic_segments(trajectory: JointTrajectoryCommand) -> list[tuple[float, np.ndarray, np.ndarray, np.ndarray,
                                                                     np.ndarray]]:
    """(duration s, p0, v0, p1, v1) for every segment between consecutive points."""
    points = trajectory.points
    segments = []
    for a, b in itertools.pairwise(points):
        duration = (b.time_from_start_ns - a.time_from_start_ns) / 1e9
        segments.append((duration, np.asarray(a.positions), np.asarray(a.velocities), np.asarray(b.positions),
                         np.asarray(b.velocities)))
    return segments


def assert_trajectory_within(trajectory: JointTrajectoryCommand, low: np.ndarray, high: np.ndarray,
                             max_velocity: np.ndarray, max_acceleration: np.ndarray) -> None:
    """Positions, velocities and accelerations of the controller's cubic stay within the limits everywhere."""
    assert all(len(p.velocities) == len(p.positions) for p in trajectory.points), "every point carries velocities"
    assert not any(trajectory.points[-1].velocities), "the last point must be at rest"
    for duration, p0, v0, p1, v1 in cubic_segments(trajectory):
        # p(s) = p0 + v0 T s + c2 s^2 + c3 s^3 on s in [0, 1]
        c2 = 3 * (p1 - p0) - (2 * v0 + v1) * duration
        c3 = -2 * (p1 - p0) + (v0 + v1) * duration
        acc0, acc1 = 2 * c2 / duration**2, (2 * c2 + 6 * c3) / duration**2
        assert (np.maximum(abs(acc0), abs(acc1)) <= max_acceleration * (1 + ACC_REL) + 1e-6).all(), (acc0, acc1)
        for s in np.linspace(0.0, 1.0, 11):
            position = p0 + v0 * duration * s + c2 * s**2 + c3 * s**3
            velocity = v0 + (2 * c2 * s + 3 * c3 * s**2) / duration
            assert (position >= low - ABS).all() and (position <= high + ABS).all(), position
            assert (np.abs(velocity) <= max_velocity * (1 + 1e-4) + 1e-7).all(), velocity  # knots: whole ns


def assert_commands_within(values: np.ndarray, period_s: float, low: np.ndarray, high: np.ndarray,
                           max_velocity: np.ndarray, max_acceleration: np.ndarray) -> None:
    """A forward controller's command sequence (K, D), one per period: inside, steps and their change bounded."""
    assert (values >= low - ABS).all() and (values <= high + ABS).all()
    steps = np.diff(values, axis=0)
    assert (np.abs(steps) <= max_velocity * period_s * (1 + REL) + ABS).all(), np.abs(steps).max(axis=0)
    change = np.abs(np.diff(steps, axis=0))
    assert (change <= max_acceleration * period_s**2 * (1 + REL) + 10 * ABS).all(), change.max(axis=0)


def forward_values(outputs: list[ControlOutput], columns: list[int]) -> np.ndarray:
    return np.asarray([[o.positions[c] for c in columns] for o in outputs])
