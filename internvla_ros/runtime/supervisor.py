"""Whether the runtime may move, and in which state: the operator's switches, held faults, a requested stop
and stale inputs, in that order of precedence. Every way out of RUNNING is the same controlled stop; the
runtime carries it out, this class only decides."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from internvla_ros.runtime.config import RuntimeConfig
from internvla_ros.runtime.control import MotionControl
from internvla_ros.runtime.errors import PolicyRuntimeError
from internvla_ros.runtime.inputs import InputBuffers
from internvla_ros.runtime.runtime_status import Switches
from internvla_ros.runtime.safety import STALE, EventCounters, MotionLimiter, SafetyGate
from internvla_ros.runtime.status import RuntimeState

START_TOLERANCE = 1e-4  # a joint measured this far outside its limits is started from the limit
HOLD_DRY_RUN = "switching to dry run: stopping before commands are silenced"


class Supervisor:
    """The gate (pause, e-stop, dry run), faults held by key, the cause of a requested stop, stale inputs."""

    def __init__(self, config: RuntimeConfig, inputs: InputBuffers, limiter: MotionLimiter,
                 counters: EventCounters) -> None:
        self.gate = SafetyGate(config.safety.dry_run)
        self._joint_names = config.joint_names
        self._inputs = inputs
        self._limiter = limiter
        self._counters = counters
        self.holds: dict[str, str] = {}  # faults held with hold_for(): key -> reason
        self.stop_cause: str | None = None  # request_stop(): stop, then idle
        self.stale_now: tuple[str, ...] = ()

    def start_position(self, now_ns: int | None = None) -> np.ndarray:
        """The measured joints to start from; refused (with the joint, value and limit) when outside the
        limits, and, given ``now_ns``, while an input is stale."""
        values = self._inputs.joint_values
        if values is None:
            msg = "cannot start: no joint state received yet"
            raise PolicyRuntimeError(msg)
        outside = self._limiter.outside_limits(values, START_TOLERANCE)
        if outside:
            names = self._joint_names
            details = "; ".join(f"{names[int(item.split(':')[0])]}{item[item.index(':'):]}" for item in outside)
            msg = (f"cannot start: joints measured outside their limits ({details}); move them inside with the "
                   "robot's own tools, or correct the limits in the robot config")
            raise PolicyRuntimeError(msg)
        stale = () if now_ns is None else self._inputs.watchdog.stale(now_ns)
        if stale:
            msg = f"cannot start: waiting for fresh {', '.join(stale)}"
            raise PolicyRuntimeError(msg)
        return values

    def set_dry_run(self, dry_run: bool, idle: bool, restart: Callable[[], None]) -> None:
        """On: silenced at once when idle, else after a controlled stop (see ``state_at``). Off: ``restart``
        (the motion from the measured joints) runs first; when it raises, the dry run stays on."""
        if dry_run and not self.gate.dry_run:
            if idle:
                self.gate.dry_run = True
            else:
                self.holds[HOLD_DRY_RUN] = HOLD_DRY_RUN
            return
        if not dry_run and self.holds.pop(HOLD_DRY_RUN, None) is not None:
            return  # the stop before the silence was still running: actuation simply continues
        if not dry_run and self.gate.dry_run:
            restart()
        self.gate.dry_run = dry_run

    def may_observe(self, now_ns: int) -> bool:
        """Whether the inputs and switches allow a new observation (every input fresh, every camera seen)."""
        inputs = self._inputs
        if inputs.model_state is None or self.gate.paused or self.gate.estopped:
            return False
        return not inputs.watchdog.stale(now_ns) and inputs.all_cameras_seen()

    def state_at(self, now_ns: int, control: MotionControl) -> RuntimeState:
        """The state the runtime should be in at ``now_ns``; counts every input that has become stale."""
        stale = self._inputs.watchdog.stale(now_ns)
        for source in set(stale) - set(self.stale_now):
            self._counters.add(STALE, source)
        self.stale_now = stale
        if HOLD_DRY_RUN in self.holds and control.stopping and control.at_rest(now_ns):
            del self.holds[HOLD_DRY_RUN]  # at rest: from now on nothing is sent
            self.gate.dry_run = True
        if self.stop_cause is not None:
            return RuntimeState.STOPPING
        if self.gate.estopped:
            return RuntimeState.ESTOPPED
        if self.gate.paused:
            return RuntimeState.PAUSED
        if stale or self.holds:
            return RuntimeState.HOLDING
        return RuntimeState.RUNNING

    def switches(self, state: RuntimeState, mode: str, last_error: str) -> Switches:
        """The status fields decided here; ``holds`` are the reasons besides pause, e-stop and stale inputs."""
        stopping = (f"stopping: {self.stop_cause}",) if self.stop_cause else ()
        return Switches(state=state, mode=mode, dry_run=self.gate.dry_run, stale_inputs=self.stale_now,
                        estop_reason=self.gate.estop_reason or "", last_error=last_error,
                        holds=tuple(self.holds.values()) + stopping)
