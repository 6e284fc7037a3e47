"""The operator's requests and parameter changes, decided without ROS (the node answers with these)."""

from __future__ import annotations

from pathlib import Path

import pytest

from internvla_ros.ros.operator import operator_request, parameter_refusal
from test.runtime.harness import make_runtime


def test_operator_requests_reach_the_runtime_and_say_its_state(tmp_path: Path) -> None:
    runtime = make_runtime(tmp_path)
    assert operator_request(runtime, (), "estop") == (True, "estop: state idle")  # latched; not started yet
    assert runtime.status(0).estop_reason == "e-stop requested on ~/estop"
    ok, message = operator_request(runtime, ("control",), "reset")
    assert not ok and message.startswith("reset refused: the control thread failed")
    assert "e-stop stays latched" in message and runtime.status(0).estop_reason
    ok, _ = operator_request(runtime, (), "reset")
    assert ok and not runtime.status(0).estop_reason
    assert operator_request(None, (), "pause") == (False, "not configured")
    with pytest.raises(ValueError, match="unknown operator action 'halt'"):
        operator_request(runtime, (), "halt")


@pytest.mark.parametrize(("name", "value", "configuring", "configured", "refused"), [
    ("model_path", "/m", False, False, None),
    ("model_path", "/m", True, False, "'model_path' cannot change while the node configures"),
    ("model_path", "/m", False, True, "'model_path' cannot change while configured: deactivate and clean up"),
    ("instruction", "sort the parcels", True, True, None),
    ("safety.dry_run", False, False, True, None),
    ("instruction", "   ", False, True, "an empty instruction is not a task"),
])
def test_only_live_parameters_change_while_configured_and_never_to_an_empty_task(
        name: str, value: object, configuring: bool, configured: bool, refused: str | None) -> None:
    reason = parameter_refusal(name, value, configuring=configuring, configured=configured)
    assert (reason is None) if refused is None else (reason is not None and reason.startswith(refused)), reason
