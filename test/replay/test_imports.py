"""The replay runs without ROS: nothing under internvla_ros.replay or the CLI verb may import rclpy."""

from __future__ import annotations

import subprocess
import sys

from internvla_ros.bags.types import ACTION_CHUNK, POLICY_STATUS, msg_dir
from internvla_ros.replay.messages import make_typestore


def test_no_rclpy() -> None:
    code = ("import sys, internvla_ros.replay.pipeline, internvla_ros.replay.report, internvla_ros.cli.replay; "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('rclpy', 'rosidl_runtime_py')); "
            "sys.exit(f'imported {bad}' if bad else 0)")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_package_messages_come_from_the_msg_files() -> None:
    assert (msg_dir() / "ActionChunk.msg").is_file()
    store = make_typestore()
    assert {ACTION_CHUNK, POLICY_STATUS} <= set(store.types)
