"""The package's DDS transport: raw camera frames reach a best-effort reader on a busy machine."""

from __future__ import annotations

import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import Image

from internvla_ros.ros import transport
from internvla_ros.ros.transport import PROFILE_VARIABLES, use_frame_transport

from .conftest import spin_until

FRAME_SHAPE = (480, 640, 3)  # the sim's head camera: 900 KiB, larger than Fast DDS's default segment
RATE_HZ = 30.0
WINDOW_S = 4.0
PUBLISHER = f"""
import time, numpy as np, rclpy
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image
rclpy.init()
node = rclpy.create_node("frame_source")
pub = node.create_publisher(Image, "frames", QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE))
data = np.random.default_rng(0).integers(0, 256, {FRAME_SHAPE}, np.uint8).tobytes()
sent = [0]
def send():
    msg = Image(height={FRAME_SHAPE[0]}, width={FRAME_SHAPE[1]}, encoding="rgb8", step={FRAME_SHAPE[1] * 3}, data=data)
    msg.header.frame_id = str(sent[0])  # the frame's number: the reader counts the ones it missed
    sent[0] += 1
    pub.publish(msg)
node.create_timer({1.0 / RATE_HZ}, send)
rclpy.spin(node)
"""
BUSY_LOOP = "while True: pass"


def test_the_profile_is_set_for_fast_dds_only_and_never_over_the_users() -> None:
    environ: dict[str, str] = {}
    profile = use_frame_transport(environ)
    assert profile is not None and profile.is_file()
    assert all(environ[variable] == str(profile) for variable in PROFILE_VARIABLES)
    own = {"FASTRTPS_DEFAULT_PROFILES_FILE": "/lab/dds.xml"}
    assert use_frame_transport(own) is None and own == {"FASTRTPS_DEFAULT_PROFILES_FILE": "/lab/dds.xml"}
    cyclone = {"RMW_IMPLEMENTATION": "rmw_cyclonedds_cpp"}
    assert use_frame_transport(cyclone) is None and cyclone == {"RMW_IMPLEMENTATION": "rmw_cyclonedds_cpp"}
    assert use_frame_transport({"RMW_IMPLEMENTATION": "rmw_fastrtps_cpp"}) == profile


def test_without_the_profile_file_fast_dds_keeps_its_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(transport, "config_path", lambda name: tmp_path / name)
    environ: dict[str, str] = {}
    assert use_frame_transport(environ) is None and environ == {}


def test_the_profiles_shared_memory_segment_holds_a_full_hd_frame() -> None:
    profile = use_frame_transport({})
    assert profile is not None
    namespace = {"f": "http://www.eprosima.com/XMLSchemas/fastRTPS_Profiles"}
    root = ET.parse(profile).getroot()
    descriptors = root.iterfind(".//f:transport_descriptor", namespace)
    segments = [int(d.findtext("f:segment_size", "0", namespace)) for d in descriptors
                if d.findtext("f:type", "", namespace) == "SHM"]
    assert segments and min(segments) >= 2 * 1920 * 1080 * 3
    participant = root.find(".//f:participant", namespace)
    assert participant is not None and participant.get("is_default_profile") == "true"


def test_raw_frames_reach_a_best_effort_reader_with_both_cores_busy(ros_context) -> None:
    """The publisher and this reader both run with the profile (test/conftest.py sets it for the run). Judged
    by the frames lost (numbered by the publisher), not by their timing: the load delays both processes."""
    node = rclpy.create_node("frame_reader", context=ros_context)
    executor = SingleThreadedExecutor(context=ros_context)
    executor.add_node(node)
    numbers: list[int] = []
    node.create_subscription(Image, "frames", lambda m: numbers.append(int(m.header.frame_id)), qos_profile_sensor_data)
    processes = [subprocess.Popen([sys.executable, "-c", PUBLISHER])]
    try:
        assert spin_until(executor, lambda: len(numbers) >= 3, 30.0), "no frame arrived"
        processes += [subprocess.Popen([sys.executable, "-c", BUSY_LOOP]) for _ in range(2)]
        time.sleep(0.5)  # the load is on
        first = len(numbers)
        spin_until(executor, lambda: False, WINDOW_S)
        window = numbers[first:]
    finally:
        for process in processes:
            process.kill()
            process.wait()
        executor.shutdown()
        node.destroy_node()
    sent = window[-1] - window[0] + 1 if window else 0
    assert sent >= WINDOW_S * RATE_HZ / 3, f"the publisher sent only {sent} frames in {WINDOW_S} s"
    assert len(set(window)) >= 0.9 * sent, f"{len(set(window))} of {sent} frames arrived"
