"""The observation handed to the policy, and the per-camera frame history that supplies frame t-15.

Visual foresight consumes each view at t and about 0.5 s earlier (15 frames at 30 fps); the history keeps
just enough frames per camera to answer that, by time rather than by count so frame drops do not shift it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class CameraFrames:
    slot: int  # the model's image slot: 0 head, 1 left wrist, 2 right wrist
    current: Any  # an image array as received (H, W, 3) uint8; preprocessing belongs to the model
    current_stamp_ns: int
    history: Any  # the frame about history_ns before ``current`` (the oldest kept while filling up)
    history_stamp_ns: int


@dataclass(frozen=True)
class RtcRequest:
    """Real-time chunking for this observation's chunk: the target in the model's action space (the previous
    chunk from this observation's index 0 on, zero-padded, (chunk, dim)), the delay ``d`` and horizon ``s``
    in chunk steps, and the guidance settings (model/rtc.py)."""

    target: np.ndarray
    delay: int
    horizon: int
    beta: float
    schedule: str


@dataclass(frozen=True)
class Observation:
    stamp_ns: int  # the joint state's stamp: the chunk's index 0 and its deltas refer to this instant
    request_ns: int  # when the runtime handed it out (inference latency is measured from here)
    cameras: Mapping[str, CameraFrames]
    state: np.ndarray  # the model's raw state (D,), config order, grippers 0 open .. 1 closed
    normalized_state: np.ndarray  # normalised and zero-padded to the model's action dim
    instruction: str
    recompute_foresight: bool  # false: the policy may reuse the cached generation-pass K/V
    decode_preview: bool  # true: also decode the foresight image for the operator
    rtc: RtcRequest | None = None  # execution.mode rtc: guide the chunk towards the previous one


MAX_FRAMES = 256  # per camera: 0.5 s of history at up to 500 fps; a bound even if stamps stop advancing


class FrameHistory:
    """Frames of one camera, newest last, trimmed to what the history offset needs (and never more than
    MAX_FRAMES)."""

    def __init__(self, history_ns: int) -> None:
        self._history_ns = history_ns
        self._frames: deque[tuple[int, Any]] = deque(maxlen=MAX_FRAMES)

    def add(self, stamp_ns: int, image: Any) -> None:
        if self._frames and stamp_ns < self._frames[-1][0]:
            return  # out of order: keep the history monotonic
        if self._frames and stamp_ns == self._frames[-1][0]:
            self._frames[-1] = (stamp_ns, image)  # same stamp again: the newer image replaces it
            return
        self._frames.append((stamp_ns, image))
        horizon = stamp_ns - self._history_ns
        while len(self._frames) >= 2 and self._frames[1][0] <= horizon:
            self._frames.popleft()

    def latest(self) -> tuple[int, Any] | None:
        return self._frames[-1] if self._frames else None

    def before(self, stamp_ns: int) -> tuple[int, Any] | None:
        """The newest frame at or before ``stamp_ns``, else the oldest kept (history still filling)."""
        if not self._frames:
            return None
        chosen = self._frames[0]
        for frame in self._frames:
            if frame[0] > stamp_ns:
                break
            chosen = frame
        return chosen
