"""The runtime stays ROS- and torch-free: the node, the replay and the tests import it anywhere."""

from __future__ import annotations

import subprocess
import sys

RUNTIME_MODULES = [
    "internvla_ros.runtime",
    "internvla_ros.runtime.commands",
    "internvla_ros.runtime.config",
    "internvla_ros.runtime.mapping",
    "internvla_ros.runtime.observation",
    "internvla_ros.runtime.params",
    "internvla_ros.runtime.plan",
    "internvla_ros.runtime.policy",
    "internvla_ros.runtime.safety",
    "internvla_ros.runtime.scheduler",
    "internvla_ros.runtime.status",
    "internvla_ros.runtime.chunks",
    "internvla_ros.runtime.command_output",
    "internvla_ros.runtime.execution",
    "internvla_ros.runtime.runtime_status",
    "internvla_ros.runtime.supervisor",
]


def test_runtime_imports_neither_rclpy_nor_torch() -> None:
    code = (
        "import importlib, sys\n"
        f"for name in {RUNTIME_MODULES!r}:\n"
        "    importlib.import_module(name)\n"
        "print(sorted(m for m in ('rclpy', 'torch') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
