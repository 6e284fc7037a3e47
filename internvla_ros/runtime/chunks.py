"""Chunk scheduling: observations requested on their grids, the inference in flight, chunks adopted.

Inference, foresight recomputes and preview decodes each run on a fixed grid that skips slots, never queues
them: an inference slower than its period is counted once as an overrun, one not back within a chunk's
duration as a timeout. A chunk handed back is accepted only for one of the last ``RECENT_REQUESTS``
observations, while running, when requested after the last hold and newer than the plan it would replace;
the execution mode (runtime/execution.py) then places it on the time axis and hands over to it.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from internvla_ros.runtime.config import RuntimeConfig, period_ns
from internvla_ros.runtime.errors import MappingError
from internvla_ros.runtime.execution import RtcMode, execution_mode
from internvla_ros.runtime.inputs import InputBuffers
from internvla_ros.runtime.mapping import ActionMapper
from internvla_ros.runtime.observation import Observation, RtcRequest
from internvla_ros.runtime.plan import ChunkPlan, HoldSchedule, Schedule
from internvla_ros.runtime.runtime_status import (
    DROPPED_CHUNKS,
    REJECTED_CHUNKS,
    TIMING,
    TIMING_OVERRUNS,
    TIMING_TIMEOUTS,
    RuntimeMeters,
)
from internvla_ros.runtime.safety import REJECTED, EventCounters
from internvla_ros.runtime.status import REJECT_JOINT_STATE

DROP_UNKNOWN_OBSERVATION = "unknown_observation"
DROP_NOT_RUNNING = "not_running"
DROP_PREDATES_HOLD = "predates_hold"  # computed from an observation taken before a pause/e-stop/stale hold
DROP_NOT_NEWER = "not_newer_than_active"
DROP_IN_PAST = "arrived_in_past"  # the whole chunk lies before its arrival time

RECENT_REQUESTS = 8  # observations whose chunks are still accepted (identified by their stamp)


@dataclass
class _Request:
    obs_stamp_ns: int
    request_ns: int
    overrun: bool = False


@dataclass(frozen=True)
class ChunkResult:
    """What happened to a submitted chunk; ``reason`` is a counter key when not accepted."""

    accepted: bool
    reason: str
    start_index: int = -1
    latency_ns: int = 0  # observation stamp -> arrival
    positions: np.ndarray | None = None  # the accepted chunk in joint space (chunk_size, joints)


def next_grid(due_ns: int, period_ns: int, now_ns: int) -> int:
    """The first point of the grid ``due_ns + k * period_ns`` after ``now_ns`` (skips, never queues)."""
    if now_ns < due_ns:
        return due_ns
    return due_ns + ((now_ns - due_ns) // period_ns + 1) * period_ns


class ChunkScheduler:
    """The plan being executed, the schedule blending into it, and the inference feeding it.

    ``last_error`` says what went wrong in the last ``check``, ``request`` or ``submit`` ("" when nothing did).
    """

    def __init__(self, config: RuntimeConfig, mapper: ActionMapper, counters: EventCounters,
                 meters: RuntimeMeters) -> None:
        self.mode = execution_mode(config)
        self._mapper = mapper
        self._counters = counters
        self._meters = meters
        rates = config.rates
        self._inference_ns = rates.inference_period_ns
        self._foresight_ns = period_ns(rates.foresight_rate_hz)
        preview_hz = rates.foresight_preview_rate_hz
        self._preview_ns = period_ns(preview_hz) if preview_hz else 0  # 0: never decode a preview
        self._timeout_ns = config.execution.chunk_size * rates.chunk_step_ns
        self.schedule: Schedule | None = None
        self.plan: ChunkPlan | None = None
        self._new_plan = False  # the plan has not been turned into a trajectory yet
        self._request: _Request | None = None
        # Observation stamp -> (its model state, when it was requested), for the chunks still accepted.
        self._recent: OrderedDict[int, tuple[np.ndarray, int]] = OrderedDict()
        self._resume_ns = 0  # chunks requested before this are dropped
        self._next_inference_ns = 0
        self._next_foresight_ns = 0
        self._next_preview_ns = 0
        # The adopted chunk in model space, its index-0 time and its observation's state (rtc's target).
        self._model_chunk: tuple[np.ndarray, int, np.ndarray] | None = None
        self.last_error = ""

    def start(self, positions: np.ndarray, now_ns: int) -> None:
        """Holds at ``positions``; every grid restarts at ``now_ns``."""
        self.hold(positions, now_ns)
        self._request = None
        self._next_inference_ns = self._next_foresight_ns = self._next_preview_ns = now_ns

    def hold(self, positions: np.ndarray, now_ns: int, *, infer_now: bool = False) -> None:
        """Holds at ``positions`` from ``now_ns`` (the motion restarts); chunks requested before are dropped."""
        self.schedule = HoldSchedule(positions.copy())
        self.plan = None
        self._model_chunk = None
        self._resume_ns = now_ns
        if infer_now:
            self._next_inference_ns = now_ns

    def clear(self) -> None:
        """Idle: no plan, no schedule, nothing in flight."""
        self._request = None
        self.plan = None
        self.schedule = None

    def drop_plan(self) -> None:
        """A controlled stop takes over: the plan is no longer followed."""
        self._new_plan = False
        self.plan = None

    def forget_requests(self) -> None:
        """No chunk of an observation requested so far is accepted (the clock jumped)."""
        self._recent.clear()
        self._request = None

    def shift(self, offset_ns: int, positions: np.ndarray) -> None:
        """Moves every grid by ``offset_ns`` (the clock jumped) and holds at ``positions``."""
        self._next_inference_ns += offset_ns
        self._next_foresight_ns += offset_ns
        self._next_preview_ns += offset_ns
        self._resume_ns += offset_ns
        self.plan = None
        self.schedule = HoldSchedule(positions.copy())

    def take_new_plan(self) -> ChunkPlan | None:
        """The plan adopted since the last call, once (None when there is none)."""
        new, self._new_plan = self._new_plan, False
        return self.plan if new else None

    # Requests ------------------------------------------------------------------------------------

    def check(self, now_ns: int) -> None:
        """Detects an inference slower than its period (counted once, its slots skipped) or lost."""
        self.last_error = ""
        request = self._request
        if request is None:
            return
        if self.mode.overruns_apply and now_ns >= self._next_inference_ns:
            # A slot passes while the inference is in flight: skipped, never queued for later.
            self._next_inference_ns = next_grid(self._next_inference_ns, self._inference_ns, now_ns)
            if not request.overrun:
                request.overrun = True
                self._counters.add(TIMING, TIMING_OVERRUNS)
        if now_ns - request.request_ns > self._timeout_ns:
            self._counters.add(TIMING, TIMING_TIMEOUTS)
            self.last_error = f"inference for observation {request.obs_stamp_ns} ns not back after a chunk"
            self._request = None

    def due(self, now_ns: int) -> bool:
        """Whether an observation is due, as far as chunks are concerned (nothing in flight, the mode's turn)."""
        return self._request is None and self.mode.observation_due(self.plan, now_ns, self._next_inference_ns)

    def request(self, now_ns: int, inputs: InputBuffers, instruction: str) -> Observation | None:
        """The observation to infer on now, whose chunk is awaited from here on; None (with ``last_error``)
        when the joint state cannot be normalised for the model."""
        assert inputs.model_state is not None and inputs.joint_stamp_ns is not None
        self.last_error = ""
        try:
            normalized_state = self._mapper.normalized_state(inputs.model_state)
        except MappingError as err:
            self._counters.add(REJECTED, REJECT_JOINT_STATE)
            self.last_error = str(err)
            return None
        meters = self._meters
        recompute = now_ns >= self._next_foresight_ns
        if recompute:
            self._next_foresight_ns = next_grid(self._next_foresight_ns, self._foresight_ns, now_ns)
            meters.foresight_rate.add(now_ns)
        preview = bool(self._preview_ns) and now_ns >= self._next_preview_ns
        if preview:
            self._next_preview_ns = next_grid(self._next_preview_ns, self._preview_ns, now_ns)
            meters.preview_rate.add(now_ns)
        observation = Observation(
            stamp_ns=inputs.joint_stamp_ns,
            request_ns=now_ns,
            cameras=inputs.camera_frames(),
            state=inputs.model_state.copy(),
            normalized_state=normalized_state,
            instruction=instruction,
            recompute_foresight=recompute,
            decode_preview=preview,
            rtc=self._rtc_request(inputs.model_state, inputs.joint_stamp_ns),
        )
        self._request = _Request(obs_stamp_ns=observation.stamp_ns, request_ns=now_ns)
        self._recent[observation.stamp_ns] = (observation.state, now_ns)
        while len(self._recent) > RECENT_REQUESTS:
            self._recent.popitem(last=False)
        self._next_inference_ns = next_grid(self._next_inference_ns, self._inference_ns, now_ns)
        return observation

    def failed(self, obs_stamp_ns: int) -> None:
        """The inference for ``obs_stamp_ns`` raised: the next observation is requested on schedule."""
        if self._request is not None and self._request.obs_stamp_ns == obs_stamp_ns:
            self._request = None

    # Chunks --------------------------------------------------------------------------------------

    def submit(self, actions: np.ndarray, obs_stamp_ns: int, ready_ns: int, *, running: bool,
               last_tick_ns: int | None) -> ChunkResult:
        """Adopts the chunk computed from the observation ``obs_stamp_ns``, handed back at ``ready_ns``, or
        says why not; the hand-over starts at the arrival, or at the last tick when that is later."""
        self.check(ready_ns)
        request = self._request
        if request is not None and request.obs_stamp_ns == obs_stamp_ns:
            inference_ns = ready_ns - request.request_ns
            self._meters.inference_latency.add(inference_ns)
            if self.mode.overruns_apply and inference_ns > self._inference_ns and not request.overrun:
                self._counters.add(TIMING, TIMING_OVERRUNS)
            self._request = None
        latency_ns = ready_ns - obs_stamp_ns
        recent = self._recent.get(obs_stamp_ns)
        if recent is None:
            return self._drop(DROP_UNKNOWN_OBSERVATION, latency_ns)
        state, requested_ns = recent
        if not running:
            return self._drop(DROP_NOT_RUNNING, latency_ns)
        if requested_ns < self._resume_ns:  # requested before a hold that has ended since
            return self._drop(DROP_PREDATES_HOLD, latency_ns)
        if self.plan is not None and obs_stamp_ns <= self.plan.obs_stamp_ns:
            return self._drop(DROP_NOT_NEWER, latency_ns)
        try:
            positions = self._mapper.chunk_to_joint_positions(actions, state)
        except MappingError as err:
            self._counters.add(REJECTED_CHUNKS, err.reason)
            self.last_error = str(err)
            return ChunkResult(accepted=False, reason=err.reason, latency_ns=latency_ns)
        plan = self.mode.plan(positions, obs_stamp_ns, ready_ns)
        if plan is None:
            return self._drop(DROP_IN_PAST, latency_ns)
        assert self.schedule is not None
        blend_start = ready_ns if last_tick_ns is None else max(ready_ns, last_tick_ns)
        self.schedule = self.mode.hand_over(self.schedule, plan, blend_start)
        self.plan = plan
        self._new_plan = True
        self._model_chunk = (np.asarray(actions, np.float32), plan.origin_ns, state)
        if isinstance(self.mode, RtcMode):
            self.mode.record_latency(latency_ns)
        meters = self._meters
        meters.chunks_accepted += 1
        meters.last_start_index = plan.start_index
        meters.observation_age.add(latency_ns)
        meters.inference_rate.add(ready_ns)
        return ChunkResult(accepted=True, reason="", start_index=plan.start_index, latency_ns=latency_ns,
                           positions=positions)

    def _rtc_request(self, model_state: np.ndarray, stamp_ns: int) -> RtcRequest | None:
        """execution.mode rtc: the previous chunk as the target of the next one (None for other modes)."""
        if not isinstance(self.mode, RtcMode) or self._model_chunk is None or self.plan is None:
            return None
        actions, origin_ns, state = self._model_chunk
        return self.mode.request(self._mapper.rebase_chunk(actions, state, model_state), origin_ns, stamp_ns)

    def _drop(self, reason: str, latency_ns: int) -> ChunkResult:
        self._counters.add(DROPPED_CHUNKS, reason)
        return ChunkResult(accepted=False, reason=reason, latency_ns=latency_ns)
