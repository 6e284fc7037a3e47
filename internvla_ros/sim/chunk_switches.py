"""How far consecutive action chunks disagree where one takes over from the other: the figure real-time
chunking is meant to shrink.

Judged from the chunks the policy node publishes (``~/action_chunk``), by the message's documented meaning:
row i is the target for ``observation_stamp + i * control_period`` (delay-compensated placement, the
``delay_compensated`` and ``rtc`` modes), or for ``header.stamp + i * control_period`` in the modes that start a
chunk at index 0 on arrival (``uncompensated``, ``reference``). A chunk takes over at its arrival
(``header.stamp``). At that instant the new chunk is compared with the one it replaces: the position gap and the
velocity jump (each chunk's velocity over the next chunk step), over the joints of the trajectory controllers.
These are the jumps the policy asks for, before the hand-over blend and the limiter: the executed motion hides
them (its acceleration is capped), so they are what tells the execution modes apart.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

PLACED_AT_ARRIVAL = ("uncompensated", "reference")  # execution modes whose chunks start at index 0 on arrival


@dataclass(frozen=True)
class PublishedChunk:
    """One ``~/action_chunk`` message: the judged joints' rows placed on the time axis."""

    chunk_id: int
    ready_ns: int
    origin_ns: int  # the time of row 0
    step_ns: int
    positions: np.ndarray  # (horizon, judged joints)

    def sample(self, t_ns: int) -> np.ndarray:
        """The target at ``t_ns``: rows interpolated linearly, the first and last row held outside the chunk."""
        index = float(np.clip((t_ns - self.origin_ns) / self.step_ns, 0.0, self.positions.shape[0] - 1))
        low = int(np.floor(index))
        high = min(low + 1, self.positions.shape[0] - 1)
        return (1.0 - (index - low)) * self.positions[low] + (index - low) * self.positions[high]

    def velocity(self, t_ns: int) -> np.ndarray:
        """The target's velocity over the chunk step after ``t_ns`` (0 once the chunk has ended)."""
        return (self.sample(t_ns + self.step_ns) - self.sample(t_ns)) / (self.step_ns * 1e-9)


@dataclass(frozen=True)
class Switch:
    """One hand-over: the largest position gap (rad) and velocity jump (rad/s) over the judged joints."""

    ready_ns: int
    position_gap: float
    velocity_jump: float


class SwitchJudge:
    """Compares each published chunk with the previous one at its arrival.

    ``joint_names``: the columns of the messages; ``judged``: the joints to compare (the trajectory controllers'
    joints: a gripper's open/close or a conveyor's speed has no velocity to compare); ``mode``: the node's
    execution mode, which places the rows on the time axis.
    """

    def __init__(self, joint_names: Sequence[str], judged: Sequence[str], mode: str) -> None:
        missing = [name for name in judged if name not in joint_names]
        if missing:
            raise ValueError(f"judged joints {missing} are not among the chunk's joints {list(joint_names)}")
        self._columns = [list(joint_names).index(name) for name in judged]
        self._width = len(joint_names)
        self._at_arrival = mode in PLACED_AT_ARRIVAL
        self._previous: PublishedChunk | None = None
        self.switches: list[Switch] = []
        self.unjudged = 0  # chunks that were no table of the configured joints

    def add(self, chunk_id: int, ready_ns: int, observation_ns: int, step_ns: int,
            positions: Sequence[float]) -> Switch | None:
        """A chunk as published (``positions`` row-major, horizon x joints); the switch it makes, or None when
        there is no previous chunk to compare with (the first one, or one after a chunk that was not seen or
        not judged). A chunk that is not a table of the configured joints is counted in ``unjudged``."""
        values = np.asarray(positions, np.float64)
        if values.size == 0 or values.size % self._width or step_ns <= 0:
            self.unjudged += 1
            self._previous = None
            return None
        rows = values.reshape(-1, self._width)[:, self._columns]
        chunk = PublishedChunk(chunk_id, ready_ns, ready_ns if self._at_arrival else observation_ns, step_ns, rows)
        previous, self._previous = self._previous, chunk
        if previous is None or chunk_id != previous.chunk_id + 1:
            return None
        switch = Switch(ready_ns=ready_ns,
                        position_gap=float(np.max(np.abs(chunk.sample(ready_ns) - previous.sample(ready_ns)))),
                        velocity_jump=float(np.max(np.abs(chunk.velocity(ready_ns) - previous.velocity(ready_ns)))))
        self.switches.append(switch)
        return switch

    def take(self) -> list[Switch]:
        """The switches judged since the last call (an episode's), forgetting them."""
        switches, self.switches = self.switches, []
        return switches


def switch_summary(position_gaps: Sequence[float], velocity_jumps: Sequence[float]) -> dict[str, float | int | None]:
    """Median, 90th percentile and largest position gap (rad) and velocity jump (rad/s) over switches (None
    without one). The 90th percentile leaves out the few hand-overs after a hold, which the largest includes."""
    def stat(values: Sequence[float], pick: str) -> float | None:
        if not values:
            return None
        if pick == "max":
            return round(float(max(values)), 4)
        return round(float(np.quantile(np.asarray(values, np.float64), 0.5 if pick == "p50" else 0.9)), 4)

    return {"switches": len(velocity_jumps),
            **{f"velocity_jump_{pick}": stat(velocity_jumps, pick) for pick in ("p50", "p90", "max")},
            **{f"position_gap_{pick}": stat(position_gaps, pick) for pick in ("p50", "p90", "max")}}
