"""What the policy node does with an operator's request: the ~/pause, ~/resume, ~/estop and ~/reset services,
and parameter changes. ROS-free decisions, so the rules are read (and tested) in one place."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from internvla_ros.runtime.scheduler import PolicyRuntime

OPERATOR_ACTIONS = ("pause", "resume", "estop", "reset")
# Safe to change while configured or active; every other change needs cleanup first.
LIVE_PARAMETERS = frozenset({"instruction", "safety.dry_run"})


def operator_request(runtime: PolicyRuntime | None, failed_threads: Sequence[str], action: str) -> tuple[bool, str]:
    """Carries out ``action`` on the runtime; (success, the message for the caller and the log).

    A reset is refused while a control or inference thread has failed: nothing would run the robot, so the
    e-stop stays latched until the node is configured again.
    """
    if runtime is None:
        return False, "not configured"
    if action == "pause":
        runtime.pause()
    elif action == "resume":
        runtime.resume()
    elif action == "estop":
        runtime.estop("e-stop requested on ~/estop")
    elif action == "reset":
        if failed_threads:
            return False, (f"reset refused: the {' and '.join(failed_threads)} thread failed (see last_error on "
                           "~/status), so nothing would run the robot; the e-stop stays latched: "
                           "deactivate, cleanup and configure the node again")
        runtime.reset_estop()
    else:
        raise ValueError(f"unknown operator action {action!r}; one of {OPERATOR_ACTIONS}")
    return True, f"{action}: state {runtime.state.value}"


def parameter_refusal(name: str, value: Any, *, configuring: bool, configured: bool) -> str | None:
    """Why a change of parameter ``name`` to ``value`` is refused now (None: it may change)."""
    if configuring and name not in LIVE_PARAMETERS:
        return f"'{name}' cannot change while the node configures: wait for it, clean up, then set it"
    if configured and name not in LIVE_PARAMETERS:
        return (f"'{name}' cannot change while configured: deactivate and clean up the node, set it, then "
                f"configure again (live: {sorted(LIVE_PARAMETERS)})")
    if name == "instruction" and not str(value).strip():
        return "an empty instruction is not a task; keep the current one or send a new one"
    return None
