"""How late trajectories reach the controllers: arrival time minus header.stamp.

A trajectory stamped "now" that arrives late has partly run out before the controller sees it (the
controller starts it where its own points are at the arrival time); one that arrives after its own end
is rejected. Percentiles are over the most recent `window` trajectories, the maximum and the counts
over the whole run, so memory stays bounded however long the cell runs.
"""

from __future__ import annotations

from collections import deque

import numpy as np

DELAY_WINDOW = 20_000


class ArrivalStats:
    def __init__(self, late_threshold_ns: int, window: int = DELAY_WINDOW) -> None:
        self._late_ns = late_threshold_ns
        self._delays_ns: deque[int] = deque(maxlen=window)
        self.max_ns: int | None = None
        self.late = 0  # arrived more than the threshold after their stamp
        self.after_end = 0  # arrived after their own last point (the controller rejects them)

    def record(self, stamp_ns: int, end_ns: int, arrival_ns: int) -> None:
        """One stamped trajectory (stamp > 0); end_ns is the absolute time of its last point."""
        delay = arrival_ns - stamp_ns
        self._delays_ns.append(delay)
        self.max_ns = delay if self.max_ns is None else max(self.max_ns, delay)
        self.late += delay > self._late_ns
        self.after_end += arrival_ns > end_ns

    def values(self) -> dict[str, float | int | None]:
        delays = np.asarray(self._delays_ns, dtype=np.float64) / 1e6
        return {
            "trajectory_arrival_delay_ms_p50": round(float(np.percentile(delays, 50)), 3) if delays.size else None,
            "trajectory_arrival_delay_ms_p99": round(float(np.percentile(delays, 99)), 3) if delays.size else None,
            "trajectory_arrival_delay_ms_max": round(self.max_ns / 1e6, 3) if self.max_ns is not None else None,
            "late_trajectories": self.late,
            "trajectories_after_end": self.after_end,
        }
