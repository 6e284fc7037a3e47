"""Per-component health for /diagnostics: levels and reasons from successive runtime status reports."""

from __future__ import annotations

import dataclasses

from diagnostic_msgs.msg import DiagnosticStatus

from internvla_ros.ros.messages import diagnostics_msg
from internvla_ros.runtime.health import ControllerLink, HealthMonitor, Level
from internvla_ros.runtime.status import REJECT_JOINT_STATE, RuntimeState, RuntimeStatus

RUNNING = RuntimeStatus(
    stamp_ns=1, state=RuntimeState.RUNNING, mode="delay_compensated", dry_run=False, control_rate_hz=50.0,
    inference_rate_hz=5.0, foresight_rate_hz=5.0, preview_rate_hz=0.0, inference_latency_last_ns=90_000_000,
    inference_latency_mean_ns=90_000_000, inference_latency_max_ns=120_000_000, observation_age_last_ns=0,
    control_ticks=100, missed_control_ticks=0, chunks_accepted=10, last_start_index=3, overruns=0,
    inference_timeouts=0, inference_failures=0, clamped={}, clamped_trajectory={}, rejected={},
    rejected_chunks={}, dropped_chunks={}, stale={}, stale_inputs=(), estop_reason="", last_error="")
LISTENED = (ControllerLink("left_arm_controller", "/cell/left_arm_controller/joint_trajectory", 1),)


def assess(monitor: HealthMonitor, status: RuntimeStatus, **kwargs: object) -> dict[str, tuple[Level, str]]:
    args = {"active": True, "instruction": "wave", "invalid_inputs": 0, "controllers": LISTENED, **kwargs}
    return {c.name: (c.level, c.message) for c in monitor.assess(status, **args)}


def test_a_running_node_is_ok_in_every_component() -> None:
    health = assess(HealthMonitor(), RUNNING)
    assert set(health) == {"inputs", "inference", "control", "controller left_arm_controller"}
    assert all(level is Level.OK for level, _ in health.values()), health


def test_a_latched_estop_or_a_dead_thread_is_an_error_with_its_reason() -> None:
    estopped = dataclasses.replace(RUNNING, state=RuntimeState.ESTOPPED, estop_reason="e-stop requested on ~/estop")
    level, message = assess(HealthMonitor(), estopped)["control"]
    assert level is Level.ERROR and "e-stop latched: e-stop requested on ~/estop" in message
    dead = dataclasses.replace(estopped, estop_reason="inference thread failed: KeyError: 'x'; e-stop latched")
    health = assess(HealthMonitor(), dead)
    assert health["inference"][0] is Level.ERROR and "inference thread failed" in health["inference"][1]
    assert health["control"][0] is Level.ERROR


def test_counters_that_grew_since_the_last_report_warn_or_fail_once() -> None:
    monitor = HealthMonitor()
    assess(monitor, RUNNING)
    worse = dataclasses.replace(RUNNING, overruns=2, clamped={"position": 3, "velocity": 40}, inference_failures=1,
                                last_error="shorten the instruction", rejected={REJECT_JOINT_STATE: 1})
    health = assess(monitor, worse)
    assert health["inference"][0] is Level.ERROR and "shorten the instruction" in health["inference"][1]
    assert "2 inference overrun(s)" in health["inference"][1]
    # Velocity/acceleration shaping is everyday work; only targets outside the position limits warn.
    assert health["control"] == (Level.WARN, "3 command value(s) asked outside the joint limits (clamped)")
    assert health["inputs"] == (Level.WARN, "1 invalid input message(s) ignored (see the log)")
    # Nothing new since: back to OK, while the totals stay in the values.
    assert all(level is Level.OK for level, _ in assess(monitor, worse).values())


def test_stale_inputs_a_missing_instruction_and_an_unheard_controller_warn() -> None:
    stale = dataclasses.replace(RUNNING, state=RuntimeState.HOLDING, stale_inputs=("camera:head",))
    unheard = (dataclasses.replace(LISTENED[0], subscribers=0),)
    health = assess(HealthMonitor(), stale, instruction="", controllers=unheard)
    assert health["inputs"] == (Level.WARN, "stale: camera:head (holding until fresh)")
    assert health["inference"][0] is Level.WARN and "no instruction yet" in health["inference"][1]
    level, message = health["controller left_arm_controller"]
    assert level is Level.WARN and "no subscriber on /cell/left_arm_controller/joint_trajectory" in message
    # An inactive node expects neither inputs nor listeners.
    assert all(level is Level.OK for level, _ in assess(HealthMonitor(), stale, active=False,
                                                          controllers=unheard).values())


def test_diagnostics_message_has_one_named_status_per_component() -> None:
    components = HealthMonitor().assess(dataclasses.replace(RUNNING, estop_reason="stop"), True, "wave", 0, LISTENED)
    msg = diagnostics_msg(1_500_000_000, "/cell/policy_node", components)
    assert [s.name for s in msg.status] == ["/cell/policy_node: inputs", "/cell/policy_node: inference",
                                            "/cell/policy_node: control",
                                            "/cell/policy_node: controller left_arm_controller"]
    assert msg.status[2].level == DiagnosticStatus.ERROR and msg.status[0].level == DiagnosticStatus.OK
    assert all(s.hardware_id == "/cell/policy_node" for s in msg.status)
    assert (msg.header.stamp.sec, msg.header.stamp.nanosec) == (1, 500_000_000)
