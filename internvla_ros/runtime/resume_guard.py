"""Resume only from where the arm is: the check between a hold and the next trajectory.

The runtime assumes its trajectories run as sent. A controller that stalls for longer than
``safety.trajectory_lead_s`` does not: it keeps running the trajectory it had, and the stop sent meanwhile
arrives in the past (refused) or joins late. A trajectory planned from the runtime's belief would then make the
controller jump to it. So after a hold the motion resumes only once the measured trajectory joints are still;
when they are further than a joint's ``max_jump`` from the commanded position (more than a tracking error),
the trajectory joints restart from the measurement, as at start, and the gap is reported.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from internvla_ros.runtime.config import NS_PER_S

STILL_WINDOW_NS = 100_000_000  # the measured arm is still when it moved this little over this long


@dataclass(frozen=True)
class Divergence:
    """The trajectory joint furthest from its commanded position."""

    joint: str
    measured: float
    commanded: float

    def describe(self) -> str:
        return (f"{self.joint} measured at {self.measured:.3f}, commanded {self.commanded:.3f} (the controller did "
                f"not run the last trajectory, e.g. it arrived late)")


class ResumeGuard:
    """Tells when the measured trajectory joints are still, and how far they are from the commanded ones."""

    def __init__(self, joint_names: tuple[str, ...], columns: np.ndarray, max_jump: np.ndarray,
                 max_acceleration: np.ndarray, control_period_ns: int) -> None:
        self._names = joint_names
        self._columns = columns
        self._tolerance = max_jump[columns]
        # Still: slow enough that starting from rest changes the velocity by at most one control period's
        # acceleration, measured as a displacement over the window.
        window_s = STILL_WINDOW_NS / NS_PER_S
        self._still = max_acceleration[columns] * (control_period_ns / NS_PER_S) * window_s
        self._probe: tuple[int, np.ndarray] | None = None

    def reset(self) -> None:
        self._probe = None

    def divergence(self, measured: np.ndarray, commanded: np.ndarray) -> Divergence | None:
        """None when every trajectory joint is within its max jump of the command."""
        gap = np.abs(measured[self._columns] - commanded[self._columns])
        over = gap - self._tolerance
        if not self._columns.size or np.all(over <= 0.0):
            return None
        k = int(np.argmax(over))
        column = int(self._columns[k])
        return Divergence(self._names[column], float(measured[column]), float(commanded[column]))

    def still(self, stamp_ns: int, measured: np.ndarray) -> bool:
        """Whether the measured trajectory joints have stayed put over the last window of measurements."""
        if not self._columns.size:
            return True
        positions = measured[self._columns].copy()
        if self._probe is None or stamp_ns < self._probe[0]:
            self._probe = (stamp_ns, positions)
            return False
        since_ns, before = self._probe
        if np.any(np.abs(positions - before) > self._still):
            self._probe = (stamp_ns, positions)
            return False
        return stamp_ns - since_ns >= STILL_WINDOW_NS
