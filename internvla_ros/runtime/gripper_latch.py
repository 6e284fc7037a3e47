"""Binary grippers commit to each open or close for a minimum time (``grippers.<joint>.min_hold_s``).

A threshold gripper's target is open or closed in every chunk, but the schedule that feeds it is not: a
hand-over blends two chunks, and consecutive chunks disagree by a few steps about when to close. Measured
on the conveyor cell: one chunk starts a close, the next (computed from an observation taken before the
fingers moved) says "close a little later", the forward controller reverses the half-closed fingers, and a
parcel that was just caught falls back onto the belt 0.1 s after the grasp. The latch snaps each target to
the nearer of the two positions and lets it change side only when the last change is ``min_hold_s`` old:
long enough for the fingers to close and for the policy to see the result. The motion limiter still shapes
the motion between the two positions, so the latch changes when the gripper moves, never how fast.
"""

from __future__ import annotations

import numpy as np

from internvla_ros.runtime.config import RuntimeConfig


class GripperLatch:
    """Applied to the forward joints' target on every running control tick; ``reset`` when not running."""

    def __init__(self, config: RuntimeConfig) -> None:
        latched = [g for g in config.grippers if g.min_hold_s > 0.0]
        self._columns = np.asarray([config.joint_index[g.joint] for g in latched], dtype=np.int64)
        self._open = np.asarray([g.open_position for g in latched], dtype=np.float64)
        self._closed = np.asarray([g.closed_position for g in latched], dtype=np.float64)
        self._hold_ns = np.asarray([round(g.min_hold_s * 1e9) for g in latched], dtype=np.int64)
        self._state: np.ndarray | None = None  # True: closed
        self._changed_ns = np.zeros(len(latched), dtype=np.int64)

    @property
    def active(self) -> bool:
        return bool(self._columns.size)

    def reset(self) -> None:
        """Forget the last decision: after a pause or stop the first target is taken as it is."""
        self._state = None

    def apply(self, target: np.ndarray, now_ns: int) -> np.ndarray:
        """``target`` (config joint order) with every latched gripper at its held position."""
        if not self.active:
            return target
        values = target[self._columns]
        wanted = np.abs(values - self._closed) < np.abs(values - self._open)
        if self._state is None:  # taken as it is, and free to change: the hold guards the latch's own changes
            self._state = wanted.copy()
            self._changed_ns = now_ns - self._hold_ns
        else:
            change = (wanted != self._state) & (now_ns - self._changed_ns >= self._hold_ns)
            self._state = np.where(change, wanted, self._state)
            self._changed_ns = np.where(change, now_ns, self._changed_ns)
        latched = target.copy()
        latched[self._columns] = np.where(self._state, self._closed, self._open)
        return latched
