"""The runtime's outputs as plain data; the ROS node converts them to messages.

- ``JointTrajectoryCommand`` for a joint_trajectory controller: the rest of the plan as timed points,
  first point at the stamp (time_from_start 0; the first trajectory after a (re)start: at the lead's end, see
  trajectory.py), strictly increasing times, last point at rest (Jazzy's JTC rejects a non-zero end velocity
  by default).
- ``ForwardCommand`` for a forward_command controller: one value per joint, every control tick.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TrajectoryPoint:
    positions: tuple[float, ...]
    velocities: tuple[float, ...]  # empty: positions only (the controller interpolates linearly)
    time_from_start_ns: int


@dataclass(frozen=True)
class JointTrajectoryCommand:
    controller: str
    joint_names: tuple[str, ...]
    stamp_ns: int  # the time of the first point; the node may send 0 ("start when sampled") instead
    points: tuple[TrajectoryPoint, ...]


@dataclass(frozen=True)
class ForwardCommand:
    controller: str
    joint_names: tuple[str, ...]
    values: tuple[float, ...]
    stamp_ns: int


@dataclass(frozen=True)
class ControlOutput:
    """One control tick. In dry-run ``forward`` and ``trajectories`` are empty: nothing is commanded,
    while ``positions``/``velocities`` still show the command that would have been sent."""

    stamp_ns: int
    state: str
    joint_names: tuple[str, ...]
    positions: tuple[float, ...]  # the safe command for every joint, config order
    velocities: tuple[float, ...]
    forward: tuple[ForwardCommand, ...]
    trajectories: tuple[JointTrajectoryCommand, ...]  # only when a new plan or a hold starts
    clamped: frozenset[str]  # the limits applied to this tick's command
    dry_run: bool
