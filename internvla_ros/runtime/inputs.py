"""The runtime's inputs: the newest joint state, each camera's recent frames, and the watchdog over them.

Every buffer is bounded: frames by time and by count, handed-out frames by count. A stamp further in the
future than ``safety.max_future_stamp_s`` is refused (it would keep the watchdog fresh forever), and a message
older than the newest one is ignored (the newest stays).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import Any

import numpy as np

from internvla_ros.runtime.config import RuntimeConfig
from internvla_ros.runtime.errors import MappingError
from internvla_ros.runtime.mapping import ActionMapper
from internvla_ros.runtime.observation import CameraFrames, FrameHistory
from internvla_ros.runtime.safety import REJECTED, STALE_CAMERA_PREFIX, STALE_JOINT_STATE, EventCounters, InputWatchdog
from internvla_ros.runtime.status import REJECT_FUTURE_STAMP, REJECT_JOINT_STATE, REJECT_UNKNOWN_CAMERA

HANDED_OUT_FRAMES = 32  # per camera: a few seconds of requests, enough for any history offset


class InputBuffers:
    """Joint state, camera frames and their freshness; ``last_error`` says why the last input was refused."""

    def __init__(self, config: RuntimeConfig, mapper: ActionMapper, counters: EventCounters) -> None:
        self._config = config
        self._mapper = mapper
        self._counters = counters
        step_ns = config.rates.chunk_step_ns
        self._history_ns = config.execution.frame_history_steps * step_ns
        self._history_reuse_ns = config.execution.history_reuse_steps * step_ns
        self._max_future_ns = config.safety.max_future_stamp_ns
        self.last_error = ""
        self.clear()

    def clear(self) -> None:
        """Forgets every input (the clock jumped back: old stamps mean nothing on the new time line)."""
        self.watchdog = InputWatchdog(self._config)
        self.frames = {c.name: FrameHistory(self._history_ns) for c in self._config.cameras}
        # Frames already handed out as a camera's current frame (the policy has encoded them), newest last.
        self._handed_out: dict[str, deque[tuple[int, Any]]] = {
            c.name: deque(maxlen=HANDED_OUT_FRAMES) for c in self._config.cameras}
        self.joint_values: np.ndarray | None = None
        self.model_state: np.ndarray | None = None
        self.joint_stamp_ns: int | None = None

    def _from_future(self, stamp_ns: int, now_ns: int | None, what: str) -> bool:
        if now_ns is None or stamp_ns - now_ns <= self._max_future_ns:
            return False
        self._counters.add(REJECTED, REJECT_FUTURE_STAMP)
        self.last_error = (f"{what} stamped {(stamp_ns - now_ns) / 1e9:.3f} s in the future (refused; more than "
                           f"safety.max_future_stamp_s ahead): check the sender's clock or use_sim_time")
        return True

    def update_joint_state(self, stamp_ns: int, names: Sequence[str], positions: Sequence[float],
                           velocities: Sequence[float] | None, now_ns: int | None) -> bool:
        try:
            values = self._mapper.joint_values(names, positions, velocities)
        except MappingError as err:
            self._counters.add(REJECTED, REJECT_JOINT_STATE)
            self.last_error = str(err)
            return False
        if self._from_future(stamp_ns, now_ns, "joint_states"):
            return False
        if self.joint_stamp_ns is not None and stamp_ns < self.joint_stamp_ns:
            self.last_error = "joint_states out of order: older than the newest one received (ignored)"
            return False
        self.joint_values = values
        self.model_state = self._mapper.model_state(values)
        self.joint_stamp_ns = stamp_ns
        self.watchdog.update(STALE_JOINT_STATE, stamp_ns)
        return True

    def update_camera(self, name: str, stamp_ns: int, image: Any, now_ns: int | None) -> bool:
        history = self.frames.get(name)
        if history is None:
            self._counters.add(REJECTED, REJECT_UNKNOWN_CAMERA)
            self.last_error = f"camera {name!r} is not configured; known {sorted(self.frames)}"
            return False
        if self._from_future(stamp_ns, now_ns, f"camera {name}"):
            return False
        history.add(stamp_ns, image)
        self.watchdog.update(STALE_CAMERA_PREFIX + name, stamp_ns)
        return True

    def all_cameras_seen(self) -> bool:
        return all(history.latest() is not None for history in self.frames.values())

    def _older_frame(self, camera: str, latest_ns: int) -> tuple[int, Any]:
        """The frame ``history_ns`` before the latest; with history reuse, the nearest frame already handed
        out as current (so its encoding is reused) when it is within the reuse window of that instant."""
        target_ns = latest_ns - self._history_ns
        exact = self.frames[camera].before(target_ns)
        assert exact is not None
        if self._history_reuse_ns and self._handed_out[camera]:
            reused = min(self._handed_out[camera], key=lambda frame: abs(frame[0] - target_ns))
            if abs(reused[0] - target_ns) <= self._history_reuse_ns:
                return reused
        return exact

    def camera_frames(self) -> dict[str, CameraFrames]:
        frames = {}
        for camera in self._config.cameras:
            latest = self.frames[camera.name].latest()
            assert latest is not None
            older = self._older_frame(camera.name, latest[0])
            handed_out = self._handed_out[camera.name]
            if not handed_out or handed_out[-1][0] != latest[0]:
                handed_out.append(latest)
            frames[camera.name] = CameraFrames(slot=camera.slot, current=latest[1], current_stamp_ns=latest[0],
                                               history=older[1], history_stamp_ns=older[0])
        return frames
