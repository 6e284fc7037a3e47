"""How a node process ends (ros/node_main.spin_node), in a process of its own over the real middleware.

Ctrl-C can land while rclpy's bindings convert a message; the KeyboardInterrupt then surfaces as another
error (pybind11 reports a failed conversion as a RuntimeError). After a Ctrl-C that is an ordinary shutdown
(exit 0); the same error without one is a fault and must not be hidden."""

from __future__ import annotations

import subprocess
import sys

import pytest

from .conftest import ROOT

NODE = """
import os, signal, sys
from rclpy.node import Node
from internvla_ros.ros.node_main import spin_node

class Failing(Node):
    def __init__(self):
        super().__init__("failing")
        self.create_timer(0.05, self.tick)

    def tick(self):
        try:
            if {interrupt}:
                os.kill(os.getpid(), signal.SIGINT)
                while True:  # until Python runs the signal's handler, between two instructions
                    pass
        except KeyboardInterrupt:
            pass
        raise RuntimeError("Unable to convert call argument '0' to Python object")

sys.exit(spin_node(Failing))
"""


@pytest.mark.parametrize(("interrupt", "code"), [(True, 0), (False, 1)])
def test_an_error_raised_by_ctrl_c_inside_a_callback_is_a_shutdown_and_one_without_it_a_fault(
        interrupt: bool, code: int) -> None:
    result = subprocess.run([sys.executable, "-c", NODE.format(interrupt=interrupt)], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == code, result.stderr[-2000:]
    assert ("Unable to convert" in result.stderr) is not interrupt
